"""Create a file and start a training job from loosely typed fields: what the API, the tabs and the standalone UI do.

Fields come as strings, numbers or lists (from JSON or gradio components); the option dataclasses check them and
name the field in every error. Failures raise ActionError with an HTTP-like status (422 bad value, 403 a path outside
the folders a UI may write to, 409 conflict, 400 other) so the API answers like FastAPI and the tabs show one line.

Where training writes is confined: `output` must lie in the hypernetwork folder, `log_dir` and `latent_cache_dir` in
the log folder (relative paths start there; `..` and symlinks are resolved before the check), unless the setting
"Allow the UI/API to write outside the hypernetwork and log folders" (or the standalone UI's --allow-any-path) is on.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional

from ..bounds import check_path
from ..config import CreateOptions, TrainOptions
from ..errors import ConfigError, HypernetError, NotFoundError
from ..fileformat.compat import summary
from ..fileformat.files import readers_of
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


def default_log_dir(state) -> str:
    """The "log folder" setting, else <state.data_folder()>/textual_inversion (in the webui its data folder, the
    built-in Train tab's default)."""
    return value("log_dir") or os.path.join(state.data_folder(), "textual_inversion")


def log_folder(state) -> str:
    """The folder training runs must stay in: the state's own (standalone UI: --log-dir), else default_log_dir()."""
    return state.log_folder or default_log_dir(state)


def any_path_allowed(state) -> bool:
    """Whether a UI/API request may write outside the hypernetwork and log folders (setting or --allow-any-path)."""
    return bool(state.allow_any_path) or bool(value("allow_any_path"))


def _within(folder: str, path: str) -> bool:
    folder, path = os.path.normcase(folder), os.path.normcase(path)
    try:
        return os.path.commonpath([folder, path]) == folder
    except ValueError:  # another drive
        return False


def path_field(value, field: str) -> str:
    """A path from a request as text; 422 naming `field` when it holds a NUL or is too long for any file system."""
    try:
        return check_path(value, field)
    except ConfigError as exc:
        raise _config_error(exc) from None


def confined(folder: str, path: str, field: str, what: str, allow: bool) -> str:
    """`path` resolved (realpath; a relative one starts in `folder`); 422 naming `field` for a path no file system
    holds, 403 when it leaves `folder` and writing elsewhere is not allowed."""
    base = os.path.realpath(folder)
    resolved = os.path.realpath(os.path.join(base, path_field(path, field)))
    if allow or _within(base, resolved):
        return resolved
    raise ActionError(403, field, f"{field}: {path} is outside the {what} {base}; give a path inside it (a relative "
                                  "path starts there), or turn on the setting \"Allow the UI/API to write outside the "
                                  "hypernetwork and log folders\" (standalone UI: start it with --allow-any-path)")


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
    from ..network import from_options
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
    reply: Dict[str, Any] = {"info": f"Created {written} ({human_size(size)}, {params:,} parameters, widths "
                     f"{', '.join(map(str, hn.dims))})",
             "name": config.name, "path": written, "size_bytes": size, "parameters": params, "dims": hn.dims}
    reply["readers"] = readers_of(hn, fmt.lstrip("."))
    reply["same_math"] = summary(reply["readers"])
    others = [e.relpath for e in state.library.entries if e.name == config.name and e.path != os.path.abspath(written)]
    notes = [f"other files are also called {config.name!r} ({', '.join(others)}); tags must write the relative "
             "path to tell them apart"] if others else []
    reply["note"] = ". ".join(notes + [reply["same_math"][0].upper() + reply["same_math"][1:]])
    return reply


def running_job(state):
    """The job that has not finished yet, or None."""
    return next((job for job in list(state.jobs.values()) if not job.finished), None)


def _refuse_if_running(state) -> None:
    job = running_job(state)
    if job is not None:
        raise ActionError(409, None, f"training job {job.job_id} is still running; interrupt it or wait")


def _check_request(source, create_fields: dict, fields: dict) -> None:
    """422 unless the request names either a file to continue or a new one, and an existing data folder."""
    if source and create_fields:
        raise ActionError(422, "hypernetwork", "hypernetwork: give either an existing hypernetwork to continue or "
                                               f"the fields of a new one ({', '.join(create_fields)}), not both")
    if not source and not str(create_fields.get("name") or "").strip():
        raise ActionError(422, "name", "name: name the new hypernetwork, or choose an existing one to continue "
                                       "training")
    data = fields.get("data")
    if not data:
        raise ActionError(422, "data", "data: the folder of training images is required")
    if not os.path.isdir(path_field(data, "data")):
        raise ActionError(422, "data", f"data: {data} is not a folder")


def _train_options(fields: dict) -> TrainOptions:
    try:
        return TrainOptions(**fields)
    except ConfigError as exc:
        raise _config_error(exc) from None


def _source(state, source: str):
    """(name, path) of the file to continue; 422 if it is not in the folder."""
    try:
        entry = state.resolve(path_field(source, "hypernetwork"))
    except NotFoundError as exc:
        raise ActionError(422, "hypernetwork", f"hypernetwork: {exc}") from None
    return entry.name, entry.path


def _new_name(create_fields: dict) -> str:
    try:  # validated now (dims are the model's when not given, known only once the job runs)
        CreateOptions(**{"dims": [768], **create_fields})
    except ConfigError as exc:
        raise _config_error(exc) from None
    return str(create_fields["name"]).strip()


def _placed(state, options: TrainOptions, name: str, fmt: str, source: Optional[str]) -> TrainOptions:
    """The options with output, log_dir and latent_cache_dir resolved inside their folders (403 outside), and the
    output refused (409) if it would replace another file without overwrite; continuing writes into the source."""
    from ..train.run_folder import replaces_other_file
    allow, logs = any_path_allowed(state), log_folder(state)
    log_dir = confined(logs, options.log_dir, "log_dir", "log folder", allow)
    cache = options.latent_cache_dir and confined(logs, options.latent_cache_dir, "latent_cache_dir", "log folder",
                                                  allow)
    if options.output:
        output = confined(state.folder(), options.output, "output", "hypernetwork folder", allow)
        if not options.overwrite and replaces_other_file(output, source):
            raise ActionError(409, "overwrite", f"{output} already exists; choose another output or allow "
                                                "overwriting (overwrite)")
    else:
        output = source or target_path(state, name, fmt, options.overwrite)
    return options.replace(output=output, log_dir=log_dir, latent_cache_dir=cache)


def start_training(state, fields: dict, runtime):
    """Start a TrainJob in `runtime` from TrainOptions fields plus `hypernetwork` (a file to continue) or
    CreateOptions fields with `name` (a new file) and `format`. None values mean the default. Returns the job."""
    from .jobs import TrainJob
    fields = {k: v for k, v in fields.items() if v is not None}
    source = fields.pop("hypernetwork", None)
    fmt = save_format(fields.pop("format", None))
    create_fields = {k: fields.pop(k) for k in CREATE_FIELDS if k in fields}
    _refuse_if_running(state)
    _check_request(source, create_fields, fields)
    options = _train_options({**fields, "log_dir": fields.get("log_dir") or log_folder(state)})
    name, hypernetwork = _source(state, source) if source else (_new_name(create_fields), None)
    options = _placed(state, options, name, fmt, hypernetwork)
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


# ---------------------------------------------------------------------------------------------- saved copies
def run_folders(state, limit: int = 50) -> list:
    """Training run folders under the log folder (<log>/<date>/<name> with settings.json), newest first."""
    root = log_folder(state)
    if not os.path.isdir(root):
        return []
    runs = []
    for date in os.scandir(root):
        if not date.is_dir(follow_symlinks=False):
            continue
        for run in os.scandir(date.path):
            if run.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(run.path, "settings.json")):
                runs.append((os.path.getmtime(os.path.join(run.path, "settings.json")), run.path))
    return [path for _, path in sorted(runs, reverse=True)[:limit]]


