"""Learning-rate and clip-value schedules: the webui's "rate:step, rate:step, rate" syntax plus warmup / cosine."""
from __future__ import annotations

import math
from typing import List, Tuple

from .errors import ConfigError


def parse_schedule(text, max_steps: int, field: str = "learning_rate") -> List[Tuple[float, int]]:
    """[(value, until_step)] from "rate:step, ..., rate"; a bare rate or ':-1' runs to max_steps."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = repr(float(text))
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(field, "is empty; give a number like 0.0001 or a schedule like \"5e-5:100, 1e-5:1000, 1e-6\"")
    pairs = []
    previous_end = 0
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ConfigError(field, f"empty entry in {text!r}; separate entries with one comma")
        rate_text, _, step_text = part.partition(":")
        try:
            rate = float(rate_text)
        except ValueError:
            raise ConfigError(field, f"{rate_text.strip()!r} in {text!r} is not a number") from None
        if not math.isfinite(rate) or rate < 0:
            raise ConfigError(field, f"{rate_text.strip()!r} in {text!r} must be a finite number >= 0")
        if step_text.strip() in ("", "-1"):
            end = max_steps
        else:
            try:
                end = int(step_text)
            except ValueError:
                raise ConfigError(field, f"step {step_text.strip()!r} in {text!r} is not a whole number") from None
            if end <= previous_end:
                raise ConfigError(field, f"steps must increase: {end} comes after {previous_end} in {text!r}")
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


def learning_rate(schedule, step: int, total_steps: int, warmup_steps: int = 0, shape: str = "constant") -> float:
    """The learning rate for a step: scheduled value times warmup and (optionally) cosine factors."""
    rate = value_at(schedule, step) * warmup_factor(step, warmup_steps)
    if shape == "cosine":
        rate *= cosine_factor(step, total_steps)
    return rate
