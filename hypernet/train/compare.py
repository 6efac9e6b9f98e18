"""Compare the saved copies of a training run: one labelled grid, a row per copy, a column per prompt and strength.

Hypernetworks over-train: the previews distort and the prompt stops mattering, so users keep copies and pick one.
This renders every copy with the same prompts and seeds on any host the trainer supports (host.sample with the
copy's hooks attached), labels each row with its step, validation loss, prompt kept and style strength (the
suggested copy marked), and copies the chosen one into the hypernetwork folder. Nothing here imports a UI.
"""
from __future__ import annotations

import csv
import os
import re
import secrets
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

from ..bounds import read_json
from ..config import CompareOptions, CreateOptions
from ..errors import ConfigError, HypernetError
from ..fileformat.files import atomic_write_with, inspect
from .config_file import section
from .plot import write_png

SUFFIXES = (".pt", ".safetensors")
LOSS_CSV = "hypernetwork_loss.csv"
COPIES = "hypernetworks"


@dataclass(frozen=True)
class Copy:
    """One saved copy of a run: its file, the step it was saved at and what the trainer measured there."""

    path: str
    step: Optional[int]
    val_loss: Optional[float]
    prompt_kept: Optional[float] = None
    style: Optional[float] = None
    suggested: bool = False

    @property
    def label(self) -> str:
        """The row title: file name, step, validation loss, prompt kept and style when known, and the suggestion."""
        parts = [Path(self.path).stem + (" (suggested)" if self.suggested else "")]
        if self.step is not None:
            parts.append(f"step {self.step}")
        if self.val_loss is not None:
            parts.append(f"val loss {self.val_loss:.5f}")
        if self.prompt_kept is not None:
            parts.append(f"prompt kept {self.prompt_kept:.2f}")
        if self.style is not None:
            parts.append(f"style {self.style:.3f}")
        return "\n".join(parts)

    def to_dict(self) -> dict:
        return {"path": self.path, "step": self.step, "val_loss": self.val_loss, "prompt_kept": self.prompt_kept,
                "style": self.style, "suggested": self.suggested}


@dataclass
class Comparison:
    """A rendered comparison: the grid, its rows (copies) and columns ((prompt, strength))."""

    image: Image.Image
    copies: List[Copy]
    columns: List[tuple]
    seed: int
    files: List[str] = field(default_factory=list)   # where the grid was written
    cells: Tuple[int, int] = (0, 0)                   # images rendered, images planned: fewer when stopped

    @property
    def complete(self) -> bool:
        return self.cells[0] == self.cells[1]

    def to_dict(self) -> dict:
        return {"copies": [c.to_dict() for c in self.copies],
                "columns": [{"prompt": p, "strength": s} for p, s in self.columns], "seed": self.seed,
                "files": list(self.files), "cells_done": self.cells[0], "cells_total": self.cells[1],
                "complete": self.complete}


# ---------------------------------------------------------------------------------------------- finding copies
def run_dir_of(path) -> Optional[Path]:
    """The run folder a path is or belongs to (it holds settings.json), or None."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / "settings.json").is_file():
            return candidate
    return None


MEASURES = ("val_loss", "prompt_kept", "style")  # the loss CSV's columns a copy's row label shows


def measures(run_dir: Optional[Path]) -> Dict[int, dict]:
    """step -> {column: value} of the MEASURES a run's loss CSV holds at that step (empty when it has none)."""
    path = Path(run_dir or "") / LOSS_CSV
    if run_dir is None or not path.is_file():
        return {}
    out: Dict[int, dict] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                found = {k: float(row[k]) for k in MEASURES if row.get(k)}
                if found:
                    out.setdefault(int(row["step"]), {}).update(found)
            except (TypeError, ValueError):  # a hand-edited or truncated line
                continue
    return out


def _copy(path: Path, logged: Dict[int, dict]) -> Copy:
    """A Copy of `path`, with what the trainer measured at its step looked up in `logged` (measures of its run)."""
    step = inspect(path).step
    found = logged.get(step, {}) if step is not None else {}
    val_loss, prompt_kept, style = (found.get(k) for k in MEASURES)
    return Copy(str(path), step, val_loss, prompt_kept, style)


