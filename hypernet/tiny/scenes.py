"""Simple captioned scenes for the built-in tiny model: one coloured shape at a named position on a plain background.

Deterministic for a given ``random.Random``. Captions name the shape, its colour, its position and the background
colour, e.g. "a red circle on the left, blue background"; the tiny model is trained on these (``python -m
hypernet.tiny build``) and the demo reuses them. The vocabulary below is also what the tiny model's tokenizer keeps
as whole-word tokens.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4  # shapes are drawn 4x larger and scaled down, so edges are anti-aliased

PALETTE: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 125, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS: Tuple[str, ...] = tuple(PALETTE)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
# position name -> (phrase in the caption, centre as a fraction of the image)
POSITIONS: Dict[str, Tuple[str, Tuple[float, float]]] = {
    "left": ("on the left", (0.27, 0.5)),
    "right": ("on the right", (0.73, 0.5)),
    "top": ("at the top", (0.5, 0.27)),
    "bottom": ("at the bottom", (0.5, 0.73)),
    "center": ("in the center", (0.5, 0.5)),
}
# Every word a caption can contain (the tokenizer makes each one a single token); a few extra prompt words too.
WORDS: Tuple[str, ...] = tuple(dict.fromkeys(
    ["a", "an", "and", "on", "the", "at", "in", "of", "with", "background", "shape", "big", "small", "middle"]
    + list(COLOURS) + list(SHAPES) + list(POSITIONS)
    + [w for phrase, _ in POSITIONS.values() for w in phrase.split()]))


def rgb(name: str) -> Tuple[int, int, int]:
    """The RGB of a palette colour name ('red' -> (220, 40, 40))."""
    return PALETTE[name]


@dataclass
class Shape:
    """One drawn shape: colour and kind by name, position by name, plus the exact centre/radius in pixels."""
    colour: str
    kind: str
    position: str
    center: Tuple[float, float]
    radius: float

    def phrase(self, colour: bool = True, position: bool = True) -> str:
        words = ["a"] + ([self.colour] if colour else []) + [self.kind]
        if position:
            words.append(POSITIONS[self.position][0])
        return " ".join(words)


@dataclass
class Scene:
    """A background colour and its shapes; ``render()`` draws it and ``caption()`` describes it."""
    background: str
    shapes: List[Shape] = field(default_factory=list)
    size: int = SIZE

    def caption(self, colour: bool = True, position: bool = True, background: bool = True) -> str:
        """The caption; leaving parts out gives the looser prompts the model is also trained on."""
        text = " and ".join(s.phrase(colour, position) for s in self.shapes)
        return f"{text}, {self.background} background" if background else text

    def render(self) -> Image.Image:
        scale = SUPERSAMPLE * self.size / SIZE
        big = Image.new("RGB", (self.size * SUPERSAMPLE,) * 2, rgb(self.background))
        draw = ImageDraw.Draw(big)
        for s in self.shapes:
            cx, cy, r = s.center[0] * scale, s.center[1] * scale, s.radius * scale
            fill = rgb(s.colour)
            if s.kind == "circle":
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
            elif s.kind == "square":
                h = r * 0.85
                draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
            else:  # triangle, pointing up, centred on its bounding box
                draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
        return big.resize((self.size, self.size), Image.Resampling.BOX)


def random_scene(rng: random.Random, shapes: int = 1, colours: Sequence[str] = COLOURS,
                 kinds: Sequence[str] = SHAPES, positions: Sequence[str] = tuple(POSITIONS),
                 background: Optional[str] = None, size: int = SIZE) -> Scene:
    """A random scene description: `shapes` shapes (at distinct positions), colours differing from the background."""
    bg = background or rng.choice(list(COLOURS))
    places = rng.sample(list(positions), shapes)
    out = []
    for place in places:
        colour = rng.choice([c for c in colours if c != bg])
        kind = rng.choice(list(kinds))
        fx, fy = POSITIONS[place][1]
        radius = rng.uniform(13.0, 17.0)
        jitter = 2.5
        out.append(Shape(colour, kind, place, (fx * SIZE + rng.uniform(-jitter, jitter),
                                               fy * SIZE + rng.uniform(-jitter, jitter)), radius))
    return Scene(bg, out, size)


def scene(rng: random.Random, shapes: int = 1) -> Tuple[Image.Image, str]:
    """A random 64x64 RGB scene and its full caption, e.g. "a red circle on the left, blue background"."""
    s = random_scene(rng, shapes=shapes)
    return s.render(), s.caption()


def prompt(colour: str, kind: str, position: Optional[str] = None, background: Optional[str] = None) -> str:
    """A caption in the training format from names: prompt('red', 'circle', 'left', 'blue')."""
    text = f"a {colour} {kind}"
    if position:
        text += " " + POSITIONS[position][0]
    return f"{text}, {background} background" if background else text


def nearest_colour(value, exclude: Sequence[str] = ()) -> str:
    """The palette name closest (Euclidean RGB) to an RGB value."""
    names = [n for n in COLOURS if n not in exclude]
    return min(names, key=lambda n: sum((float(a) - b) ** 2 for a, b in zip(value, PALETTE[n])))


def describe(img: Image.Image, threshold: float = 50.0) -> Dict[str, Optional[str]]:
    """Read a scene back from pixels: background colour, shape colour, position and kind (None where unclear).

    The background is the median border colour; the shape is every pixel farther than `threshold` (RGB distance,
    0-255 scale) from it; its colour is their median, its position the nearest named centre to their centroid, its
    kind from how much of its bounding box it fills (square ~1, circle ~0.79, triangle ~0.5). Used to measure how
    well the tiny model follows prompts; for one-shape scenes.
    """
    import numpy as np
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    h, w = a.shape[:2]
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3),
                             a[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)
    mask = np.sqrt(((a - bg_rgb) ** 2).sum(-1)) > threshold
    out: Dict[str, Optional[str]] = {"background": background, "colour": None, "position": None, "kind": None}
    if mask.sum() < 0.02 * h * w:
        return out
    out["colour"] = nearest_colour(np.median(a[mask], axis=0), exclude=[background])
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / w, ys.mean() / h
    out["position"] = min(POSITIONS, key=lambda p: (POSITIONS[p][1][0] - cx) ** 2 + (POSITIONS[p][1][1] - cy) ** 2)
    rows, cols = np.nonzero(mask.sum(1) >= 2)[0], np.nonzero(mask.sum(0) >= 2)[0]
    if len(rows) and len(cols):
        fill = mask.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))
        out["kind"] = "square" if fill > 0.9 else ("circle" if fill > 0.64 else "triangle")
    return out
