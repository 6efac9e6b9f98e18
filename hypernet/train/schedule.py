"""Learning-rate and clip-value schedules: the webui's "rate:step, rate:step, rate" syntax plus warmup / cosine."""
from __future__ import annotations

import math
from typing import List, Tuple

from ..bounds import MAX_LIST_ENTRIES, brief
from ..errors import ConfigError


def parse_schedule(text, max_steps: int, field: str = "learning_rate") -> List[Tuple[float, int]]:
    """[(value, until_step)] from "rate:step, ..., rate"; a bare rate or ':-1' runs to max_steps."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = repr(float(text))
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(field, "is empty; give a number like 0.0001 or a schedule like \"5e-5:100, 1e-5:1000, 1e-6\"")
    if text.count(",") >= MAX_LIST_ENTRIES:
        raise ConfigError(field, f"has {text.count(',') + 1:,} entries; a schedule may have at most "
                                 f"{MAX_LIST_ENTRIES:,}")
    pairs = []
    previous_end = 0
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ConfigError(field, f"empty entry in {brief(text)}; separate entries with one comma")
        rate_text, _, step_text = part.partition(":")
        try:
            rate = float(rate_text)
        except ValueError:
            raise ConfigError(field, f"{brief(rate_text.strip())} in {brief(text)} is not a number") from None
        if not math.isfinite(rate) or rate < 0:
            raise ConfigError(field, f"{brief(rate_text.strip())} in {brief(text)} must be a finite number >= 0")
        if step_text.strip() in ("", "-1"):
            end = max_steps
        else:
            try:
                end = int(step_text)
            except ValueError:
                raise ConfigError(field, f"step {brief(step_text.strip())} in {brief(text)} is not a whole number") from None
            if end <= previous_end:
                raise ConfigError(field, f"steps must increase: {end} comes after {previous_end} in {brief(text)}")
        pairs.append((rate, end))
        previous_end = end
    # entries past max_steps are validated above but never reached
    reached = next((i for i, (_, end) in enumerate(pairs) if end >= max_steps), len(pairs) - 1)
    return pairs[:reached + 1]


def value_at(schedule: List[Tuple[float, int]], step: int) -> float:
    """The scheduled value for a 0-based step: each value holds until its step (exclusive); the last one after."""
    for value, end in schedule:
        if step < end:
            return value
    return schedule[-1][0]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup multiplier: (step+1)/warmup for the first warmup steps, then 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def cosine_factor(step: int, total_steps: int) -> float:
    """Cosine decay multiplier from 1 at step 0 to 0 at total_steps."""
    if total_steps <= 0:
        return 1.0
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# The shapes below are the formulas of diffusers.optimization (get_cosine_with_hard_restarts_schedule_with_warmup,
# get_polynomial_decay_schedule_with_warmup with lr_end 0), written as pure functions of the step: those are
# LambdaLR objects whose state would have to travel in the .optim, and a pure function makes a resumed run exact by
# construction. tests/test_schedule.py checks them against diffusers' own schedulers. Their decay starts after the
# warmup, as diffusers' does; the warmup ramp itself stays ours ((step+1)/warmup, never a zero rate).
def _after_warmup(step: int, total_steps: int, warmup_steps: int) -> float:
    """Progress in [0, 1] through the steps that follow the warmup."""
    span = max(1, total_steps - warmup_steps)
    return min(max((step - warmup_steps) / span, 0.0), 1.0)


def restarts_factor(step: int, total_steps: int, warmup_steps: int = 0, cycles: int = 1) -> float:
    """Cosine from 1 to 0, `cycles` times over the steps after the warmup, jumping back to 1 at each restart."""
    progress = _after_warmup(step, total_steps, warmup_steps)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(cycles) * progress) % 1.0))))


def polynomial_factor(step: int, total_steps: int, warmup_steps: int = 0, power: float = 1.0) -> float:
    """(1 - progress) ** power over the steps after the warmup: 1 down to 0 (power 1 is a linear decay)."""
    return (1.0 - _after_warmup(step, total_steps, warmup_steps)) ** power


def shape_factor(shape: str, step: int, total_steps: int, warmup_steps: int = 0, cycles: int = 1,
                 power: float = 1.0) -> float:
    """The multiplier an lr_shape applies at a step (warmup excluded)."""
    if shape == "cosine":
        return cosine_factor(step, total_steps)
    if shape == "cosine_with_restarts":
        return restarts_factor(step, total_steps, warmup_steps, cycles)
    if shape == "polynomial":
        return polynomial_factor(step, total_steps, warmup_steps, power)
    return 1.0  # constant, constant_with_warmup


def learning_rate(schedule, step: int, total_steps: int, warmup_steps: int = 0, shape: str = "constant",
                  cycles: int = 1, power: float = 1.0) -> float:
    """The learning rate for a step: scheduled value times the warmup and shape factors."""
    rate = value_at(schedule, step) * warmup_factor(step, warmup_steps)
    return rate * shape_factor(shape, step, total_steps, warmup_steps, cycles, power)
