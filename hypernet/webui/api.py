"""HTTP API under /hypernet/v1/, added to the webui's FastAPI app in on_app_started(demo, app).

    GET  /hypernet/v1/hypernetworks       every file with its card metadata (?hashes=true also hashes unhashed files)
    POST /hypernet/v1/refresh             rescan the folder
    POST /hypernet/v1/create              CreateOptions fields + overwrite (+ format ".pt"/".safetensors")
    POST /hypernet/v1/train               TrainOptions fields, plus `hypernetwork` (continue a file) or CreateOptions
                                          fields with `name` (a new file); returns a job id at once. `output` must
                                          lie in the hypernetwork folder, `log_dir` and `latent_cache_dir` in the log
                                          folder (relative paths start there), else 403, unless the setting "Allow
                                          the UI/API to write outside ..." is on; replacing another existing file
                                          needs `overwrite` (409), continuing a file into itself does not
    GET  /hypernet/v1/train/status        the job (?job_id=..., default the latest; ?history=true adds losses
                                          [[step, loss], ...], val_losses [[step, loss], ...], probes [[step,
                                          prompt kept, style], ...] and previews [path, ...]; val_loss/val_step
                                          is the latest validation loss, prompt_kept/style/probe_step the latest
                                          measure, suggested/suggested_step the suggested copy at the end)
    POST /hypernet/v1/train/interrupt     stop after the current step; the trainer saves and exits
    GET  /hypernet/v1/runs                training run folders in the log folder, newest first, and `suggested`:
                                          {run folder: its suggested copy, from the loss CSV's prompt_kept and
                                          style, or null}
    POST /hypernet/v1/compare             CompareOptions fields + `run` (a run folder in the log folder): renders
                                          its saved copies (rows) at each prompt and strength (columns) with one
                                          seed; returns the rows, the grid's path in the run folder and the PNG
                                          (base64); 409 while a training job runs
    POST /hypernet/v1/keep                `file` (a saved copy in the log folder), `name`, `overwrite`: copies it
                                          into the hypernetwork folder (never moves it); 409 if the name is taken

Request models are generated from the option dataclasses, so defaults live in one place. Fields are typed loosely
and checked by the dataclasses, which name the field in every error; errors are answered like FastAPI's own
validation errors (422, detail = [{"loc": ["body", field], "msg": ..., "type": ...}]). Unknown fields are refused.
The models work with pydantic 1 (the webui's fastapi 0.94) and 2 (Forge, newer forks).
"""
# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations, and the request
# models are local to add_routes.
import dataclasses
from typing import Any, Dict, Optional

from ..config import CompareOptions, CreateOptions, TrainOptions, field_default
from ..train import compare as compare_copies
from ..ui import actions
from ..ui.actions import CREATE_FIELDS, TRAIN_FIELDS
from ..ui.jobs import HISTORY
from .state import HypernetState, get_state
from .training import WebuiRuntime

PREFIX = "/hypernet/v1"
_EXTRA_FIELDS = ("hypernetwork", "format")
if set(CREATE_FIELDS) & set(TRAIN_FIELDS) or set(_EXTRA_FIELDS) & set(CREATE_FIELDS + TRAIN_FIELDS):
    raise RuntimeError("the train request mixes CreateOptions, TrainOptions and its own fields by name; "
                       "a shared name would be ambiguous")


# ---------------------------------------------------------------------------------------------- models
def _pydantic_v2() -> bool:
    import pydantic
    return str(getattr(pydantic, "VERSION", "1")).startswith("2")


def _base_model():
    from pydantic import BaseModel
    if _pydantic_v2():
        from pydantic import ConfigDict

        class Strict(BaseModel):
            model_config = ConfigDict(extra="forbid")
    else:
        class Strict(BaseModel):
            class Config:
                extra = "forbid"
    return Strict


def _dataclass_fields(cls, *, optional: bool = False) -> dict:
    """pydantic field definitions mirroring a dataclass: its defaults and help texts, any JSON value."""
    from pydantic import Field
    out: Dict[str, tuple] = {}
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        if optional:
            out[f.name] = (Optional[Any], Field(None, description=text))
        else:  # a factory's value too shows as a plain default in the API docs; unset fields are never passed on
            out[f.name] = (Any, Field(field_default(f), description=text))
    return out


def build_models():
    """(CreateRequest, TrainRequest) pydantic models."""
    from pydantic import Field, create_model
    base = _base_model()
    create = create_model(
        "HypernetCreateRequest", __base__=base, **_dataclass_fields(CreateOptions),
        overwrite=(bool, Field(False, description="replace a file of the same name")),
        format=(Optional[str], Field(None, description="'.pt' or '.safetensors' (default: the setting)")))
    train = create_model(
        "HypernetTrainRequest", __base__=base, **_dataclass_fields(TrainOptions),
        **_dataclass_fields(CreateOptions, optional=True),
        hypernetwork=(Optional[str], Field(None, description="continue training this file (a tag name)")),
        format=(Optional[str], Field(None, description="file type of a new hypernetwork (default: the setting)")))
    return create, train


def build_saved_copy_models():
    """(CompareRequest, KeepRequest) pydantic models."""
    from pydantic import Field, create_model
    base = _base_model()
    compare = create_model(
        "HypernetCompareRequest", __base__=base, **_dataclass_fields(CompareOptions),
        run=(str, Field(..., description="a run folder (<log folder>/<date>/<name>); relative paths start in the "
                                         "log folder")))
    keep = create_model(
        "HypernetKeepRequest", __base__=base,
        file=(str, Field(..., description="a saved copy in a run folder")),
        name=(Optional[str], Field(None, description="its name in the hypernetwork folder (default: its own)")),
        overwrite=(bool, Field(False, description="replace a file of that name")))
    return compare, keep


