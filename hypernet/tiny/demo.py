"""python -m hypernet demo: create, train and show a style hypernetwork on the built-in tiny model, on a CPU.

The bundled "style" is a palette: every training image is recoloured by brightness into five warm colours. Two
figures are measured for every saved copy, on unseen prompts with fixed seeds, at strength 1.0 against the model
without it:
- the style shift: how much closer generated pixels come to the palette (mean distance to the nearest colour);
- the content kept: how much of what the prompt asks for (the shape and where it is) scenes.py still reads back
  from the image, relative to the model without the hypernetwork (1.0 = as often as without).
A style that repaints everything but loses the shapes has over-trained; the best copy is the one with the largest
shift that keeps at least CONTENT_GOAL of the content. With your own folder, the palette is the eight colours that
best summarise its images.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..attach import attach
from ..fileformat.files import atomic_write, load
from ..train.compare import labelled_grid
from ..train.plot import write_png
from .scenes import rgb

if TYPE_CHECKING:
    from ..config import DemoOptions

# Five of the tiny model's own colours, so its VAE can draw them; the style maps brightness onto them.
PALETTE_NAME = "sunset"
PALETTE = np.array([rgb(c) for c in ("black", "purple", "red", "orange", "yellow")], dtype=np.float32)
HELD_OUT_PROMPTS = (
    "a green triangle on the left, white background",
    "a blue circle on the right, yellow background",
    "a white square at the top, green background",
    "a red circle at the bottom, blue background",
)
HELD_OUT_SEEDS = (11, 12, 13, 14)
MEASURE_SEED = 1000            # scene i of the measure set is drawn with seed MEASURE_SEED + i
CONTENT_GOAL = 0.9             # a copy keeping less of the prompt's content than this has over-trained
SHIFT_GOAL = 0.4
# What each recipe sets; the model, data, steps, batch size and seeds are the same for both. "webui" is what its Create
# and Train tabs default to (A1111 v1.10.1): linear activation, Normal init, learning rate 0.00001, the
# style_filewords template, images stretched to the training size, no flips.
RECIPES: Dict[str, Dict[str, Any]] = {
    "hypernet": {"activation": "relu", "weight_init": "Normal", "learning_rate": "2.5e-4", "template": "none",
                 "resize": "crop", "flip": True},
    "webui": {"activation": "linear", "weight_init": "Normal", "learning_rate": "0.00001",
              "template": "style_filewords", "resize": "stretch", "flip": False},
}


def stylize(img: Image.Image, palette: np.ndarray = PALETTE) -> Image.Image:
    """Recolour an image into the palette by brightness: darkest fifth -> first colour, and so on."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    order = np.argsort(palette @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    index = np.clip((luma * len(palette)).astype(int), 0, len(palette) - 1)
    return Image.fromarray(palette[order][index].astype(np.uint8))


def palette_distance(img: Image.Image, palette: np.ndarray = PALETTE) -> float:
    """Mean Euclidean RGB distance (0-255 scale) of each pixel to its nearest palette colour."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32).reshape(-1, 1, 3)
    return float(np.sqrt(((rgb - palette[None]) ** 2).sum(-1)).min(axis=1).mean())


def dataset_palette(folder: Path, colours: int = 8) -> np.ndarray:
    """The `colours` most representative colours of a folder's images (median cut over all their pixels)."""
    from ..train.data import IMAGE_EXTENSIONS
    tiles = []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            try:
                tiles.append(Image.open(path).convert("RGB").resize((32, 32)))
            except (OSError, ValueError):  # the trainer already warned about unreadable files
                continue
    if not tiles:
        return PALETTE
    sheet = Image.new("RGB", (32 * len(tiles), 32))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (32 * i, 0))
    flat = (sheet.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).getpalette() or [])[: 3 * colours]
    return np.array(flat, dtype=np.float32).reshape(-1, 3)


def make_style_dataset(folder: Path, count: int = 48, seed: int = 0) -> Path:
    """Write `count` palette-styled tiny scenes with caption files; returns the folder."""
    from .scenes import scene
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = 0
    while written < count:
        img, caption = scene(rng)
        if caption in HELD_OUT_PROMPTS:  # the comparison prompts stay unseen
            continue
        i, written = written, written + 1
        stylize(img).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(caption)
    return folder


# ---------------------------------------------------------------------------------------------- the measure
def measure_scenes(count: int, exclude: Iterable[str] = ()) -> list:
    """`count` one-shape scenes whose captions are distinct and not in `exclude` (the training captions)."""
    from .scenes import random_scene
    rng, seen = random.Random(MEASURE_SEED), set(exclude)
    scenes: list = []
    while len(scenes) < count:
        scene = random_scene(rng)
        if scene.caption() not in seen:
            seen.add(scene.caption())
            scenes.append(scene)
    return scenes


