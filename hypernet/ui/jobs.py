"""Training jobs: one TrainJob in a background thread, run through a runtime that knows the host.

A runtime gives the job `session(job_id)` (a context manager the whole run holds: the host's lock), `host()` (what
the trainer trains on), `planned(steps)`, `progress(name, report, done)` (True asks the job to stop), `failed(message)`
(report the exception being handled) and `finished()`. LocalRuntime serves the standalone UI: a plain lock shared with
its Generate tab and a diffusers pipeline; the webui's runtime (webui/training.py) takes its queue lock and shows the
job in its progress bar. Nothing here imports the webui's `modules`.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..config import CreateOptions, TrainOptions

log = logging.getLogger("hypernet")
_counter = itertools.count(1)
HISTORY = ("losses", "val_losses", "probes", "previews")  # the status lists that grow with every step or measure


@dataclass
class JobStatus:
    job_id: str
    name: str
    state: str = "queued"          # queued, running, completed, interrupted, already-done, error
    step: int = 0
    start_step: int = 0
    total: int = 0
    loss: Optional[float] = None
    learn_rate: Optional[float] = None
    it_per_s: Optional[float] = None
    last_saved: Optional[str] = None
    last_preview: Optional[str] = None
    output: Optional[str] = None
    run_dir: Optional[str] = None
    error: Optional[str] = None
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None
    losses: list = field(default_factory=list)     # (step, loss) after every step, for a live plot
    val_loss: Optional[float] = None               # the latest validation loss
    val_step: Optional[int] = None                 # the step it was measured at
    val_losses: list = field(default_factory=list)  # (step, validation loss) at each evaluation
    prompt_kept: Optional[float] = None            # the latest prompt kept (train.Trainer._probe)
    style: Optional[float] = None                  # the latest style strength
    probe_step: Optional[int] = None               # the step they were measured at
    probes: list = field(default_factory=list)     # (step, prompt kept, style strength) at each measure
    suggested: Optional[str] = None                # at the end: the suggested copy (probe.suggest)
    suggested_step: Optional[int] = None
    previews: list = field(default_factory=list)   # preview image paths in order
    notes: list = field(default_factory=list)      # what the user should know about the data (skipped images...)
    timing: Optional[str] = None                   # at the end: where the run's time went (timing.Timing.line)

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        for key in HISTORY + ("notes",):
            out[key] = list(getattr(self, key))
        return out


class LocalRuntime:
    """How a job runs outside a webui: a host made on demand and a lock shared with generation."""

    def __init__(self, make_host: Callable[[], object], lock=None, on_finished: Optional[Callable[[], object]] = None):
        self.make_host = make_host
        self.lock = lock if lock is not None else threading.Lock()
        self.on_finished = on_finished

    @contextlib.contextmanager
    def session(self, job_id: str):
        with self.lock:
            yield

    def host(self):
        return self.make_host()

    def planned(self, steps: int) -> None:
        pass

    def progress(self, name: str, report, done: int) -> bool:
        return False

    def cells(self, done: int, total: int) -> bool:
        """A comparison's progress; nothing outside a webui asks it to stop (the panel's Stop button does)."""
        return False

    def failed(self, message: str) -> None:
        """Log the exception being handled with its traceback."""
        log.exception(message)

    def finished(self) -> None:
        if self.on_finished is not None:
            self.on_finished()


class TrainJob:
    """Train one hypernetwork on the host's loaded model; start() returns at once, status tells how it goes."""

    def __init__(self, options: TrainOptions, *, name: str, runtime, hypernetwork: Optional[str] = None,
                 create_fields: Optional[dict] = None):
        """`hypernetwork`: the path of a file to continue; else `create_fields` (CreateOptions keywords, already
        validated) make a new one, with the loaded model's widths when they name no `dims`. `runtime`: where it
        runs (LocalRuntime, or the webui's WebuiRuntime)."""
        self.options = options
        self.runtime = runtime
        self.hypernetwork = hypernetwork
        self.create_fields = dict(create_fields or {}, name=name) if hypernetwork is None else None
        self.status = JobStatus(job_id=f"hypernet-train-{next(_counter)}-{uuid.uuid4().hex[:8]}", name=name,
                                total=options.steps)
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    @property
    def job_id(self) -> str:
        return self.status.job_id

    @property
    def finished(self) -> bool:
        return self.status.finished is not None

    def start(self) -> "TrainJob":
        self.thread = threading.Thread(target=self._run, name=self.job_id, daemon=True)
        self.thread.start()
        return self

    def interrupt(self) -> None:
        self.stop.set()

    def snapshot(self) -> dict:
        with self._lock:
            return self.status.to_dict()

    def wait_for(self, predicate, timeout: Optional[float] = None) -> bool:
        """Block until predicate(status dict) holds (checked at every status change); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.status.to_dict()), timeout)

    def _update(self, **changes) -> None:
        with self._changed:
            for key, val in changes.items():
                setattr(self.status, key, val)
            self._changed.notify_all()

    # ------------------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            with self.runtime.session(self.job_id):
                if self.stop.is_set():
                    self._update(state="interrupted")
                    return
                self._train()
        except Exception as exc:
            self.runtime.failed(f"hypernet: training {self.status.name!r} failed")
            self._update(state="error", error=str(exc) or type(exc).__name__)
        finally:
            self._update(finished=time.time())

    def _train(self) -> None:
        from ..train.trainer import Trainer
        host = self.runtime.host()
        create = None
        if self.create_fields is not None:
            create = CreateOptions(**{"dims": host.model_dims(), **self.create_fields})
        self._update(state="running", started=time.time())

        def on_progress(report) -> None:
            with self._lock:
                self.status.losses.append((report.step, report.loss))
                self.status.val_losses[:] = trainer.val_points()
                if self.status.val_losses:
                    self.status.val_step, self.status.val_loss = self.status.val_losses[-1]
                self.status.probes[:] = trainer.probe_points()
                if self.status.probes:
                    self.status.probe_step, self.status.prompt_kept, self.status.style = self.status.probes[-1]
                self.status.previews.extend(report.previews or ([report.preview] if report.preview else []))
            self._update(notes=list(trainer.notes), step=report.step, loss=report.loss, learn_rate=report.learn_rate,
                         it_per_s=report.it_per_s,
                         last_saved=report.saved or self.status.last_saved,
                         last_preview=report.preview or self.status.last_preview)
            if self.runtime.progress(self.status.name, report, report.step - self.status.start_step):
                self.stop.set()

        trainer = Trainer(host, self.options, self.hypernetwork, create, stop=self.stop,
                          on_progress=on_progress)
        self._update(start_step=trainer.start_step, step=trainer.start_step, run_dir=str(trainer.run_dir))
        self.runtime.planned(self.options.steps - trainer.start_step)
        result = trainer.run()
        overflow = [f"{result.overflow_steps} steps were skipped where float16 gradients overflowed (the loss scale "
                    "came down)"] if result.overflow_steps else []
        # The copy written at an interrupt comes after the last progress report.
        self._update(state=result.stopped, step=result.step, output=result.output, loss=result.last_loss,
                     notes=list(trainer.notes) + overflow, suggested=result.suggested,
                     timing=result.timing.line() if result.timing else None,
                     suggested_step=result.suggested_step, probes=trainer.probe_points(),
                     last_saved=result.saved[-1] if result.saved else self.status.last_saved)
        self.runtime.finished()
