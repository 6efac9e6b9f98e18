"""What a run reports: a Progress after every optimizer step, a TrainResult at the end."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from . import timing


@dataclass
class TrainResult:
    """What a run produced and why it ended."""

    output: Optional[str]
    run_dir: str
    start_step: int
    step: int
    stopped: str                   # "completed", "interrupted", "already-done"
    last_loss: Optional[float] = None
    saved: list = field(default_factory=list)
    previews: list = field(default_factory=list)
    skipped_steps: int = 0
    overflow_steps: int = 0   # steps skipped because float16 loss scaling overflowed (the scale was lowered)
    val_losses: list = field(default_factory=list)   # (step, validation loss) at each evaluation
    validation_seconds: float = 0.0                  # time spent scoring the validation draws
    probes: list = field(default_factory=list)       # (step, prompt kept, style strength) at each measure
    probe_seconds: float = 0.0                       # time spent measuring them (probe.py)
    suggested: Optional[str] = None                  # the suggested copy (probe.suggest), when any was measured
    suggested_step: Optional[int] = None
    seconds: float = 0.0                             # the whole loop, validation and measures included
    timing: Optional[timing.Timing] = None           # where those seconds went, by phase (timing.py)


@dataclass
class Progress:
    """One progress report, passed to on_progress after every optimizer step."""

    step: int
    total: int
    loss: float
    learn_rate: float
    epoch: int
    epoch_step: int
    it_per_s: float
    preview: Optional[str] = None  # the last preview image of this step
    saved: Optional[str] = None
    val_loss: Optional[float] = None
    previews: list = field(default_factory=list)  # every preview image of this step (a prompts file makes several)
    prompt_kept: Optional[float] = None           # measured at this step (step 0, saves and the end)
    style: Optional[float] = None