def content_read_back(images: Sequence[Image.Image], scenes: Sequence) -> float:
    """The share of asked-for facts (each scene's shape kind and position) that scenes.py reads back."""
    from .scenes import describe
    hits = 0
    for img, scene in zip(images, scenes):
        seen, asked = describe(img), scene.shapes[0]
        hits += (seen["kind"] == asked.kind) + (seen["position"] == asked.position)
    return hits / (2 * len(scenes))


def generate_batch(pipe, prompts: Sequence[str], steps: int = 20, cfg: float = 5.0) -> List[Image.Image]:
    """Image i of `prompts` at seed MEASURE_SEED + i, in one batched call."""
    generators = [torch.Generator().manual_seed(MEASURE_SEED + i) for i in range(len(prompts))]
    return pipe(list(prompts), num_inference_steps=steps, guidance_scale=cfg, generator=generators, width=64,
                height=64).images


@dataclass
class Measured:
    """What one strength of one file does to the measure set."""

    distance: float   # mean distance to the palette
    content: float    # share of asked-for facts read back


def measure(pipe, scenes: Sequence, palette: np.ndarray, hn=None, strength: float = 1.0) -> Measured:
    """Palette distance and content read back over the scenes, with `hn` at `strength` (None: without)."""
    prompts = [s.caption() for s in scenes]
    if hn is None:
        images = generate_batch(pipe, prompts)
    else:
        with attach(pipe.unet, [(hn, strength)], warn=False):
            images = generate_batch(pipe, prompts)
    return Measured(float(np.mean([palette_distance(i, palette) for i in images])), content_read_back(images, scenes))


def trade_off(base: Measured, styled: Measured) -> dict:
    """Style shift and content kept of `styled` relative to `base`."""
    return {"shift": 1.0 - styled.distance / base.distance,
            "content_kept": styled.content / base.content if base.content else 0.0}


def best_step(steps: Sequence[dict]) -> int:
    """The copy with the largest shift among those keeping CONTENT_GOAL of the content, else the one keeping most."""
    from ..train.probe import suggest
    index = suggest(steps, CONTENT_GOAL, "content_kept", "shift")
    return 0 if index is None else steps[index]["step"]


@dataclass
class DemoResult:
    """Where the demo wrote things and what it measured."""

    out_dir: str
    pt: str
    safetensors: str
    grid: str
    loss_csv: str
    loss_png: str
    base_distance: float
    styled_distance: float
    half_distance: float
    seconds: float
    recipe: str = "hypernet"
    content_kept: float = 0.0       # of the final file at strength 1.0, relative to without
    best_step: int = 0
    steps: Optional[list] = None    # [{"step", "shift", "content_kept", "val_loss", "prompt_kept", "style"}] per copy
    measure_prompts: int = 0
    train_seconds: float = 0.0      # the training loop, validation included
    validation_seconds: float = 0.0
    dtype: str = "fp32"             # the frozen model's precision while training
    val_loss: Optional[float] = None   # the final validation loss
    overflow_steps: int = 0         # steps float16 loss scaling skipped
    suggested_step: Optional[int] = None   # the trainer's suggested copy (from prompt kept and style strength)
    probe_seconds: float = 0.0      # time the trainer spent measuring prompt kept and style strength
    probe_prompts: int = 0

    @property
    def shift(self) -> float:
        """Relative drop of the palette distance at strength 1.0 (0.4 = 40% closer to the palette)."""
        return 1.0 - self.styled_distance / self.base_distance


def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, cfg: float) -> List[Image.Image]:
    """One image per (prompt, seed), deterministic."""
    out = []
    for prompt, seed in zip(prompts, seeds):
        gen = torch.Generator().manual_seed(seed)
        out.append(pipe(prompt, num_inference_steps=steps, guidance_scale=cfg, generator=gen, width=64,
                        height=64).images[0])
    return out


def compare(pipe, hn, prompts=HELD_OUT_PROMPTS, seeds=HELD_OUT_SEEDS, steps: int = 20, cfg: float = 5.0,
            strengths=(0.0, 0.5, 1.0), palette: np.ndarray = PALETTE) -> dict:
    """Images and mean palette distances for each strength (0.0 generated with no hooks at all)."""
    results = {}
    for strength in strengths:
        if strength == 0.0:
            images = generate(pipe, prompts, seeds, steps, cfg)
        else:
            with attach(pipe.unet, [(hn, strength)], warn=False):
                images = generate(pipe, prompts, seeds, steps, cfg)
        results[strength] = (images, float(np.mean([palette_distance(i, palette) for i in images])))
    return results


