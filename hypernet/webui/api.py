"""HTTP API under /hypernet/v1/, added to the webui's FastAPI app in on_app_started(demo, app).

    GET  /hypernet/v1/hypernetworks       every file with its card metadata (?hashes=true also hashes unhashed files)
    POST /hypernet/v1/refresh             rescan the folder
    POST /hypernet/v1/create              CreateOptions fields + overwrite (+ format ".pt"/".safetensors")
    POST /hypernet/v1/train               TrainOptions fields, plus `hypernetwork` (continue a file) or CreateOptions
                                          fields with `name` (a new file); returns a job id at once
    GET  /hypernet/v1/train/status        the job (?job_id=..., default the latest)
    POST /hypernet/v1/train/interrupt     stop after the current step; the trainer saves and exits

Request models are generated from the option dataclasses, so defaults live in one place. Fields are typed loosely
and checked by the dataclasses, which name the field in every error; errors are answered like FastAPI's own
validation errors (422, detail = [{"loc": ["body", field], "msg": ..., "type": ...}]). Unknown fields are refused.
The models work with pydantic 1 (the webui's fastapi 0.94) and 2 (Forge, newer forks).
"""
# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations, and the request
# models are local to add_routes.
import dataclasses
import os
from typing import Any, Optional

from ..config import CreateOptions, TrainOptions
from ..errors import ConfigError, HypernetError, NotFoundError
from .settings import SAVE_FORMATS, value
from .state import HypernetState, get_state

PREFIX = "/hypernet/v1"
CREATE_FIELDS = tuple(f.name for f in dataclasses.fields(CreateOptions))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainOptions))
_EXTRA_FIELDS = ("hypernetwork", "overwrite", "format")
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
    out = {}
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        if optional:
            out[f.name] = (Optional[Any], Field(None, description=text))
        elif f.default is not dataclasses.MISSING:
            out[f.name] = (Any, Field(f.default, description=text))
        else:  # a plain default shows in the API docs; unset fields are never passed on (exclude_unset)
            out[f.name] = (Any, Field(f.default_factory(), description=text))
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
        overwrite=(bool, Field(False, description="a new hypernetwork may replace a file of the same name")),
        format=(Optional[str], Field(None, description="file type of a new hypernetwork (default: the setting)")))
    return create, train


def _dump(model) -> dict:
    if hasattr(model, "model_dump"):
        return model.model_dump(exclude_unset=True)
    return model.dict(exclude_unset=True)


# ---------------------------------------------------------------------------------------------- errors
def _error(status: int, field: Optional[str], message: str):
    from fastapi import HTTPException
    detail = [{"loc": ["body", field] if field else ["body"], "msg": message, "type": "value_error"}]
    return HTTPException(status_code=status, detail=detail)


def _config_error(exc: ConfigError):
    return _error(422, exc.field, str(exc))


# ---------------------------------------------------------------------------------------------- helpers
def default_log_dir() -> str:
    """The "log folder" setting, else <webui data folder>/textual_inversion (the built-in Train tab's default)."""
    configured = value("log_dir")
    if configured:
        return configured
    try:
        from modules import paths_internal
        base = paths_internal.data_path
    except (ImportError, AttributeError):
        base = os.getcwd()
    return os.path.join(base, "textual_inversion")


def _format(fields: dict) -> str:
    fmt = fields.pop("format", None) or value("save_format")
    fmt = fmt if fmt.startswith(".") else "." + fmt
    if fmt not in SAVE_FORMATS:
        raise _error(422, "format", f"format: {fmt!r} is not one of {', '.join(SAVE_FORMATS)}")
    return fmt


def _target(state: HypernetState, name: str, fmt: str, overwrite: bool) -> str:
    """The path a new file called `name` goes to; 409 if it exists (without overwrite) or the same name exists in
    the other format (which would shadow or be shadowed by it)."""
    folder = state.folder()
    path = os.path.join(folder, name + fmt)
    if os.path.exists(path) and not overwrite:
        raise _error(409, "overwrite", f"{path} already exists; send overwrite: true to replace it")
    for suffix in SAVE_FORMATS:
        other = os.path.join(folder, name + suffix)
        if other != path and os.path.exists(other):
            raise _error(409, "format", f"{other} already exists and would be confused with a new {fmt} file of "
                                        f"the same name; use format {suffix!r} or another name")
    return path


def _size(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 1024:.1f} KiB"


