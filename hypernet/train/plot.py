"""A loss curve drawn with Pillow alone, so training needs no plotting library."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

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


def columns(points: Sequence[Tuple[int, float]]) -> Optional[Tuple[List[int], List[float]]]:
    """(steps, values) of (step, value) points, as render_loss takes the validation loss; None for no points."""
    if not points:
        return None
    steps, values = zip(*points)
    return list(steps), list(values)


def draw_loss(steps: Sequence[int], losses: Sequence[float], path, title: str = "loss",
              size=(800, 400), validation: Optional[Tuple[Sequence[int], Sequence[float]]] = None,
              probes: Sequence[tuple] = (), suggested: Optional[int] = None) -> None:
    """Write render_loss's picture to `path` as a PNG, atomically."""
    write_png(path, render_loss(steps, losses, title, size, validation, probes, suggested))


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG."""
    import io
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_png(path, image: Image.Image) -> None:
    """Write the image to `path` as a PNG, atomically (the old file or the whole new one, never half)."""
    from ..fileformat.files import atomic_write
    atomic_write(path, png_bytes(image))


VALIDATION_COLOUR = (220, 110, 20)
KEPT_COLOUR = (30, 150, 60)     # prompt kept
STYLE_COLOUR = (150, 50, 170)   # style strength


def render_loss(steps: Sequence[int], losses: Sequence[float], title: str = "loss", size=(800, 400),
                validation: Optional[Tuple[Sequence[int], Sequence[float]]] = None,
                probes: Sequence[tuple] = (), suggested: Optional[int] = None) -> Image.Image:
    """Raw losses (light) and their moving average (dark) against steps, with the validation loss (orange, dots)
    when given as (steps, values), prompt kept (green) and style strength (purple) on their own scale (right)
    when given as (step, kept, style) tuples, and the suggested copy's step as a green vertical line, as an image."""
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, w - 20, 30, h - 40
    d.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    d.text((left, 8), title, fill=(0, 0, 0))
    val_steps, val_values = validation if validation and validation[0] else ((), ())
    if steps:
        lo, hi = min(list(losses) + list(val_values)), max(list(losses) + list(val_values))
        hi = hi if hi > lo else lo + 1e-12
        measured = list(val_steps) + [p[0] for p in probes]  # measures start at step 0, before the first loss
        s0 = min([steps[0]] + measured)
        s1 = max([steps[-1]] + measured)
        s1 = s1 if s1 > s0 else s0 + 1

        def xy(s, v):
            return (left + (s - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))

        for series, colour in ((list(losses), (170, 190, 230)),
                               (moving_average(list(losses), max(1, len(losses) // 20)), (20, 60, 160))):
            points = [xy(s, v) for s, v in zip(steps, series)]
            if len(points) > 1:
                d.line(points, fill=colour, width=2)
            else:
                d.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        _draw_validation(d, [xy(s, v) for s, v in zip(val_steps, val_values)])
        if val_values:
            d.text((right - 260, 8), f"validation (orange): {val_values[-1]:.5g} at step {val_steps[-1]}",
                   fill=VALIDATION_COLOUR)
        if probes:
            _draw_probes(d, probes, (s0, s1), (left, right, top, bottom))
        if suggested is not None and s0 <= suggested <= s1:
            x = left + (suggested - s0) / (s1 - s0) * (right - left)
            d.line([(x, top), (x, bottom)], fill=KEPT_COLOUR, width=1)
            # a line below the axis labels: at the last step it would run over the last step's label
            d.text((min(x + 4, right - 150), bottom + 22), f"suggested copy: step {suggested}", fill=KEPT_COLOUR)
        d.text((4, top), f"{hi:.4g}", fill=(0, 0, 0))
        d.text((4, bottom - 10), f"{lo:.4g}", fill=(0, 0, 0))
        d.text((left, bottom + 8), str(s0), fill=(0, 0, 0))
        d.text((right - 40, bottom + 8), str(s1), fill=(0, 0, 0))
    return img


def _draw_validation(d: ImageDraw.ImageDraw, points: list) -> None:
    """The validation curve: a line through dots, so single evaluations still show."""
    if len(points) > 1:
        d.line(points, fill=VALIDATION_COLOUR, width=2)
    for x, y in points:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VALIDATION_COLOUR)


def _draw_probes(d: ImageDraw.ImageDraw, probes: Sequence[tuple], span: tuple, box: tuple) -> None:
    """Prompt kept and style strength against steps on a right-hand scale from 0 to the largest (at least 1)."""
    (s0, s1), (left, right, top, bottom) = span, box
    top_value = max([1.0] + [max(k, st) for _, k, st in probes])

    def xy(s, v):
        return (left + (s - s0) / (s1 - s0) * (right - left), bottom - v / top_value * (bottom - top))

    for index, colour in ((1, KEPT_COLOUR), (2, STYLE_COLOUR)):
        points = [xy(p[0], p[index]) for p in probes]
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        for x, y in points:
            d.rectangle([x - 3, y - 3, x + 3, y + 3], fill=colour)
    step, kept, style = probes[-1]
    d.text((right + 2, top), f"{top_value:.2g}", fill=KEPT_COLOUR)
    d.text((left + 8, bottom - 28), f"prompt kept (green): {kept:.2f}, style (purple): {style:.2f} at step {step}",
           fill=KEPT_COLOUR)
