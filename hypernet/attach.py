"""Hooking hypernetworks into any UNet: forward pre-hooks on the to_k / to_v projections of attention modules."""
from __future__ import annotations

import logging
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn

from .config import made_for
from .errors import HypernetError, HypernetWarning
from .network import Hypernetwork, _strength_pair, apply_chain

log = logging.getLogger("hypernet")

# projection module -> the Attachment whose hook sits on it; lets a new attach replace an old one.
_OWNER: "weakref.WeakKeyDictionary[nn.Module, Attachment]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class AttentionSite:
    """One attention module whose key/value projections read a context of `width` features."""

    name: str
    module: nn.Module
    width: int
    cross: bool


def _in_features(layer: nn.Module) -> Optional[int]:
    width = getattr(layer, "in_features", None)
    if isinstance(width, int):
        return width
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1])
    return None


def _is_cross(name: str, module: nn.Module, width: int) -> bool:
    last = name.rsplit(".", 1)[-1]
    if last == "attn1":
        return False
    if last == "attn2":
        return True
    flag = getattr(module, "is_cross_attention", None)
    if isinstance(flag, bool):
        return flag
    query = getattr(module, "to_q", None)
    return query is not None and _in_features(query) != width


def find_attention(model: nn.Module) -> List[AttentionSite]:
    """Every module with to_k and to_v projections, found by structure, not by class."""
    sites = []
    for name, module in model.named_modules():
        to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
        if not isinstance(to_k, nn.Module) or not isinstance(to_v, nn.Module):
            continue
        width = _in_features(to_k)
        if width is None:
            continue
        sites.append(AttentionSite(name, module, width, _is_cross(name, module, width)))
    return sites


@dataclass
class Compatibility:
    """Which of a hypernetwork's widths a model's self- and cross-attention actually read."""

    hypernetwork: str
    dims: list
    model_self_dims: list
    model_cross_dims: list
    self_dims_used: list = field(default_factory=list)
    cross_dims_used: list = field(default_factory=list)
    unused_dims: list = field(default_factory=list)

    @property
    def applies(self) -> bool:
        return bool(self.self_dims_used or self.cross_dims_used)

    @property
    def fits(self) -> bool:
        """True when the file reaches this model's cross-attention (or the model has none)."""
        return bool(self.cross_dims_used) or not self.model_cross_dims

    @property
    def warning(self) -> Optional[str]:
        made = f" (made for {made_for(self.dims)})" if made_for(self.dims) else ""
        model_kind = f"{made_for(self.model_cross_dims)} model" if made_for(self.model_cross_dims) else "model"
        if not self.applies:
            return (f"hypernetwork {self.hypernetwork!r}{made} applies nothing to this model: it has widths "
                    f"{self.dims}, the model's self-attention uses {self.model_self_dims} and its cross-attention "
                    f"{self.model_cross_dims}")
        if not self.fits:
            return (f"hypernetwork {self.hypernetwork!r}{made} only reaches self-attention (widths "
                    f"{self.self_dims_used}) on this {model_kind}, whose cross-attention is "
                    f"{self.model_cross_dims} wide; its effect will differ from the model it was trained for")
        return None

    def to_dict(self) -> dict:
        return {"hypernetwork": self.hypernetwork, "dims": self.dims, "model_self_dims": self.model_self_dims,
                "model_cross_dims": self.model_cross_dims, "self_dims_used": self.self_dims_used,
                "cross_dims_used": self.cross_dims_used, "unused_dims": self.unused_dims,
                "applies": self.applies, "fits": self.fits, "warning": self.warning}


def compatibility(hn: Hypernetwork, model: nn.Module, sites: Optional[Sequence[AttentionSite]] = None) -> Compatibility:
    """Report which of hn's widths the model uses, for self- and cross-attention."""
    sites = find_attention(model) if sites is None else sites
    self_dims = sorted({s.width for s in sites if not s.cross})
    cross_dims = sorted({s.width for s in sites if s.cross})
    dims = hn.dims
    return Compatibility(
        hypernetwork=hn.name, dims=dims, model_self_dims=self_dims, model_cross_dims=cross_dims,
        self_dims_used=[d for d in dims if d in self_dims], cross_dims_used=[d for d in dims if d in cross_dims],
        unused_dims=[d for d in dims if d not in self_dims and d not in cross_dims])


def _normalise_stack(stack) -> list:
    if isinstance(stack, Hypernetwork):
        stack = [(stack, 1.0)]
    out = []
    for i, entry in enumerate(stack):
        if isinstance(entry, Hypernetwork):
            entry = (entry, 1.0)
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[0], Hypernetwork):
            raise HypernetError(f"stack entry {i}: expected (Hypernetwork, strength), got {entry!r}")
        _strength_pair(entry[1])  # validates the strength now rather than inside a forward pass
        out.append((entry[0], entry[1]))
    return out


class Attachment:
    """The hooks placed on one model for one stack of hypernetworks; remove() takes exactly those away."""

    def __init__(self, model: nn.Module, stack, *, warn: bool = True):
        self.model_ref = weakref.ref(model)
        self.stack = _normalise_stack(stack)
        self.sites = find_attention(model)
        self._handles: list = []
        self.reports = [compatibility(hn, model, self.sites) for hn, _ in self.stack]
        for site in self.sites:
            for which, proj in ((0, site.module.to_k), (1, site.module.to_v)):
                previous = _OWNER.get(proj)
                if previous is not None and previous is not self:
                    previous.remove()
                self._handles.append(proj.register_forward_pre_hook(self._hook(which, site.cross)))
                _OWNER[proj] = self
        self.warnings = [r.warning for r in self.reports if r.warning]
        if warn:
            for text in self.warnings:
                log.warning(text)
                warnings.warn(text, HypernetWarning, stacklevel=3)

    def _hook(self, which: int, cross: bool):
        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor) or not self.stack:
                return None
            return (apply_chain(self.stack, args[0], which, cross),) + tuple(args[1:])
        return hook

    @property
    def active(self) -> bool:
        return bool(self._handles)

    @property
    def hooked_modules(self) -> int:
        return len(self._handles)

    def set_stack(self, stack) -> None:
        """Swap the hypernetworks or strengths in place, without re-hooking."""
        self.stack = _normalise_stack(stack)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for proj in [p for p, owner in list(_OWNER.items()) if owner is self]:
            del _OWNER[proj]

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = ", ".join(f"{hn.name}:{s}" for hn, s in self.stack)
        return f"Attachment([{names}], {len(self.sites)} attention modules, active={self.active})"


def attach(model: nn.Module, stack: Iterable = (), *, warn: bool = True) -> Attachment:
    """Hook every attention k/v projection of `model`; an earlier attachment on it is removed first."""
    if not isinstance(model, nn.Module):
        raise HypernetError(f"attach: expected a torch.nn.Module (a UNet), got {type(model).__name__}")
    return Attachment(model, stack, warn=warn)


def detach(model: nn.Module) -> int:
    """Remove every hypernetwork hook on `model`; returns how many attachments were removed."""
    owners = {id(o): o for p, o in list(_OWNER.items()) if any(p is m for m in model.modules())}
    for owner in owners.values():
        owner.remove()
    return len(owners)