def _readable(state, path, field: str) -> str:
    """`path` resolved inside the log folder (403 outside unless paths are unrestricted)."""
    if not path:
        raise ActionError(422, field, f"{field}: name a training run folder or a saved copy")
    return confined(log_folder(state), str(path), field, "log folder", any_path_allowed(state))


def compare_copies(state, fields: dict, runtime, progress=None, fresh: bool = True):
    """Render the saved copies of a run (`run`) with CompareOptions fields; the Comparison, its grid written into
    the run folder under a new name. `progress(done, total)` hears of every image; the host's Interrupt or Skip, or
    stop_compare, stops between images and the partial grid is kept. `fresh`: forget a stop asked before this call
    (a UI whose button queues the work clears it with begin_compare at the click instead, so a Stop pressed while
    the comparison waits in the queue still counts)."""
    from ..train import compare
    from ..config import CompareOptions
    fields = {k: v for k, v in fields.items() if v is not None}
    run = _readable(state, fields.pop("run", None), "run")
    _refuse_if_running(state)  # the model is the trainer's until it finishes
    try:
        options = CompareOptions(**fields)  # bad values are reported before the run is read
        copies = compare.saved_copies([run])
        options = compare.filled(options, compare.settings_of(copies))
    except ConfigError as exc:
        raise _config_error(exc) from None
    except HypernetError as exc:
        raise ActionError(422, "run", f"run: {exc}") from None
    if fresh:
        begin_compare(state)

    def cells(done: int, total: int) -> bool:
        if progress is not None:
            progress(done, total)
        return runtime.cells(done, total) or state.compare_stop.is_set()

    try:
        with runtime.session("hypernet-compare"):
            result = compare.render(runtime.host(), copies, options, cells)
    finally:
        state.compare_stop.clear()  # a stop belongs to one comparison
    folder = compare.run_dir_of(copies[0].path) or Path(copies[0].path).parent
    compare.write_grid(result, compare.free_path(folder, "compare"))
    return result


