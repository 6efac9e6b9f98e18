"""A run's folder and files: settings, the loss CSV, TensorBoard / W&B, the loss plot, numbered copies, the final
file, the rescue of a failed run and its summary. Process 0 alone writes; the other processes keep the same books."""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

import torch

from ..config import DTYPES, TrainOptions
from ..errors import HypernetError
from ..fileformat.files import atomic_write, optim_path, save_optimizer
from ..network import Hypernetwork
from . import probe

if TYPE_CHECKING:
    from ..hosts.protocol import Identity

log = logging.getLogger("hypernet")
# The webui's columns first (its tools read them by position); the rest are ours, empty where not evaluated.
CSV_COLUMNS = ("step", "epoch", "epoch_step", "loss", "learn_rate", "val_loss", "prompt_kept", "style")
TRAINER_STATE_KEY = "hypernet_trainer_state"  # extra .optim key; the webui ignores keys it does not know


def output_path(options: TrainOptions, name: str) -> Path:
    """Where a run's final file goes: the output option, else <log_dir>/<name>.pt."""
    return Path(options.output) if options.output else Path(options.log_dir) / f"{name}.pt"


def replaces_other_file(output, source=None) -> bool:
    """Whether saving to `output` would replace an existing file other than `source`, the file being continued."""
    if not os.path.exists(output):
        return False
    return source is None or not os.path.exists(source) or not os.path.samefile(output, source)


