"""Training inside the webui: WebuiRuntime, the runtime a TrainJob (ui/jobs.py) runs through in the webui.

The thread takes `modules.call_queue.queue_lock` (a FIFOLock; every txt2img/img2img/train call holds it,
modules/call_queue.py:8 and wrap_gradio_gpu_call), so training never runs while an image is being generated and vice
versa. While it runs, `shared.state` shows the job (begin/end, job_count/job_no, textinfo) and the webui's own
Interrupt button (state.interrupted) stops it like POST train/interrupt does: the trainer finishes its step, saves,
and returns.
"""
from __future__ import annotations

import contextlib

from ..errors import HypernetError
from . import messages


class WebuiRuntime:
    """How a job runs inside the webui: its queue lock, its job state, its loaded model."""

    def __init__(self):
        self._webui_state = None

    @contextlib.contextmanager
    def session(self, job_id: str):
        from modules import shared
        from modules.call_queue import queue_lock
        with queue_lock:
            self._webui_state = getattr(shared, "state", None)
            if self._webui_state is not None:
                self._webui_state.begin(job=job_id)
            try:
                yield
            finally:
                if self._webui_state is not None:
                    self._webui_state.end()
                self._webui_state = None

    def host(self):
        from modules import shared
        from ..hosts.webui import make_host
        from .state import clear_builtin, get_state
        sd_model = forge_model() or shared.sd_model
        if sd_model is None:
            raise HypernetError("no model is loaded; choose a checkpoint at the top of the page first")
        get_state().detach()  # generation hooks off; the trainer hooks its own
        clear_builtin()       # and the built-in path adds nothing either
        return make_host(sd_model)

    def planned(self, steps: int) -> None:
        if self._webui_state is not None:
            self._webui_state.job_count = max(steps, 0)

    def progress(self, name: str, report, done: int) -> bool:
        """Show progress in the webui; True when its Interrupt button was pressed."""
        ws = self._webui_state
        if ws is None:
            return False
        ws.job_no = done
        ws.textinfo = f"hypernet {name}: step {report.step}/{report.total}, loss {report.loss:.5f}"
        return bool(getattr(ws, "interrupted", False))

    def cells(self, done: int, total: int) -> bool:
        """A comparison's images done of total in the webui's progress; True when its Interrupt or Skip (or
        /sdapi/v1/interrupt) was pressed, as the X/Y/Z plot stops between its cells."""
        ws = self._webui_state
        if ws is None:
            return False
        ws.job_count, ws.job_no = total, done
        ws.textinfo = f"hypernet compare: image {done}/{total}"
        return any(bool(getattr(ws, flag, False)) for flag in ("interrupted", "skipped", "stopping_generation"))

    def failed(self, message: str) -> None:
        """Report the exception being handled the way the webui prints its own."""
        messages.report_error(message)

    def finished(self) -> None:
        from .state import get_state
        try:
            get_state().refresh()
        except Exception:
            pass


def forge_model():
    """Forge's model, loaded the way its txt2img loads it (Forge loads nothing until the first generation); None
    outside Forge."""
    from modules import sd_models
    reload = getattr(sd_models, "forge_model_reload", None)
    if reload is None:
        return None
    try:
        model, _ = reload()
    except Exception as exc:  # Forge raises ValueError without a checkpoint, KeyError before its UI set one
        raise HypernetError(f"Forge could not load the selected checkpoint ({type(exc).__name__}: {exc}); choose a "
                            "checkpoint at the top of the page, or generate one image, then train") from None
    return model
