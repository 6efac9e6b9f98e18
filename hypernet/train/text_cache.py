"""The prompts' text conditioning, encoded once and kept while the options keep every prompt's text fixed."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..hosts.protocol import Host

log = logging.getLogger("hypernet")
TEXT_CACHE_BYTES = 1 << 30  # text embeddings kept at most; beyond it they are encoded as batches draw them


class TextCache:
    """Prompt -> conditioning (a tensor, or SDXL's dict of them) from the host's encode_prompts; beyond
    TEXT_CACHE_BYTES the oldest go, unless every prompt the run can draw was encoded before step 0 (`fixed`)."""

    def __init__(self, host: Host, cacheable: bool):
        """`cacheable`: prompts repeat as they are (tags neither shuffled nor dropped; caption dropout only adds "")."""
        self.host = host
        self.cacheable = cacheable
        self.cache: "dict[str, object]" = {}
        self.fixed = False  # every prompt the run can draw is in the cache (cache_text_embeddings)

    def conditioning(self, prompts):
        """The prompts' text conditioning, stacked in their order; from the cache when prompts are cacheable."""
        if not self.cacheable:
            return self.host.encode_prompts(prompts)
        self.encode_missing(prompts)
        return _stack([self.cache[p] for p in prompts])

    def encode_missing(self, prompts) -> None:
        """Encode the prompts not in the cache; beyond TEXT_CACHE_BYTES the oldest go, unless all were precomputed."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if not missing:
            return
        encoded = self.host.encode_prompts(missing)
        for i, text in enumerate(missing):
            self.cache[text] = _index(encoded, i)
        if self.fixed:
            return
        while len(self.cache) > max(1, TEXT_CACHE_BYTES // _nbytes(next(iter(self.cache.values())))):
            self.cache.pop(next(iter(self.cache)))

    def precompute(self, prompts: list) -> None:
        """Encode every prompt now, 16 at a time, when they all fit in TEXT_CACHE_BYTES (then no step encodes text);
        else only the first 16, which tell their size."""
        self.encode_missing(prompts[:16])
        size = _nbytes(next(iter(self.cache.values())))
        if size * len(prompts) > TEXT_CACHE_BYTES:
            log.info("%d prompts would take %.1f GiB of text embeddings; encoding them as batches draw them",
                     len(prompts), size * len(prompts) / 2 ** 30)
            return
        self.fixed = True
        for i in range(16, len(prompts), 16):
            self.encode_missing(prompts[i:i + 16])


def _nbytes(cond) -> int:
    """The bytes of one prompt's conditioning (a tensor, or SDXL's dict of them)."""
    parts = cond.values() if isinstance(cond, dict) else [cond]
    return sum(t.numel() * t.element_size() for t in parts)


def _index(cond, i: int):
    """The i-th prompt's conditioning of a batch of them."""
    if isinstance(cond, dict):
        return {k: v[i] for k, v in cond.items()}
    return cond[i]


def _stack(items):
    """One batch of conditioning from single prompts' conditioning."""
    if isinstance(items[0], dict):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}
    return torch.stack(items)
