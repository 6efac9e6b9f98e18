"""Create a file and start a training job from loosely typed fields: what the API, the tabs and the standalone UI do.

Fields come as strings, numbers or lists (from JSON or gradio components); the option dataclasses check them and
name the field in every error. Failures raise ActionError with an HTTP-like status (422 bad value, 409 conflict,
400 other) so the API answers like FastAPI and the tabs show one line.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from ..config import CreateOptions, TrainOptions
from ..errors import ConfigError, HypernetError, NotFoundError
from .settings import SAVE_FORMATS, value

CREATE_FIELDS = tuple(f.name for f in dataclasses.fields(CreateOptions))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainOptions))


class ActionError(HypernetError):
    """A request that cannot be done; `field` names the input at fault (None: the request as a whole)."""

    def __init__(self, status: int, field: Optional[str], message: str):
        self.status, self.field = status, field
        super().__init__(message)


def _config_error(exc: ConfigError) -> ActionError:
    return ActionError(422, exc.field, str(exc))


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


def save_format(requested: Optional[str]) -> str:
    """'.pt' or '.safetensors': the requested one, else the setting."""
    fmt = requested or value("save_format")
    fmt = fmt if fmt.startswith(".") else "." + fmt
    if fmt not in SAVE_FORMATS:
        raise ActionError(422, "format", f"format: {fmt!r} is not one of {', '.join(SAVE_FORMATS)}")
    return fmt


def target_path(state, name: str, fmt: str, overwrite: bool) -> str:
    """The path a new file called `name` goes to; 409 if it exists (without overwrite) or the same name exists in
    the other format (which would shadow or be shadowed by it)."""
    folder = state.folder()
    path = os.path.join(folder, name + fmt)
    if os.path.exists(path) and not overwrite:
        raise ActionError(409, "overwrite", f"{path} already exists; choose another name or allow overwriting "
                                            "(overwrite)")
    for suffix in SAVE_FORMATS:
        other = os.path.join(folder, name + suffix)
        if other != path and os.path.exists(other):
            raise ActionError(409, "format", f"{other} already exists and would be confused with a new {fmt} file "
                                             f"of the same name; use format {suffix!r} or another name")
    return path


def human_size(n: int) -> str:
    """Bytes as KiB or MiB with one decimal."""
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 1024:.1f} KiB"


def create_file(state, fields: dict) -> dict:
    """Create and save a hypernetwork from CreateOptions fields plus `overwrite` and `format`; what was made."""
    from .. import from_options
    fields = dict(fields)
    overwrite = bool(fields.pop("overwrite", False))
    fmt = save_format(fields.pop("format", None))
    try:
        config = CreateOptions(**fields)
    except ConfigError as exc:
        raise _config_error(exc) from None
    path = target_path(state, config.name, fmt, overwrite)
    hn = from_options(config)
    try:
        written = hn.save(path, overwrite=overwrite)
    except HypernetError as exc:
        raise ActionError(400, None, str(exc)) from None
    state.refresh()
    size, params = os.path.getsize(written), hn.parameter_count()
    reply = {"info": f"Created {written} ({human_size(size)}, {params:,} parameters, widths "
                     f"{', '.join(map(str, hn.dims))})",
             "name": config.name, "path": written, "size_bytes": size, "parameters": params, "dims": hn.dims}
    others = [e.relpath for e in state.library.entries if e.name == config.name and e.path != os.path.abspath(written)]
    if others:
        reply["note"] = (f"other files are also called {config.name!r} ({', '.join(others)}); tags must write "
                         "the relative path to tell them apart")
    return reply


def running_job(state):
    """The job that has not finished yet, or None."""
    return next((job for job in list(state.jobs.values()) if not job.finished), None)


def _refuse_if_running(state) -> None:
    job = running_job(state)
    if job is not None:
        raise ActionError(409, None, f"training job {job.job_id} is still running; interrupt it or wait")


def start_training(state, fields: dict, runtime=None):
    """Start a TrainJob from TrainOptions fields plus `hypernetwork` (a file to continue) or CreateOptions fields
    with `name` (a new file), `overwrite` and `format`. None values mean the default. Returns the started job."""
    from .training import TrainJob
    fields = {k: v for k, v in fields.items() if v is not None}
    source = fields.pop("hypernetwork", None)
    overwrite = bool(fields.pop("overwrite", False))
    fmt = save_format(fields.pop("format", None))
    create_fields = {k: fields.pop(k) for k in CREATE_FIELDS if k in fields}
    _refuse_if_running(state)
    if source and create_fields:
        raise ActionError(422, "hypernetwork", "hypernetwork: give either an existing hypernetwork to continue or "
                                               f"the fields of a new one ({', '.join(create_fields)}), not both")
    if not source and not str(create_fields.get("name") or "").strip():
        raise ActionError(422, "name", "name: name the new hypernetwork, or choose an existing one to continue "
                                       "training")
    data = fields.get("data")
    if not data:
        raise ActionError(422, "data", "data: the folder of training images is required")
    if not os.path.isdir(str(data)):
        raise ActionError(422, "data", f"data: {data} is not a folder")
    if not fields.get("log_dir"):
        fields["log_dir"] = default_log_dir()
    if source:
        try:
            entry = state.resolve(str(source))
        except NotFoundError as exc:
            raise ActionError(422, "hypernetwork", f"hypernetwork: {exc}") from None
        name, hypernetwork = entry.name, entry.path
        if not fields.get("output"):
            fields["output"] = entry.path
    else:
        try:  # validated now (dims are the model's when not given, known only once the job runs)
            CreateOptions(**{"dims": [768], **create_fields})
        except ConfigError as exc:
            raise _config_error(exc) from None
        name, hypernetwork = str(create_fields["name"]).strip(), None
        if not fields.get("output"):
            fields["output"] = target_path(state, name, fmt, overwrite)
    try:
        options = TrainOptions(**fields)
    except ConfigError as exc:
        raise _config_error(exc) from None
    job = TrainJob(options, name=name, hypernetwork=hypernetwork, create_fields=create_fields or None,
                   runtime=runtime)
    with state.lock:  # two requests at once: only one may start
        _refuse_if_running(state)
        state.jobs[job.job_id] = job
        job.start()
    return job


def latest_job(state):
    """The most recently created job, or None."""
    return max(state.jobs.values(), key=lambda j: j.status.created, default=None)