def _train(host, o, data_dir: Path, name: str, out: Path, show_progress: bool, probes: Path):
    """Train with the recipe's settings, a copy saved o.copies times along the run, measuring prompt kept on the
    `probes` file's prompts."""
    from ..config import CreateOptions, TrainOptions
    from ..train.trainer import train
    recipe = RECIPES[o.recipe]
    options = TrainOptions(data=str(data_dir), width=64, height=64, steps=o.steps, batch_size=o.batch_size,
                           learning_rate=o.learning_rate or recipe["learning_rate"], template=recipe["template"],
                           resize=recipe["resize"], flip=recipe["flip"], log_dir=str(out / "logs"),
                           output=str(out / f"{name}.pt"), save_every=max(1, o.steps // o.copies), preview_every=0,
                           log_every=10, validation_every=max(1, o.steps // o.copies), seed=o.seed, overwrite=True,
                           probe_prompts_file=str(probes))
    create = CreateOptions(name=name, dims=host.model_dims(), activation=recipe["activation"],
                           weight_init=recipe["weight_init"])
    return train(host, options, create=create, show_progress=show_progress)


def _measure_copies(pipe, result, scenes, palette) -> dict:
    """step -> Measured for each saved copy."""
    measured = {}
    for path in result.saved:
        hn = load(path)
        measured[hn.step] = measure(pipe, scenes, palette, hn)
    return measured


def _write_probe_prompts(out: Path, scenes: Sequence) -> Path:
    """The trainer's probe prompts file: unseen prompts of the measure set, which the training never sees."""
    path = out / "probe-prompts.txt"
    atomic_write(path, "".join(f"{s.caption()}\n" for s in scenes).encode())
    return path


def _trainer_figures(result, step: int) -> dict:
    """What the trainer measured at a step: validation loss, prompt kept and style strength (None if not)."""
    val = dict(result.val_losses)
    probes = {s: (kept, style) for s, kept, style in result.probes}
    kept, style = probes.get(step, (None, None))
    return {"val_loss": val.get(step), "prompt_kept": kept, "style": style}


def run(options: Optional["DemoOptions"] = None, show_progress: bool = True) -> DemoResult:
    """The whole demo: model, dataset, training, files, grid, and both figures for every saved copy."""
    from ..config import DTYPES, DemoOptions
    from ..hosts.diffusers import DiffusersHost
    from .model import load_pipeline
    o = options or DemoOptions()
    started = time.perf_counter()
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline()
    host = DiffusersHost(pipe, dtype=DTYPES[o.dtype])
    data_dir = Path(o.data) if o.data else make_style_dataset(out / "style-data", seed=o.seed)
    name = PALETTE_NAME if not o.data else (Path(o.data).resolve().name or "mystyle")
    palette = dataset_palette(data_dir) if o.data else PALETTE
    captions = {p.read_text() for p in data_dir.glob("*.txt")}
    scenes = measure_scenes(o.measure_prompts, exclude=captions)
    probes = _write_probe_prompts(out, scenes[:o.probe_prompts])
    result = _train(host, o, data_dir, name, out, show_progress, probes)
    host.to(host.device, torch.float32)  # every measure samples the same float32 model
    hn = load(result.output)
    st_path = hn.save(out / f"{name}.safetensors", overwrite=True)
    base = measure(pipe, scenes, palette)
    copies = _measure_copies(pipe, result, scenes, palette)
    rows = [{"step": step, **trade_off(base, m), **_trainer_figures(result, step)} for step, m in copies.items()]
    final = copies.get(hn.step) or measure(pipe, scenes, palette, hn)
    half = measure(pipe, scenes, palette, hn, 0.5)
    shown = compare(pipe, hn, palette=palette)
    picture = labelled_grid([[shown[s][0][i] for s in (0.0, 0.5, 1.0)] for i in range(len(HELD_OUT_PROMPTS))],
                            ["without", "strength 0.5", "strength 1.0"], HELD_OUT_PROMPTS)
    grid_path = out / "before_after.png"
    write_png(grid_path, picture)
    run_dir = Path(result.run_dir)
    demo = DemoResult(str(out), result.output, st_path, str(grid_path), str(run_dir / "hypernetwork_loss.csv"),
                      str(run_dir / "loss.png"), base.distance, final.distance, half.distance,
                      time.perf_counter() - started, o.recipe, trade_off(base, final)["content_kept"],
                      best_step(rows) if rows else hn.step, rows, len(scenes), result.seconds,
                      result.validation_seconds, o.dtype,
                      result.val_losses[-1][1] if result.val_losses else None, result.overflow_steps,
                      result.suggested_step, result.probe_seconds, min(o.probe_prompts, len(scenes)))
    atomic_write(out / "demo.json", json.dumps({**demo.__dict__, "shift": demo.shift}, indent=2).encode())
    return demo
