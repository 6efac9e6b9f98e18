"""python -m hypernet demo: create, train and show a style hypernetwork on the built-in tiny model, on a CPU.

The bundled "style" is a palette: every training image is recoloured by brightness into five warm colours. The
measured style shift is the mean distance of generated pixels to the nearest palette colour, without the
hypernetwork and with it, on prompts that are not in the training set. With your own folder, the palette is the
eight colours that best summarise its images.
"""
from __future__ import annotations

import io
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .files import atomic_write
from .tiny_scenes import rgb

if TYPE_CHECKING:
    from .config import DemoOptions

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
    from .data import IMAGE_EXTENSIONS
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
    flat = sheet.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).getpalette()[: 3 * colours]
    return np.array(flat, dtype=np.float32).reshape(-1, 3)


def make_style_dataset(folder: Path, count: int = 48, seed: int = 0) -> Path:
    """Write `count` palette-styled tiny scenes with caption files; returns the folder."""
    from .tiny_scenes import scene
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


def _label(draw: ImageDraw.ImageDraw, xy, text: str) -> None:
    draw.text(xy, text, fill=(20, 20, 20))


def grid(rows: Sequence[Sequence[Image.Image]], column_titles: Sequence[str], row_titles: Sequence[str],
         cell: int = 128) -> Image.Image:
    """Images in a labelled grid, each scaled to `cell` pixels with nearest-neighbour (tiny outputs stay crisp)."""
    left, top = 290, 24
    out = Image.new("RGB", (left + cell * len(column_titles), top + cell * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for c, title in enumerate(column_titles):
        _label(draw, (left + c * cell + 4, 6), title)
    for r, (images, title) in enumerate(zip(rows, row_titles)):
        _label(draw, (4, top + r * cell + cell // 2 - 6), title)
        for c, img in enumerate(images):
            out.paste(img.resize((cell, cell), Image.NEAREST), (left + c * cell, top + r * cell))
    return out


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
    import hypernet
    results = {}
    for strength in strengths:
        if strength == 0.0:
            images = generate(pipe, prompts, seeds, steps, cfg)
        else:
            with hypernet.attach(pipe.unet, [(hn, strength)], warn=False):
                images = generate(pipe, prompts, seeds, steps, cfg)
        results[strength] = (images, float(np.mean([palette_distance(i, palette) for i in images])))
    return results


def run(options: Optional["DemoOptions"] = None, show_progress: bool = True) -> DemoResult:
    """The whole demo: model, dataset, training, files, grid and the measured shift."""
    import hypernet
    from .config import CreateOptions, DemoOptions, TrainOptions
    from .hosts.diffusers import DiffusersHost
    from .tiny import load_pipeline
    from .train import train
    o = options or DemoOptions()
    started = time.perf_counter()
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline()
    host = DiffusersHost(pipe)
    data_dir = Path(o.data) if o.data else make_style_dataset(out / "style-data", seed=o.seed)
    name = PALETTE_NAME if not o.data else (Path(o.data).resolve().name or "mystyle")
    train_options = TrainOptions(data=str(data_dir), width=64, height=64, steps=o.steps,
                                 learning_rate=o.learning_rate, batch_size=o.batch_size, template="none",
                                 log_dir=str(out / "logs"), output=str(out / f"{name}.pt"),
                                 save_every=max(1, o.steps // 2), preview_every=0, log_every=10, seed=o.seed,
                                 flip=True)
    result = train(host, train_options, create=CreateOptions(name=name, dims=host.model_dims(), activation="relu"),
                   show_progress=show_progress)
    hn = hypernet.load(result.output)
    st_path = hn.save(out / f"{name}.safetensors")
    measured = compare(pipe, hn, palette=dataset_palette(data_dir) if o.data else PALETTE)
    picture = grid([[measured[s][0][i] for s in (0.0, 0.5, 1.0)] for i in range(len(HELD_OUT_PROMPTS))],
                   ["without", "strength 0.5", "strength 1.0"], HELD_OUT_PROMPTS)
    grid_path = out / "before_after.png"
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    atomic_write(grid_path, buf.getvalue())
    run_dir = Path(result.run_dir)
    demo = DemoResult(str(out), result.output, st_path, str(grid_path), str(run_dir / "hypernetwork_loss.csv"),
                      str(run_dir / "loss.png"), measured[0.0][1], measured[1.0][1], measured[0.5][1],
                      time.perf_counter() - started)
    atomic_write(out / "demo.json", json.dumps({**demo.__dict__, "shift": demo.shift}, indent=2).encode())
    return demo
