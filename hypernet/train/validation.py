"""Validation loss: a fixed set of (latent, prompt, noise, timestep) draws, scored without gradients.

The training loss is noisy because every step draws new images, noise and timesteps. The validation set draws them
once, from the run's seed, so the same draws are scored at every evaluation and after a resume, and the curve
moves only when the hypernetwork does. Timesteps are spread evenly over the trained range instead of drawn, which
removes most of the variance a handful of draws would otherwise have.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .objective import sample_noise

# Mixed into the run's seed so that the validation draws never repeat the training draws of step 0.
_SALT = 0x5EED_0F_7A1


@dataclass(frozen=True)
class Draw:
    """One fixed validation example."""

    latent: torch.Tensor               # [C, h, w]
    prompt: str
    noise: torch.Tensor                # [C, h, w]
    timestep: int
    weight: Optional[torch.Tensor]     # [1, h, w] alpha weight, or None
    source: str                        # the image file it came from


def spread_timesteps(count: int, low: int, high: int) -> List[int]:
    """`count` timesteps at the centres of `count` equal slices of [low, high)."""
    return [low + int((i + 0.5) * (high - low) / count) for i in range(count)]


def pick_cycle(n: int, count: int, rng: random.Random) -> List[int]:
    """`count` indices into n items: a shuffled pass over all of them, repeated, so none repeats before all are used."""
    order: List[int] = []
    while len(order) < count:
        block = list(range(n))
        rng.shuffle(block)
        order.extend(block)
    return order[:count]


def make_draws(examples: Sequence[Tuple[torch.Tensor, str, Optional[torch.Tensor], str]], count: int, seed: int,
               low: int, high: int, noise_offset: float) -> List[Draw]:
    """`count` fixed draws over (latent, prompt, weight, source) examples, all randomness from `seed`."""
    rng = random.Random(seed ^ _SALT)
    picks = pick_cycle(len(examples), count, rng)
    timesteps = spread_timesteps(count, low, high)
    rng.shuffle(timesteps)  # which image meets which timestep is drawn, the set of timesteps is not
    gen = torch.Generator().manual_seed((seed ^ _SALT) & (2 ** 63 - 1))
    draws = []
    for index, t in zip(picks, timesteps):
        latent, prompt, weight, source = examples[index]
        noise = sample_noise((1,) + tuple(latent.shape), noise_offset, gen)[0].to(latent.device)
        draws.append(Draw(latent, prompt, noise, t, weight, source))
    return draws


def batches(draws: Sequence[Draw], size: int) -> List[List[Draw]]:
    """Draws grouped by latent shape (buckets differ) and cut into lists of at most `size`."""
    groups: dict = {}
    for d in draws:
        groups.setdefault(tuple(d.latent.shape), []).append(d)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]
