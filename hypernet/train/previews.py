"""Preview images during a run: one from the preview options, or one per line of a prompts file (sample_prompts.py),
every preview_every steps, into the run folder's images/ with a .txt of what made each."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..config import TrainOptions
from ..network import Hypernetwork
from .sample_prompts import SamplePrompt, read_prompts


class Previews:
    """The previews of one run of `hn` on `host`; process 0 alone renders them (`writer`)."""

    def __init__(self, options: TrainOptions, host, hn: Hypernetwork, *, seed: int, folder: Path, writer: bool):
        """`folder`: the run folder. The prompts file is read now, before any model work."""
        self.opts = options
        self.host = host
        self.hn = hn
        self.seed = seed
        self.folder = Path(folder) / "images"
        self.writer = writer
        self.prompts = read_prompts(options.preview_prompts_file) if options.preview_prompts_file else []

    def due(self, step: int) -> bool:
        """Whether a step renders previews."""
        return bool(self.opts.preview_every) and step % self.opts.preview_every == 0

    def any_after(self, step: int) -> bool:
        """Whether any step after `step` up to the last renders previews."""
        every = self.opts.preview_every
        return bool(every) and self.opts.steps // every > step // every

    def render(self, step: int, batch) -> list:
        """The step's preview images (paths), the hypernetwork in eval mode and the caller's random numbers left as
        they were."""
        if not self.writer:
            return []
        state = _rng_state()
        self.hn.eval()
        try:
            return [self._render(*args) for args in self._wanted(step, batch)]
        finally:
            self.hn.train()
            _set_rng_state(state)

    def _wanted(self, step: int, batch) -> list:
        """(prompt line, image path, seed for a line without one) of each preview of a step: one per line of the
        prompts file, else one of the preview prompt (else the batch's first caption)."""
        name = self.hn.name
        # A line without --d keeps one seed for the whole run, so its previews show only what training changed.
        if self.prompts:
            return [(p, self.folder / f"{name}-{step}-{k}.png", random.Random(self.seed * 7919 + k).randrange(2 ** 31))
                    for k, p in enumerate(self.prompts)]
        prompt = self.opts.preview_prompt or (batch.prompts[0] if batch.prompts else name)
        return [(SamplePrompt(prompt), self.folder / f"{name}-{step}.png",
                 random.Random(self.seed + step).randrange(2 ** 31))]

    def _render(self, p: SamplePrompt, path: Path, random_seed: int) -> str:
        """One preview image and its .txt, each setting from the prompt line or else the preview options; a seed
        below 0 becomes `random_seed`."""
        o = self.opts
        pick = lambda own, default: default if own is None else own  # noqa: E731
        seed = pick(p.seed, o.preview_seed)
        seed = random_seed if seed < 0 else seed
        sampler = pick(p.sampler, o.preview_sampler)
        extra = {"sampler_name": sampler} if sampler else {}
        negative = pick(p.negative, o.preview_negative_prompt)
        with torch.no_grad():
            image = self.host.sample(p.prompt, negative, pick(p.steps, o.preview_steps),
                                     pick(p.cfg_scale, o.preview_cfg_scale), seed,
                                     pick(p.width, o.preview_width or o.width),
                                     pick(p.height, o.preview_height or o.height), **extra)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        text = f"{p.prompt}\n" + (f"negative: {negative}\n" if negative else "") + f"seed: {seed}\n"
        path.with_suffix(".txt").write_text(text)
        return str(path)


def _rng_state() -> dict:
    """Every random generator's state (torch, CUDA, Python, NumPy), to put back after sampling."""
    state = {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Put back what _rng_state saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
