"""Where a training run's time goes: seconds per phase of every step, read from CUDA events on a GPU so that the
timing itself never makes the host wait for the device."""
from __future__ import annotations

import contextlib
import csv
import io
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

# The phases of a run, in the order of a step; "rest" is what none of them covers (the loop's own bookkeeping).
PHASES = ("data", "text", "forward", "backward", "optimizer", "logging", "validation", "rest")
LABELS = {"data": "data", "text": "text encoding", "forward": "UNet forward", "backward": "backward",
          "optimizer": "optimizer", "logging": "logging and saving", "validation": "validation and previews",
          "rest": "the rest"}
UNET_PHASES = ("forward", "backward")


class _HostClock:
    """Stamps from the host's clock: a phase ends when its Python code returns (the CPU computes synchronously)."""

    def stamp(self) -> float:
        return time.perf_counter()

    def ready(self, stamp) -> bool:
        return True

    def seconds(self, start, end) -> float:
        return end - start

    def wait(self) -> None:
        return None


class _CudaClock:
    """Stamps as CUDA events on the current stream: a phase lasts from when the device reaches its start to when it
    reaches its end, and reading them later needs no synchronisation while the run goes on."""

    def __init__(self, device: torch.device):
        self.device = device

    def stamp(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ready(self, stamp) -> bool:
        return stamp.query()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3

    def wait(self) -> None:
        torch.cuda.synchronize(self.device)


@dataclass
class Timing:
    """A run's time by phase: `phases` (seconds, "rest" included) sum to `seconds`, the loop's wall time."""

    seconds: float
    steps: int
    phases: dict
    step_seconds: list = field(default_factory=list)   # each step's own wall time, in order
    setup: dict = field(default_factory=dict)           # before the loop: {"images and latents": s, "text": s}
    peak_bytes: Optional[int] = None                    # peak memory while training (CUDA, or RSS with --profile)
    rows: list = field(default_factory=list)            # with profiling: per step {"step", phase: seconds, ...}
    cpu_seconds: Optional[float] = None                 # the process's CPU seconds in the loop (all threads)

    def per_step(self) -> dict:
        """Milliseconds per step of each phase, averaged over the run's steps (validation and saves included)."""
        n = max(self.steps, 1)
        return {name: 1e3 * self.phases[name] / n for name in PHASES}

    def steady_step(self) -> Optional[float]:
        """The median step's seconds: a step without validation, saving or previews."""
        return statistics.median(self.step_seconds) if self.step_seconds else None

    def non_unet_share(self) -> float:
        """The share of the loop outside the UNet's forward and backward."""
        unet = sum(self.phases[name] for name in UNET_PHASES)
        return 1.0 - unet / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One line: the run's steps and seconds, and each phase's milliseconds per step (they sum to the step)."""
        per = self.per_step()
        parts = " + ".join(f"{LABELS[name]} {per[name]:.0f} ms" for name in PHASES)
        steady = self.steady_step()
        # validation and saves come every so many steps: in a short run their share hides the plain step's speed
        plain = f" (a step without validation or saving {1e3 * steady:.0f} ms)" if steady is not None else ""
        text = (f"time: {self.steps} steps in {self.seconds:.1f} s, {1e3 * self.seconds / max(self.steps, 1):.0f} "
                f"ms/step{plain} = {parts}")
        if self.setup:
            text += "; before step 0: " + ", ".join(f"{name} {s:.1f} s" for name, s in self.setup.items())
        if self.peak_bytes:
            text += f"; peak memory while training {self.peak_bytes / 2 ** 30:.2f} GiB"
        return text

    def table(self) -> str:
        """The profile: each phase's total seconds, milliseconds per step and share of the loop."""
        per = self.per_step()
        lines = [f"{'phase':<24} {'seconds':>9} {'ms/step':>9} {'share':>7}"]
        for name in PHASES:
            share = self.phases[name] / self.seconds if self.seconds > 0 else 0.0
            lines.append(f"{LABELS[name]:<24} {self.phases[name]:>9.2f} {per[name]:>9.1f} {share:>7.1%}")
        steady = self.steady_step()
        lines.append(f"{'all':<24} {self.seconds:>9.2f} {1e3 * self.seconds / max(self.steps, 1):>9.1f} "
                     f"{1:>7.1%}" + (f"   median step {1e3 * steady:.1f} ms" if steady is not None else ""))
        return "\n".join(lines)

    def rows_csv(self) -> str:
        """profile.csv: a row per step of its wall seconds and each phase's seconds within it."""
        columns = ("step", "step_seconds") + PHASES[:-1]
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(columns)
        for row in self.rows:
            writer.writerow([row["step"]] + [f"{row.get(name, 0.0):.6f}" for name in columns[1:]])
        return text.getvalue()

    def to_dict(self) -> dict:
        """The figures for the run's summary JSON."""
        data = {"seconds": self.seconds, "steps": self.steps, "phases": dict(self.phases),
                "per_step_ms": self.per_step(), "median_step_ms": None, "non_unet_share": self.non_unet_share(),
                "setup_seconds": dict(self.setup), "peak_bytes": self.peak_bytes, "cpu_seconds": self.cpu_seconds}
        steady = self.steady_step()
        if steady is not None:
            data["median_step_ms"] = 1e3 * steady
        return data


class PhaseTimer:
    """Seconds per phase, per step. Phases never nest; stamps on CUDA are read once the device has passed them."""

    def __init__(self, device, keep_rows: bool = False, measure_rss: bool = False):
        device = torch.device(device)
        self.device = device
        self.clock = _CudaClock(device) if device.type == "cuda" else _HostClock()
        self.totals = dict.fromkeys(PHASES[:-1], 0.0)
        self.keep_rows = keep_rows
        self.measure_rss = measure_rss
        self.setup: dict = {}
        self._rows: dict = {}          # step -> {phase: seconds}
        self._open: list = []          # (step, name, start stamp, end stamp) not read yet
        self._step = 0                 # the step the phases now count toward (0: before the first)
        self._step_start: Optional[float] = None
        self._started: Optional[float] = None
        self._cpu_started: Optional[float] = None
        self._steps = 0
        self._occasional: set = set()  # steps that validated, saved or rendered previews

    def start(self) -> None:
        """The loop begins: from here every second counts toward a phase or the rest."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.measure_rss:
            reset_peak_rss()
        self._started = time.perf_counter()
        self._cpu_started = time.process_time()

    @contextlib.contextmanager
    def phase(self, name: str, occasional: bool = False):
        """Count the block's time toward `name`; `occasional` (a save, a validation) keeps its step out of the
        median step."""
        if occasional:
            self._occasional.add(self._step)
        start = self.clock.stamp()
        try:
            yield
        finally:
            self._open.append((self._step, name, start, self.clock.stamp()))

    def begin_step(self, step: int) -> None:
        """Phases from here on belong to `step` (1-based, the step being made)."""
        self._step = step
        self._step_start = self.clock.stamp()

    def end_step(self) -> None:
        """The step is done: record its wall time, and read whatever stamps the device has passed."""
        self._open.append((self._step, "step", self._step_start, self.clock.stamp()))
        self._steps += 1
        self._read(block=False)

    def abandon_step(self) -> None:
        """A skipped step (non-finite gradients): its phases still count, it adds no step."""
        self._read(block=False)

    def finish(self) -> Timing:
        """The run's Timing: every stamp read (one wait for the device, at the end), the rest the unmeasured time."""
        self.clock.wait()
        self._read(block=True)
        seconds = time.perf_counter() - (self._started if self._started is not None else time.perf_counter())
        phases = dict(self.totals)
        phases["rest"] = max(0.0, seconds - sum(phases.values()))
        rows = [{"step": step, **row} for step, row in sorted(self._rows.items()) if step > 0]
        step_seconds = [row["step_seconds"] for row in rows
                        if "step_seconds" in row and row["step"] not in self._occasional]
        cpu = time.process_time() - self._cpu_started if self._cpu_started is not None else None
        return Timing(seconds, self._steps, phases, step_seconds, dict(self.setup), self._peak(),
                      rows if self.keep_rows else [], cpu)

    def _read(self, block: bool) -> None:
        """Add the durations of the stamps the device has passed, oldest first."""
        while self._open:
            step, name, start, end = self._open[0]
            if not block and not self.clock.ready(end):
                return
            self._open.pop(0)
            seconds = self.clock.seconds(start, end)
            row = self._rows.setdefault(step, {})
            if name == "step":
                row["step_seconds"] = seconds
                continue
            self.totals[name] += seconds
            row[name] = row.get(name, 0.0) + seconds

    def _peak(self) -> Optional[int]:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return peak_rss() if self.measure_rss else None


def reset_peak_rss() -> None:
    """Start the process's peak resident memory (VmHWM) afresh; Linux only, a no-op elsewhere."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")


def peak_rss() -> Optional[int]:
    """The process's peak resident memory in bytes since start or the last reset (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