def mark_suggested(copies: Sequence[Copy], goal: float) -> List[Copy]:
    """The copies with the suggested one (probe.suggest at `goal`) marked."""
    from dataclasses import replace

    from .probe import suggest
    best = suggest([{"prompt_kept": c.prompt_kept, "style": c.style} for c in copies], goal)
    return [replace(c, suggested=i == best) for i, c in enumerate(copies)]


def goal_of(settings: dict) -> float:
    """The prompt-kept goal a run was trained with (its settings.json), else the default."""
    from .probe import GOAL
    run = section(settings, "options")
    try:
        return float(run.get("prompt_kept_goal", GOAL))
    except (TypeError, ValueError):
        return GOAL


def suggested_copy(run_dir) -> Optional[str]:
    """The path of a run's suggested copy, from its loss CSV; None when none was measured or a copy is unreadable."""
    try:
        copies = mark_suggested(_copies_of_run(Path(run_dir)), goal_of(run_settings(run_dir)))
    except (HypernetError, OSError):  # a listing must not fail on one run's broken file
        return None
    return next((c.path for c in copies if c.suggested), None)


def copy_files(run_dir) -> List[Path]:
    """The files of a run's copies folder (regular files, not links), name-500 before name-1000."""
    folder = Path(run_dir) / COPIES
    if not folder.is_dir():
        return []
    files = [Path(e.path) for e in os.scandir(folder)
             if Path(e.name).suffix in SUFFIXES and e.is_file(follow_symlinks=False)]
    return sorted(files, key=lambda p: _natural(p.name))


def _natural(text: str) -> list:
    """A sort key that puts name-500 before name-1000."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _copies_of_run(run_dir: Path) -> List[Copy]:
    """A run's numbered copies, plus its final file when that holds a step no copy has (an interrupted run)."""
    logged = measures(run_dir)  # the loss CSV, read once for all the run's copies
    copies = [_copy(p, logged) for p in copy_files(run_dir)]
    final = run_settings(run_dir).get("output")
    if final and Path(final).is_file() and Path(final).suffix in SUFFIXES:
        last = _copy(Path(final), logged)
        if last.step not in {c.step for c in copies}:
            copies.append(last)
    return copies


def saved_copies(sources: Sequence) -> List[Copy]:
    """Every copy named by `sources` (run folders or files), one per step, in step order."""
    if not sources:
        raise HypernetError("compare: name a run folder (it holds settings.json) or saved hypernetwork files")
    found: List[Copy] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            run = run_dir_of(path)
            if run is None:
                raise HypernetError(f"{path}: not a training run folder (no settings.json in it or above it); name "
                                    "the run folder, e.g. logs/2026-12-02/mystyle, or the files themselves")
            copies = _copies_of_run(run)
            if not copies:
                raise HypernetError(f"{path}: this run has no saved copies yet ({run / COPIES} is empty); "
                                    "train with save_every > 0")
            found.extend(copies)
        elif path.is_file():
            found.append(_copy(path, measures(run_dir_of(path))))
        else:
            raise HypernetError(f"{path}: no such file or folder")
    copies, seen = [], set()
    for copy in sorted(found, key=lambda c: (c.step is None, c.step or 0)):  # stable: a run's own copy first
        key = copy.step if copy.step is not None else copy.path
        if key not in seen:  # the final file repeats the last numbered copy
            seen.add(key)
            copies.append(copy)
    return mark_suggested(copies, goal_of(settings_of(copies)))


def run_settings(run_dir: Optional[Path]) -> dict:
    """A run's settings.json (empty when there is none or it does not parse)."""
    path = Path(run_dir or "") / "settings.json"
    if run_dir is None or not path.is_file():
        return {}
    try:
        data = read_json(path, "settings.json")
    except (OSError, ValueError):  # HypernetError is a ValueError: too large, too deep or not JSON
        return {}
    return data if isinstance(data, dict) else {}


def settings_of(copies: Sequence[Copy]) -> dict:
    """The settings.json of the first copy that belongs to a run."""
    for copy in copies:
        settings = run_settings(run_dir_of(copy.path))
        if settings:
            return settings
    return {}