class RunFolder:
    """log_dir/<date>/<name> for one run of `hn`, the curves it records there, and the final file."""

    def __init__(self, options: TrainOptions, hn: Hypernetwork, *, start_step: int, writer: bool,
                 identity: Callable[[], Identity]):
        """`writer`: this process writes the files (process 0). `identity`: the host's identity(), the model the
        saved files were trained on."""
        self.opts = options
        self.hn = hn
        self.name = hn.name
        self.start_step = start_step
        self.writer = writer
        self.identity = identity
        self.dir = Path(options.log_dir) / _dt.date.today().isoformat() / self.name
        self.output = output_path(options, self.name)
        self.board = self.wandb = None
        self.settings_file: Optional[Path] = None
        self.losses: Tuple[List[int], List[float]] = ([], [])   # (steps, training losses) for the plot
        self.val_losses: list = []      # (step, validation loss) at each evaluation; the TrainResult holds this list
        self.probes: list = []          # (step, prompt kept, style strength) at each measure; the TrainResult's list
        self.suggested_step: Optional[int] = None   # known at the end; loss.png marks it
        self._csv_checked = False
        self._copies: list = []         # numbered copies this run wrote, oldest first (keep_last_copies prunes)
        self._copy_steps: dict = {}     # numbered copy path -> step

    # ------------------------------------------------------------------------------------------ start and end
    def open(self, seed: int, source: Optional[str], processes: int) -> None:
        """Make the folder, write this start's settings and start the loggers the options ask for."""
        if not self.writer:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_settings(seed, source, processes)
        self.board = self._tensorboard()
        self.wandb = self._wandb(seed)

    def close(self) -> None:
        """Close the loggers."""
        if self.board is not None:
            self.board.close()
        if self.wandb is not None:
            self.wandb.finish()

    def _write_settings(self, seed: int, source: Optional[str], processes: int) -> None:
        """settings.json: the options, the hypernetwork, the model and the versions this start ran with."""
        from ..version import __version__
        data = {"options": self.opts.to_dict(), "hypernetwork": self.hn.config.to_dict(), "seed": seed,
                "processes": processes, "start_step": self.start_step, "source": source, "output": str(self.output),
                "model": self.identity(), "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "torch": torch.__version__, "hypernet": __version__}
        self.settings_file = self._settings_path()
        atomic_write(self.settings_file, json.dumps(data, indent=2, default=str).encode())

    def _settings_path(self) -> Path:
        """settings.json for a run's first start; a resumed run in the same folder keeps it and writes its own."""
        path = self.dir / "settings.json"
        n = 1
        while path.exists():
            path = self.dir / f"settings-resumed-at-{self.start_step}{'' if n == 1 else f'-{n}'}.json"
            n += 1
        return path

    def _tensorboard(self):
        """A TensorBoard writer in the folder when the option is on."""
        if not self.opts.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise HypernetError("tensorboard: logging to TensorBoard needs `pip install tensorboard`; "
                                "install it or turn the option off") from None
        return SummaryWriter(log_dir=str(self.dir / "tensorboard"))

    def _wandb(self, seed: int):
        """A Weights & Biases run when the option is on (one per training run, in the run folder)."""
        if not self.opts.wandb:
            return None
        try:
            import wandb
        except ImportError:
            raise HypernetError("wandb: logging to Weights & Biases needs `pip install wandb` (and `wandb login`, "
                                "or WANDB_MODE=offline); install it or turn the option off") from None
        return wandb.init(project=self.opts.wandb_project or "hypernet", name=f"{self.name}-{self.start_step}",
                          dir=str(self.dir), config={**self.opts.to_dict(), "seed": seed,
                                                     "hypernetwork": self.hn.config.to_dict()})

    def write_summary(self, result, device: str, profile: bool) -> None:
        """summary.json beside the run's settings (what a TrainResult says it did and where its time went); with
        `profile`, profile.csv, one row of phase seconds per step."""
        if not self.writer:
            return
        name = self.settings_file.name.replace("settings", "summary", 1) if self.settings_file else "summary.json"
        data = {"stopped": result.stopped, "start_step": result.start_step, "step": result.step,
                "output": result.output, "last_loss": result.last_loss, "skipped_steps": result.skipped_steps,
                "overflow_steps": result.overflow_steps, "device": device, "timing": result.timing.to_dict()}
        atomic_write(self.dir / name, json.dumps(data, indent=2).encode())
        if profile and result.timing.rows:
            atomic_write(self.dir / name.replace("summary", "profile", 1).replace(".json", ".csv"),
                         result.timing.rows_csv().encode())

    # ------------------------------------------------------------------------------------------ the curves
    def log_step(self, step: int, loss: float, lr: float) -> None:
        """A step's loss and learning rate: to the plot and the loggers."""
        self.losses[0].append(step)
        self.losses[1].append(loss)
        if self.board is not None:
            self.board.add_scalar("Loss/train", loss, step)
            self.board.add_scalar("Learn rate/train", lr, step)
        if self.wandb is not None:
            self.wandb.log({"loss": loss, "learn_rate": lr}, step=step)

    def log_validation(self, step: int, value: float) -> None:
        """A validation loss: to the plot and the loggers."""
        self.val_losses.append((step, value))
        if self.board is not None:
            self.board.add_scalar("Loss/validation", value, step)
        if self.wandb is not None:
            self.wandb.log({"val_loss": value}, step=step)

    def log_probe(self, step: int, kept: float, style: float) -> None:
        """A measure of prompt kept and style strength: to the plot and the loggers."""
        self.probes.append((step, kept, style))
        self.log_figures({"prompt_kept": kept, "style": style}, step)

    def log_figures(self, figures: dict, step: int) -> None:
        """Measures to TensorBoard (under Probe/) and W&B."""
        if self.board is not None:
            for name, value in figures.items():
                self.board.add_scalar(f"Probe/{name}", value, step)
        if self.wandb is not None:
            self.wandb.log(figures, step=step)

    def log_previews(self, step: int, paths: list) -> None:
        """A step's preview images to W&B."""
        if self.wandb is not None and paths:
            import wandb
            self.wandb.log({"preview": [wandb.Image(p, caption=Path(p).stem) for p in paths]}, step=step)

    def append_csv(self, step: int, epoch: int, epoch_step: int, loss: float, lr: float,
                   *measured: Optional[float]) -> None:
        """A row of hypernetwork_loss.csv: the mean training loss since the last row, the rate, and the figures
        measured at this step (val_loss, prompt_kept, style; empty where not measured)."""
        if not self.writer:
            return
        path = self.dir / "hypernetwork_loss.csv"
        if not self._csv_checked and path.exists():
            _upgrade_csv(path)
        self._csv_checked = True
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(CSV_COLUMNS)
            writer.writerow((step, epoch, epoch_step, f"{loss:.7f}", f"{lr:.10g}", *map(_csv_number, measured)))

    def draw_loss(self) -> None:
        """loss.png: the training loss, the validation loss, the measures and the suggested step."""
        if self.losses[0] and self.writer:
            from .plot import columns, draw_loss
            draw_loss(*self.losses, self.dir / "loss.png", title=f"{self.name} loss",
                      validation=columns(self.val_losses), probes=self.probes, suggested=self.suggested_step)

    # ------------------------------------------------------------------------------------------ files
    def save(self, path, optimizer: torch.optim.Optimizer, trainer_state: dict) -> str:
        """Write the hypernetwork to `path`, stamped with the model it trained on, and its optimizer state with
        `trainer_state` (what a resume needs) when the options keep it; the path written."""
        if not self.writer:
            return str(path)  # process 0 writes the same weights
        ident = self.identity()
        self.hn.sd_checkpoint = ident.get("unet_hash")
        self.hn.sd_checkpoint_name = ident.get("name")
        written = self.hn.save(path, dtype=DTYPES[self.opts.save_precision])
        if self.opts.save_optimizer_state:
            save_optimizer(written, self.opts.optimizer, optimizer.state_dict(), {TRAINER_STATE_KEY: trainer_state})
        return written

    def copy_path(self, step: int) -> Path:
        """The numbered copy of a step."""
        return self.dir / "hypernetworks" / f"{self.name}-{step}.pt"

    def save_copy(self, step: int, optimizer: torch.optim.Optimizer, trainer_state: dict) -> str:
        """The numbered copy of a step, the plot redrawn and the older copies pruned; its path."""
        if not self.writer:
            return str(self.copy_path(step))
        path = self.save(self.copy_path(step), optimizer, trainer_state)
        self._copy_steps[path] = step
        self.draw_loss()
        self._copies.append(path)
        self._prune_copies()
        return path

    def _prune_copies(self) -> None:
        """Delete this run's older numbered copies (and their .optim) beyond keep_last_copies; never another file."""
        keep = self.opts.keep_last_copies
        if not keep:
            return
        final = os.path.abspath(self.output)
        while len(self._copies) > keep:
            old = self._copies.pop(0)
            if os.path.abspath(old) == final:
                continue
            for path in (old, optim_path(old)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)

    def suggest(self, saved: list, output: Optional[str], step: int) -> tuple:
        """(path, step) of the suggested copy among this run's copies (`saved`) and its final file `output` at
        `step`, by probe.suggest, logged; (None, None) when none was measured."""
        figures = {at: (kept, style) for at, kept, style in self.probes}
        files = [(path, self._copy_steps.get(path)) for path in saved]
        if output and step not in {at for _, at in files}:
            files.append((output, step))
        rows = [{"prompt_kept": figures[at][0], "style": figures[at][1]} if at in figures else {} for _, at in files]
        best = probe.suggest(rows, self.opts.prompt_kept_goal)
        path, self.suggested_step = files[best] if best is not None else (None, None)
        if self.suggested_step is not None:
            self.log_figures({"suggested_step": self.suggested_step}, step)
        return path, self.suggested_step

    def rescue(self, step: int, optimizer: torch.optim.Optimizer, trainer_state: dict) -> str:
        """Save what a failed run had, never over the file it started from; a note for the error message."""
        if not self.writer:
            return ""
        if step <= self.start_step or not self.hn.is_finite():
            return "; nothing was saved, the starting file is unchanged"
        path = self.dir / "hypernetworks" / f"{self.name}-{step}-unfinished.pt"
        try:
            written = self.save(path, optimizer, trainer_state)
        except Exception as save_exc:  # the original error matters more than a failed rescue
            log.error("could not save the unfinished run: %s", save_exc)
            return ""
        log.warning("saved the unfinished run to %s", written)
        return f"; the weights at step {step} were saved to {written}"


def _upgrade_csv(path: Path) -> None:
    """Give a loss CSV from an older run (the webui's five columns) our header, so a resumed run appends to it."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or tuple(rows[0]) == CSV_COLUMNS:
        return
    width = len(CSV_COLUMNS)
    body = [CSV_COLUMNS] + [r + [""] * (width - len(r)) for r in rows[1:]]
    text = io.StringIO()
    csv.writer(text).writerows(body)
    atomic_write(path, text.getvalue().encode())


def _csv_number(value: Optional[float]) -> str:
    """A measured figure for the CSV, empty where it was not measured."""
    return "" if value is None else f"{value:.7f}"
