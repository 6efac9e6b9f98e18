"""Prompt kept and style strength: what a hypernetwork does to the UNet's predictions, measured without images.

Both figures compare the UNet's predictions with the hypernetwork against the same predictions at strength 0 (the
model without it), at fixed noisy latents and timesteps drawn once from the run's seed, so they are the same at every
step and after a resume, and they move only when the hypernetwork does.

- prompt kept: how much the prompts still steer the prediction where they steer it. For each probe prompt p
  (prompts unlike the training captions) the prompt's direction is eps(p) - eps(""), the direction classifier-free
  guidance amplifies. Prompt kept is the cosine between those directions with the hypernetwork and without it, all
  probe prompts and draws taken as one vector: 1.0 = every prompt still pushes where it pushed without the
  hypernetwork, toward 0 = the prompts push elsewhere or nowhere (every prompt gives the picture "" gives). The size
  of the directions is left out on purpose: guidance multiplies it, and on the demo a copy whose directions had
  shrunk to 0.4 of their size still drew 0.9 of what the prompts asked for (benchmarks/prompt_kept.py).
- style strength: how far the hypernetwork moves the picture on the training captions (the validation draws): the
  change of the clean latent each prediction implies, over the size of that latent without it (0 = does nothing).
  The implied latent, not the raw noise prediction: a style is what the picture becomes, and on the demo this
  ranked copies by palette shift better (0.91 against 0.78 over 30 copies, benchmarks/prompt_kept.py).

At strength 0 the predictions are bit for bit those of the model without the hypernetwork, so the figures are exactly
1.0 and 0.0 there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .objective import noisy_latents

FIELD = "probe_prompts_file"
# Varied subjects, media and compositions, none of them a style: what a style should leave the prompt free to ask.
# Sixteen: on the demo, eight probe prompts ranked copies by content kept far worse than sixteen.
SHIPPED_PROMPTS = (
    "a red sports car parked on a city street at night",
    "a portrait of an old fisherman with a grey beard",
    "a bowl of fruit on a wooden kitchen table",
    "a snowy mountain range under a clear blue sky",
    "two cats sleeping on a sofa",
    "a lighthouse on a rocky coast during a storm",
    "an astronaut riding a horse in the desert",
    "a crowded market square with colourful stalls",
    "a close-up photo of a dew-covered green leaf",
    "a medieval castle on a hill at sunset",
    "a child flying a kite on a beach",
    "an empty white room with a single wooden chair",
    "a steam locomotive crossing a stone bridge",
    "a plate of sushi seen from above",
    "a black and white photo of a jazz band on stage",
    "a small boat on a calm lake in the fog",
)
# Mixed into the run's seed so the probe noises repeat neither the training draws nor the validation draws.
_SALT = 0x9_0B3_5EED
# The suggested copy keeps at least this share of the prompt (TrainOptions.prompt_kept_goal's default).
GOAL = 0.9
# Probe timesteps lie in the noisiest 40% of the trained range: sampling starts there, and there the prompt decides
# what is drawn and where; later steps refine details, which a style may own. On the demo this ranked copies by
# content kept far better than timesteps over the whole range (benchmarks/prompt_kept.py).
LAYOUT_SHARE = 0.4


def read_probe_prompts(path) -> List[str]:
    """The probe prompts of a text file, one per line (# comments); ConfigError when missing, unreadable or empty."""
    from .sample_prompts import prompt_lines
    return [line for _, line in prompt_lines(path, FIELD)]


@dataclass(frozen=True)
class ProbeDraws:
    """Fixed noisy latents and their timesteps, where every probe prompt is measured."""

    x_t: torch.Tensor    # [K, C, h, w]
    t: torch.Tensor      # [K]


def make_probe_draws(shape: Sequence[int], count: int, seed: int, low: int, high: int,
                     alphas_cumprod: torch.Tensor) -> ProbeDraws:
    """`count` latents of `shape` noised from an empty (zero) latent at timesteps spread over the noisiest
    LAYOUT_SHARE of [low, high), as sampling starts from noise that no image has shaped yet; all randomness from
    `seed`."""
    from .validation import spread_timesteps
    gen = torch.Generator().manual_seed((seed ^ _SALT) & (2 ** 63 - 1))
    noise = torch.randn((count,) + tuple(shape), generator=gen)
    t = torch.tensor(spread_timesteps(count, high - max(1, round(LAYOUT_SHARE * (high - low))), high))
    return ProbeDraws(noisy_latents(torch.zeros_like(noise), noise, alphas_cumprod.float().cpu()[t]), t)


def repeat_conditioning(cond, times: int):
    """Each prompt's conditioning repeated `times` times in a row (a tensor, or SDXL's dict of tensors)."""
    if isinstance(cond, dict):
        return {k: v.repeat_interleave(times, dim=0) for k, v in cond.items()}
    return cond.repeat_interleave(times, dim=0)


def probe_predictions(predict: Callable, draws: ProbeDraws, cond, prompts: int, chunk: int) -> torch.Tensor:
    """predict(x_t, t, cond) for every (prompt, draw), prompt-major, in float64: [prompts * K, C, h, w]; `cond`
    holds one conditioning per prompt."""
    k = len(draws.t)
    x_t, t = draws.x_t.repeat(prompts, 1, 1, 1), draws.t.repeat(prompts)
    cond = repeat_conditioning(cond, k)
    out = []
    for start in range(0, len(t), chunk):
        part = slice(start, start + chunk)
        piece = {key: v[part] for key, v in cond.items()} if isinstance(cond, dict) else cond[part]
        out.append(predict(x_t[part], t[part], piece).detach().cpu().double())  # float64 where every device has it
    return torch.cat(out)


def prompt_kept(styled: torch.Tensor, base: torch.Tensor, draws: int) -> float:
    """Cosine between the prompts' directions eps(p) - eps("") with the hypernetwork and without it, over every probe
    prompt and draw at once; the predictions are prompt-major with the empty prompt last."""
    if torch.equal(styled, base):
        return 1.0  # exactly, where rounding in the cosine could say 0.9999999
    def directions(pred):
        return (pred[:-draws] - pred[-draws:].repeat(len(pred) // draws - 1, 1, 1, 1)).flatten()
    kept, asked = directions(styled), directions(base)
    size = kept.norm() * asked.norm()
    return float(kept @ asked / size) if size > 0 else 0.0


def style_strength(styled: torch.Tensor, base: torch.Tensor) -> float:
    """|implied latent with the hypernetwork - without| over |without|, over every draw."""
    size = base.norm()
    return float((styled - base).norm() / size) if size > 0 else 0.0


def suggest(copies: Sequence[dict], goal: float = GOAL, kept: str = "prompt_kept", style: str = "style") -> Optional[int]:
    """Index of the suggested copy: the strongest style among copies keeping at least `goal` of the prompt, else the
    copy keeping most; None when no copy was measured."""
    measured = [i for i, c in enumerate(copies) if c.get(kept) is not None and not math.isnan(c[kept])]
    if not measured:
        return None
    meeting = [i for i in measured if copies[i][kept] >= goal]
    if meeting:
        return max(meeting, key=lambda i: (copies[i][style], copies[i][kept]))
    return max(measured, key=lambda i: (copies[i][kept], copies[i][style]))