def filled(options: CompareOptions, settings: dict) -> CompareOptions:
    """The options with the run's defaults put in: its preview prompt (else first caption) and training size; a
    seed below 0 becomes one random seed, the same for the whole grid (as the webui's X/Y/Z plot draws it)."""
    run = section(settings, "options")
    changes: Dict[str, object] = {"seed": secrets.randbelow(2 ** 32 - 1)} if options.seed < 0 else {}
    if not options.prompts():
        prompt = run.get("preview_prompt") or first_caption(run.get("data"))
        if not prompt:
            raise ConfigError("prompt", "give a prompt to compare with: the run records no preview prompt and its "
                                        "data folder is gone")
        changes["prompt"] = prompt
    for name in ("width", "height"):
        if not getattr(options, name):
            changes[name] = int(run.get(f"preview_{name}") or run.get(name) or 512)
    return options.replace(**changes) if changes else options


def first_caption(folder) -> str:
    """The caption of the first image of a training folder ("" when the folder is gone or empty)."""
    from .data import read_caption, scan_images
    try:
        images, _ = scan_images(folder)
        return read_caption(images[0]) if images else ""
    except HypernetError:
        return ""


def model_of(settings: dict) -> str:
    """The model a run trained on, as a path hosts.diffusers.load_pipeline reads; a HypernetError when it cannot be found again."""
    model = section(settings, "model")
    path = model.get("path") or ""
    if path and Path(path).exists():
        return path
    where = f" ({model.get('host')} model {model.get('name')!r})" if model else ""
    raise HypernetError(f"the run's model{where} is not at {path or 'a recorded path'}; pass --model with the "
                        "diffusers folder or checkpoint it was trained on")


# ---------------------------------------------------------------------------------------------- rendering
def _sample(host, prompt: str, o: CompareOptions):
    extra = {"sampler_name": o.sampler} if o.sampler else {}
    import torch
    with torch.no_grad():
        return host.sample(prompt, o.negative_prompt, o.steps, o.cfg_scale, o.seed, o.width, o.height, **extra)


class _Cells:
    """Counts rendered images against the plan, reports each, and says when to stop (between images)."""

    def __init__(self, total: int, progress: Optional[Callable[[int, int], bool]]):
        self.done, self.total, self.progress, self.stopped = 0, total, progress, False
        self._report()  # 0 of total: the plan shows before the first image

    def rendered(self) -> None:
        self.done += 1
        self._report()

    def _report(self) -> None:
        if self.progress is not None and self.progress(self.done, self.total) and self.done < self.total:
            self.stopped = True


def render(host, copies: Sequence[Copy], options: CompareOptions,
           progress: Optional[Callable[[int, int], bool]] = None) -> Comparison:
    """Every copy at every (prompt, strength), same seed throughout; strength 0 is the model with no hooks.

    `progress(done, total)` is called after every image; when it returns True the rendering stops there and the grid
    holds what was rendered, grey where an image is missing."""
    from ..attach import attach
    from ..fileformat.files import load
    prompts, strengths = options.prompts(), options.strength_list()
    if not prompts:
        raise ConfigError("prompt", "give at least one prompt")
    if options.seed < 0:
        raise ConfigError("seed", "fill the options first: compare.filled draws one seed for the grid")
    columns = [(p, s) for p in prompts for s in strengths]
    hooked = [c for c in columns if c[1] != 0.0]
    cells = _Cells((len(prompts) if 0.0 in strengths else 0) + len(copies) * len(hooked), progress)
    base = {}
    for prompt in prompts if 0.0 in strengths else ():
        if not cells.stopped:
            base[prompt] = _sample(host, prompt, options)  # the same for every row: rendered once
            cells.rendered()
    rows = []
    for copy in copies:
        hn = load(copy.path)
        report = hn.compatibility(host.unet)
        if not report.applies:
            raise HypernetError(f"{copy.path}: {report.warning}; compare copies made for this model")
        row = []
        for prompt, strength in columns:
            if strength == 0.0:
                row.append(base.get(prompt))
            elif not cells.stopped:
                with attach(host.unet, [(hn, strength)], warn=False):
                    row.append(_sample(host, prompt, options))
                cells.rendered()
            else:
                row.append(None)
        rows.append(row)
    blank = Image.new("RGB", (options.width or 64, options.height or 64), (96, 96, 96))
    pictures = [[img if img is not None else blank for img in row] for row in rows]
    titles = [("without" if s == 0.0 else f"strength {s:g}") for _, s in columns]
    groups = prompts if len(prompts) > 1 else []
    stopped = f" (stopped after {cells.done} of {cells.total} images)" if cells.stopped else ""
    picture = labelled_grid(pictures, titles, [c.label for c in copies], groups,
                            f"seed {options.seed}, {options.steps} steps, cfg {options.cfg_scale:g}{stopped}"
                            + ("" if len(prompts) > 1 else f": {prompts[0]}"))
    return Comparison(picture, list(copies), columns, options.seed, cells=(cells.done, cells.total))