def _refuse_if_running(state: HypernetState) -> None:
    running = [job for job in list(state.jobs.values()) if not job.finished]
    if running:
        raise _error(409, None, f"training job {running[0].job_id} is still running; interrupt it or wait")


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
    the_state = (lambda: state) if state is not None else get_state
    dependencies = [_basic_auth(auth)] if auth else []

    def list_hypernetworks(hashes: bool = Query(False, description="hash files whose hash is not cached")):
        from .cards import listing
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
        from .. import from_options
        st = the_state()
        fields = _dump(body)
        overwrite = bool(fields.pop("overwrite", False))
        fmt = _format(fields)
        try:
            config = CreateOptions(**fields)
        except ConfigError as exc:
            raise _config_error(exc) from None
        path = _target(st, config.name, fmt, overwrite)
        hn = from_options(config)
        try:
            written = hn.save(path, overwrite=overwrite)
        except HypernetError as exc:
            raise _error(400, None, str(exc)) from None
        st.refresh()
        size, params = os.path.getsize(written), hn.parameter_count()
        reply = {"info": f"Created {written} ({_size(size)}, {params:,} parameters)", "name": config.name,
                 "path": written, "size_bytes": size, "parameters": params, "dims": hn.dims}
        others = [e.relpath for e in st.library.entries if e.name == config.name and e.path != os.path.abspath(written)]
        if others:
            reply["note"] = (f"other files are also called {config.name!r} ({', '.join(others)}); tags must write "
                             "the relative path to tell them apart")
        return reply

    def train(body: TrainRequest = Body(...)):  # type: ignore[valid-type]
        from .training import TrainJob
        st = the_state()
        fields = {k: v for k, v in _dump(body).items() if v is not None}  # null = the default
        source = fields.pop("hypernetwork", None)
        overwrite = bool(fields.pop("overwrite", False))
        fmt = _format(fields)
        create_fields = {k: fields.pop(k) for k in CREATE_FIELDS if k in fields}
        _refuse_if_running(st)
        if source and create_fields:
            raise _error(422, "hypernetwork", "hypernetwork: give either an existing hypernetwork to continue or "
                                              f"the fields of a new one ({', '.join(create_fields)}), not both")
        if not source and not create_fields.get("name"):
            raise _error(422, "name", "name: name the new hypernetwork, or give `hypernetwork` to continue "
                                      "training an existing one")
        data = fields.get("data")
        if not data:
            raise _error(422, "data", "data: the folder of training images is required")
        if not os.path.isdir(str(data)):
            raise _error(422, "data", f"data: {data} is not a folder")
        fields.setdefault("log_dir", default_log_dir())
        if source:
            try:
                entry = st.resolve(str(source))
            except NotFoundError as exc:
                raise _error(422, "hypernetwork", f"hypernetwork: {exc}") from None
            name, hypernetwork = entry.name, entry.path
            fields.setdefault("output", entry.path)
        else:
            try:  # validated now (dims are the model's when not given, known only once the job runs)
                CreateOptions(**{"dims": [768], **create_fields})
            except ConfigError as exc:
                raise _config_error(exc) from None
            name, hypernetwork = str(create_fields["name"]).strip(), None
            if not fields.get("output"):
                fields["output"] = _target(st, name, fmt, overwrite)
        try:
            options = TrainOptions(**fields)
        except ConfigError as exc:
            raise _config_error(exc) from None
        job = TrainJob(options, name=name, hypernetwork=hypernetwork, create_fields=create_fields or None)
        with st.lock:  # two requests at once: only one may start
            _refuse_if_running(st)
            st.jobs[job.job_id] = job
            job.start()
        return {"job_id": job.job_id, "name": name, "state": job.snapshot()["state"], "output": options.output,
                "log_dir": options.log_dir, "steps": options.steps}

    def _job(job_id: Optional[str]):
        st = the_state()
        if job_id:
            job = st.jobs.get(job_id)
            if job is None:
                from fastapi import HTTPException
                raise HTTPException(status_code=404, detail=f"no training job {job_id!r}")
            return job
        return max(st.jobs.values(), key=lambda j: j.status.created, default=None)

    def train_status(job_id: Optional[str] = Query(None)):
        job = _job(job_id)
        return {"state": "idle", "job_id": None} if job is None else job.snapshot()

    def train_interrupt(job_id: Optional[str] = Query(None)):
        job = _job(job_id)
        if job is None or job.finished:
            raise _error(409, None, "no training job is running")
        job.interrupt()
        return {"job_id": job.job_id, "interrupting": True, "state": job.snapshot()["state"]}

    routes = (("hypernetworks", list_hypernetworks, "GET"), ("refresh", refresh, "POST"), ("create", create, "POST"),
              ("train", train, "POST"), ("train/status", train_status, "GET"),
              ("train/interrupt", train_interrupt, "POST"))
    for path, endpoint, method in routes:
        app.add_api_route(f"{PREFIX}/{path}", endpoint, methods=[method], dependencies=dependencies)
