"""A loss curve drawn with Pillow alone, so training needs no plotting library."""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw


def moving_average(values: Sequence[float], window: int) -> list:
    """Trailing mean over up to `window` values at each position."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_loss(steps: Sequence[int], losses: Sequence[float], path, title: str = "loss",
              size=(800, 400)) -> None:
    """Write render_loss's picture to `path` as a PNG, atomically."""
    import io

    from .files import atomic_write
    buf = io.BytesIO()
    render_loss(steps, losses, title, size).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def render_loss(steps: Sequence[int], losses: Sequence[float], title: str = "loss", size=(800, 400)) -> Image.Image:
    """Raw losses (light) and their moving average (dark) against steps, as an image."""
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, w - 20, 30, h - 40
    d.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    d.text((left, 8), title, fill=(0, 0, 0))
    if steps:
        lo, hi = min(losses), max(losses)
        hi = hi if hi > lo else lo + 1e-12
        s0, s1 = steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1

        def xy(s, v):
            return (left + (s - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))

        for series, colour in ((list(losses), (170, 190, 230)),
                               (moving_average(list(losses), max(1, len(losses) // 20)), (20, 60, 160))):
            points = [xy(s, v) for s, v in zip(steps, series)]
            if len(points) > 1:
                d.line(points, fill=colour, width=2)
            else:
                d.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        d.text((4, top), f"{hi:.4g}", fill=(0, 0, 0))
        d.text((4, bottom - 10), f"{lo:.4g}", fill=(0, 0, 0))
        d.text((left, bottom + 8), str(s0), fill=(0, 0, 0))
        d.text((right - 40, bottom + 8), str(steps[-1]), fill=(0, 0, 0))
    return img