def begin_compare(state) -> None:
    """A comparison is asked for: stops asked before it no longer count."""
    state.compare_stop.clear()


def stop_compare(state) -> None:
    """Stop the running comparison after its current image."""
    state.compare_stop.set()


def keep_copy(state, fields: dict) -> dict:
    """Copy a saved copy (`file`) into the hypernetwork folder as `name` (default its own), `overwrite` to replace."""
    from ..train import compare
    source = _readable(state, fields.get("file"), "file")
    if not os.path.isfile(source):
        raise ActionError(422, "file", f"file: {source} is not a saved copy")
    stem, fmt = os.path.splitext(os.path.basename(source))
    try:
        name = CreateOptions._check_name(str(fields.get("name") or "").strip() or stem)
    except ConfigError as exc:
        raise _config_error(exc) from None
    overwrite = bool(fields.get("overwrite"))
    target_path(state, name, fmt, overwrite)
    try:
        written = compare.keep(source, state.folder(), name, overwrite=overwrite)
    except HypernetError as exc:
        raise ActionError(400, None, str(exc)) from None
    state.refresh()
    return {"path": written, "name": name, "info": f"Kept {os.path.basename(source)} as {written}; use it with "
                                                   f"<hypernet:{name}:1>"}


def saved_copy_names(state) -> dict:
    """Every saved copy of the log folder's runs by the name a tag may call it: <date>/<run>/<file stem>."""
    from ..train.compare import copy_files
    root = log_folder(state)
    names = {}
    for run in run_folders(state):
        prefix = os.path.relpath(run, root).replace(os.sep, "/")
        for path in copy_files(run):
            names[f"{prefix}/{path.stem}"] = str(path)
    return names