def _dump(model) -> dict:
    if hasattr(model, "model_dump"):
        return model.model_dump(exclude_unset=True)
    return model.dict(exclude_unset=True)


# ---------------------------------------------------------------------------------------------- errors
def _error(status: int, field: Optional[str], message: str):
    from fastapi import HTTPException
    detail = [{"loc": ["body", field] if field else ["body"], "msg": message, "type": "value_error"}]
    return HTTPException(status_code=status, detail=detail)


def _current_unet(state: HypernetState):
    model = state.loaded_model(load=False)
    return state.unet_of(model) if model is not None else None


# ---------------------------------------------------------------------------------------------- routes
def on_app_started(demo, app) -> None:
    """Add the /hypernet/v1/ routes to the webui's FastAPI app (demo is None with --nowebui).

    Like the webui's own /sdapi/v1/ routes (modules/api/api.py), they exist only with --api (or --nowebui) and
    ask for the --api-auth credentials when those are set: these routes write files and start training."""
    if app is None:
        return
    from modules import shared
    cmd_opts = shared.cmd_opts
    if not (getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False)):
        return
    add_routes(app, auth=getattr(cmd_opts, "api_auth", None))


def _basic_auth(spec: str):
    """A FastAPI dependency checking HTTP basic credentials against "user:password,user2:password2"."""
    from secrets import compare_digest

    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    credentials = dict(item.split(":", 1) for item in spec.split(",") if ":" in item)

    def check(given: HTTPBasicCredentials = Depends(HTTPBasic())):
        expected = credentials.get(given.username)
        if expected is not None and compare_digest(given.password, expected):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return Depends(check)


def add_routes(app, state: Optional[HypernetState] = None, auth: Optional[str] = None) -> None:
    from fastapi import Body, Query

    CreateRequest, TrainRequest = build_models()
    CompareRequest, KeepRequest = build_saved_copy_models()
    the_state = (lambda: state) if state is not None else get_state
    dependencies = [_basic_auth(auth)] if auth else []

    def list_hypernetworks(hashes: bool = Query(False, description="hash files whose hash is not cached")):
        from ..ui.cards import listing
        st = the_state()
        st.library.refresh()
        entries = st.entries()
        unet = _current_unet(st)
        return [listing(st, e, st.card_name(e, entries), unet, compute_hash=hashes) for e in entries]

    def refresh():
        st = the_state()
        st.refresh()
        names = st.card_names()
        return {"count": len(names), "hypernetworks": names}

    def create(body: CreateRequest = Body(...)):  # type: ignore[valid-type]
        try:
            return actions.create_file(the_state(), _dump(body))
        except actions.ActionError as exc:
            raise _error(exc.status, exc.field, str(exc)) from None

    def train(body: TrainRequest = Body(...)):  # type: ignore[valid-type]
        try:
            job = actions.start_training(the_state(), _dump(body), WebuiRuntime())
        except actions.ActionError as exc:
            raise _error(exc.status, exc.field, str(exc)) from None
        options = job.options
        return {"job_id": job.job_id, "name": job.status.name, "state": job.snapshot()["state"],
                "output": options.output, "log_dir": options.log_dir, "steps": options.steps}

    def _job(job_id: Optional[str]):
        st = the_state()
        if job_id:
            job = st.jobs.get(job_id)
            if job is None:
                from fastapi import HTTPException
                raise HTTPException(status_code=404, detail=f"no training job {job_id!r}")
            return job
        return actions.latest_job(st)

    def train_status(job_id: Optional[str] = Query(None),
                     history: bool = Query(False, description="include every (step, loss) and preview so far")):
        job = _job(job_id)
        if job is None:
            return {"state": "idle", "job_id": None}
        status = job.snapshot()
        if not history:
            for key in HISTORY:
                status.pop(key)
        return status

    def train_interrupt(job_id: Optional[str] = Query(None)):
        job = _job(job_id)
        if job is None or job.finished:
            raise _error(409, None, "no training job is running")
        job.interrupt()
        return {"job_id": job.job_id, "interrupting": True, "state": job.snapshot()["state"]}

    def runs():
        folders = actions.run_folders(the_state())
        return {"runs": folders, "suggested": {run: compare_copies.suggested_copy(run) for run in folders}}

    def compare(body: CompareRequest = Body(...)):  # type: ignore[valid-type]
        import base64

        from ..train.plot import png_bytes
        try:
            result = actions.compare_copies(the_state(), _dump(body), WebuiRuntime())
        except actions.ActionError as exc:
            raise _error(exc.status, exc.field, str(exc)) from None
        return {**result.to_dict(), "image": base64.b64encode(png_bytes(result.image)).decode()}

    def compare_interrupt():
        actions.stop_compare(the_state())
        return {"interrupting": True}

    def keep(body: KeepRequest = Body(...)):  # type: ignore[valid-type]
        try:
            return actions.keep_copy(the_state(), _dump(body))
        except actions.ActionError as exc:
            raise _error(exc.status, exc.field, str(exc)) from None

    routes = (("hypernetworks", list_hypernetworks, "GET"), ("refresh", refresh, "POST"), ("create", create, "POST"),
              ("train", train, "POST"), ("train/status", train_status, "GET"),
              ("train/interrupt", train_interrupt, "POST"), ("runs", runs, "GET"), ("compare", compare, "POST"),
              ("compare/interrupt", compare_interrupt, "POST"),
              ("keep", keep, "POST"))
    for path, endpoint, method in routes:
        app.add_api_route(f"{PREFIX}/{path}", endpoint, methods=[method], dependencies=dependencies)