def _cell(size: int) -> int:
    """Cell size for images `size` pixels wide: tiny images are scaled up by a whole factor to stay crisp."""
    return size * max(1, -(-128 // size))


def labelled_grid(rows: Sequence[Sequence[Image.Image]], column_titles: Sequence[str], row_titles: Sequence[str],
                  groups: Sequence[str] = (), caption: str = "") -> Image.Image:
    """Images in a grid with a title over each column, a title left of each row, an optional title over each equal
    group of columns (e.g. one per prompt) and a caption on top."""
    first = rows[0][0] if rows and rows[0] else Image.new("RGB", (64, 64))
    cell_w, cell_h = _cell(first.width), _cell(first.height)
    left, line = 200, 12
    header = line * (2 + (1 if groups else 0)) + 6
    out = Image.new("RGB", (left + cell_w * len(column_titles), header + cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    draw.text((4, 4), _fit(caption, (out.width - 8) // 6), fill=(0, 0, 0))
    span = len(column_titles) // max(1, len(groups))
    for g, title in enumerate(groups):
        draw.text((left + g * span * cell_w + 4, 4 + line), _fit(title, span * cell_w // 6 - 1), fill=(0, 0, 120))
    for c, title in enumerate(column_titles):
        draw.text((left + c * cell_w + 4, header - line - 2), _fit(title, cell_w // 6 - 1), fill=(20, 20, 20))
    for r, (images, title) in enumerate(zip(rows, row_titles)):
        lines = [w for part in title.split("\n") for w in textwrap.wrap(part, (left - 8) // 6) or [""]]
        for i, text in enumerate(lines[: max(1, cell_h // line)]):
            draw.text((4, header + r * cell_h + 4 + i * line), text, fill=(20, 20, 20))
        for c, img in enumerate(images):
            out.paste(img.convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST),
                      (left + c * cell_w, header + r * cell_h))
    return out


def _fit(text: str, chars: int) -> str:
    """`text` cut to `chars` characters, with an ellipsis when cut."""
    chars = max(chars, 4)
    return text if len(text) <= chars else text[: chars - 3] + "..."


# ---------------------------------------------------------------------------------------------- writing
def free_path(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """`folder/stem.suffix`, or the first `stem-N.suffix` that does not exist: a UI never overwrites a grid."""
    path, n = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


def keep(source, folder, name: Optional[str] = None, overwrite: bool = False) -> str:
    """Copy a saved copy (and its .optim, for continuing) into `folder` as `name` (default: the copy's own name).

    Copied, never moved: the run keeps its history. An existing file of that name is replaced only with
    `overwrite`. Each file is written to a temporary file beside the target first, so a full disk leaves nothing
    half-written."""
    source = Path(source)
    if not source.is_file():
        raise HypernetError(f"{source}: no such saved copy")
    stem = CreateOptions._check_name(name if name else source.stem)
    target = Path(folder) / f"{stem}{source.suffix}"
    if not Path(folder).is_dir():
        raise HypernetError(f"{folder}: the hypernetwork folder does not exist")
    if target.exists() and not overwrite:
        raise HypernetError(f"{target} already exists; choose another name or allow overwriting")
    if target.exists() and os.path.samefile(target, source):
        return str(target)
    pairs = [(source, target)]
    if Path(str(source) + ".optim").is_file():
        pairs.append((Path(str(source) + ".optim"), Path(str(target) + ".optim")))
    for src, dst in pairs:
        with open(src, "rb") as inp:
            atomic_write_with(dst, lambda out: shutil.copyfileobj(inp, out, 1 << 20))
    return str(target)


def write_grid(comparison: Comparison, path) -> str:
    """Write the grid as a PNG, atomically; returns the path."""
    write_png(path, comparison.image)
    comparison.files.append(str(path))
    return str(path)
