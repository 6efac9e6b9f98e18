"""Hooking hypernetworks into any UNet: forward pre-hooks on the to_k / to_v projections of attention modules."""
from __future__ import annotations

import collections
import functools
import logging
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Protocol, Sequence, Tuple

import torch
from torch import nn

from .config import made_for
from .errors import HypernetError, HypernetWarning
from .network import Hypernetwork, _strength_pair, apply_chain

log = logging.getLogger("hypernet")

# projection module -> the Attachment whose hook sits on it; lets a new attach replace an old one.
_OWNER: "weakref.WeakKeyDictionary[nn.Module, Attachment]" = weakref.WeakKeyDictionary()
# (k, v) results for a few live contexts (cond, uncond, a second model's); more are dropped oldest first.
CACHE_ENTRIES = 8


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


class Named(Protocol):
    """What compatibility reads of a hypernetwork: its name and widths, so a file's facts serve as well."""

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> List[int]: ...


def compatibility(hn: Named, model: nn.Module, sites: Optional[Sequence[AttentionSite]] = None) -> Compatibility:
    """Report which of hn's widths the model uses, for self- and cross-attention."""
    sites = find_attention(model) if sites is None else sites
    self_dims = sorted({s.width for s in sites if not s.cross})
    cross_dims = sorted({s.width for s in sites if s.cross})
    dims = hn.dims
    return Compatibility(
        hypernetwork=hn.name, dims=dims, model_self_dims=self_dims, model_cross_dims=cross_dims,
        self_dims_used=[d for d in dims if d in self_dims], cross_dims_used=[d for d in dims if d in cross_dims],
        unused_dims=[d for d in dims if d not in self_dims and d not in cross_dims])


# ---------------------------------------------------------------------------------------------- the shared result
def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place version counter; -1 for an inference tensor, which has none."""
    return -1 if tensor.is_inference() else tensor._version


def _autocast_state(device_type: str) -> tuple:
    """Whether autocast is on for the device, and its dtype: the chain's matmuls run at that dtype."""
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4 (the webui ships 2.1) has only per-device functions
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


def _draws_dropout(module: nn.Module) -> bool:
    """True when the module is training and holds an active dropout: every call must make its own draw."""
    return module.training and any(isinstance(layer, nn.modules.dropout._DropoutNd) and layer.p > 0
                                   for layer in module.modules())


@dataclass
class _Entry:
    ref: "weakref.ref"          # the context; the entry dies with it
    state: tuple                # everything else the result depends on, compared on every hit
    result: torch.Tensor
    result_version: int         # a consumer that wrote into the result in place invalidates it
    owner: Optional[int]        # for a result valid in one forward only: the layer that computed it
    keep: tuple                 # the modules and parameters the state names by id, held so no id is reused


class ChainCache:
    """The hypernetwork chain's result per (context tensor, k or v), computed once and handed to every
    cross-attention layer that reads the same tensor, while the context (identity, version, pointer), the stack
    and its strengths, every weight (identity, version, grad flag), the training mode and the grad / inference /
    autocast modes are what they were.

    A result with an autograd graph, or one involving inference tensors (which have no version counter), serves
    one forward of the model (new_forward() drops it). Within it, a recomputation by a gradient checkpoint
    replays the forward exactly: the layer that computed the result computes it again, the others take the stored
    one, so the checkpoint sees the same saved tensors. A result with neither also serves later forwards that pass
    the same unmodified tensor (the sampling steps of one generation). Entries die with their context and at most
    `size` are kept, so nothing outlives a generation for long.
    """

    def __init__(self, size: int = CACHE_ENTRIES):
        self.size = size
        self._entries: "collections.OrderedDict[tuple, _Entry]" = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def new_forward(self) -> None:
        """A forward of the model begins: results valid for one forward only are dropped."""
        for key in [k for k, e in self._entries.items() if e.owner is not None]:
            del self._entries[key]

    def get(self, key: tuple, ctx: torch.Tensor, state: tuple, site: int) -> Tuple[Optional[torch.Tensor], bool]:
        """(the stored result if it is exactly what the chain would compute now, whether to store a new one)."""
        entry = self._entries.get(key)
        if (entry is None or entry.ref() is not ctx or entry.state != state
                or _version(entry.result) != entry.result_version):
            return None, True
        if entry.owner == site:  # a checkpoint recomputing the layer that computed it: compute again, keep it
            return None, False
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.result, False

    def put(self, key: tuple, ctx: torch.Tensor, state: tuple, result: torch.Tensor, site: int,
            one_forward: bool, keep: tuple) -> None:
        self.misses += 1
        owner = weakref.ref(self)
        ref = weakref.ref(ctx, functools.partial(_forget, owner, key))
        self._entries[key] = _Entry(ref, state, result, _version(result), site if one_forward else None, keep)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def _forget(owner: "weakref.ref", key: tuple, dead: "weakref.ref") -> None:
    """Drop the entry of a context that no longer exists (unless a newer entry took its key)."""
    cache = owner()
    if cache is None:
        return
    entry = cache._entries.get(key)
    if entry is not None and entry.ref is dead:
        cache._entries.pop(key, None)


def _normalise_stack(stack) -> tuple:
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
    return tuple(out)


class Attachment:
    """The hooks placed on one model for one stack of hypernetworks; remove() takes exactly those away.

    With `cache` (the default) each cross-attention context is transformed once and shared by every layer that
    reads it (see ChainCache); outputs are identical either way.
    """

    def __init__(self, model: nn.Module, stack, *, warn: bool = True, cache: bool = True):
        self.model_ref = weakref.ref(model)
        self._stack = _normalise_stack(stack)
        self._stack_version = 0
        self.cache: Optional[ChainCache] = ChainCache() if cache else None
        self.sites = find_attention(model)
        self._handles: list = []
        # Marks where one forward of the model ends and the next begins, for results valid in one forward only.
        self._root_handle = model.register_forward_pre_hook(self._new_forward) if cache else None
        self.reports = [compatibility(hn, model, self.sites) for hn, _ in self._stack]
        for site in self.sites:
            for which, proj in ((0, site.module.to_k), (1, site.module.to_v)):
                previous = _OWNER.get(proj)
                if previous is not None and previous is not self:
                    previous.remove()
                self._handles.append(proj.register_forward_pre_hook(
                    self._hook(which, site.cross, len(self._handles))))
                _OWNER[proj] = self
        self.warnings = [r.warning for r in self.reports if r.warning]
        if warn:
            for text in self.warnings:
                log.warning(text)
                warnings.warn(text, HypernetWarning, stacklevel=3)

    @property
    def stack(self) -> tuple:
        """((Hypernetwork, strength), ...) in the order they apply; assign or set_stack() to change it."""
        return self._stack

    @stack.setter
    def stack(self, stack) -> None:
        self.set_stack(stack)

    def _hook(self, which: int, cross: bool, site: int):
        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor) or not self._stack:
                return None
            if cross and self.cache is not None:
                return (self._shared_chain(self.cache, args[0], which, site),) + tuple(args[1:])
            return (apply_chain(self._stack, args[0], which, cross),) + tuple(args[1:])
        return hook

    def _new_forward(self, module, args) -> None:
        if self.cache is not None:
            self.cache.new_forward()

    def _chain_modules(self, width: int, which: int) -> list:
        key = str(width)
        return [hn.layers[key][which] for hn, _ in self._stack if key in hn.layers]

    def _state(self, ctx: torch.Tensor, modules: list, params: list) -> tuple:
        """Everything but the context's identity that the chain's result depends on."""
        return (_version(ctx), ctx.data_ptr(), ctx.requires_grad, tuple(ctx.shape), ctx.stride(), ctx.dtype,
                ctx.device, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                _autocast_state(ctx.device.type), self._stack_version,
                tuple((id(m), m.training) for m in modules),
                tuple((id(p), _version(p), p.data_ptr(), p.dtype, p.requires_grad) for p in params))

    def _shared_chain(self, cache: "ChainCache", ctx: torch.Tensor, which: int, site: int) -> torch.Tensor:
        """apply_chain for a cross-attention context, computed once per context and shared across layers."""
        modules = self._chain_modules(ctx.shape[-1], which)
        if not modules or any(_draws_dropout(m) for m in modules):
            return apply_chain(self._stack, ctx, which, True)  # nothing to share, or each layer draws its own
        params = [p for m in modules for p in m.parameters()]
        key = (id(ctx), which)
        found, store = cache.get(key, ctx, self._state(ctx, modules, params), site)
        if found is not None:
            return found
        result = apply_chain(self._stack, ctx, which, True)
        if not store:
            return result
        params = [p for m in modules for p in m.parameters()]  # the chain may have moved them to ctx's device
        one_forward = result.requires_grad or ctx.is_inference() or any(p.is_inference() for p in params)
        cache.put(key, ctx, self._state(ctx, modules, params), result, site, one_forward,
                       (tuple(modules), tuple(params)))
        return result

    @property
    def active(self) -> bool:
        return bool(self._handles)

    @property
    def hooked_modules(self) -> int:
        return len(self._handles)

    def set_stack(self, stack) -> None:
        """Swap the hypernetworks or strengths in place, without re-hooking."""
        self._stack = _normalise_stack(stack)
        self._stack_version += 1
        if self.cache is not None:
            self.cache.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None
        if self.cache is not None:
            self.cache.clear()
        for proj in [p for p, owner in list(_OWNER.items()) if owner is self]:
            del _OWNER[proj]

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = ", ".join(f"{hn.name}:{s}" for hn, s in self.stack)
        return f"Attachment([{names}], {len(self.sites)} attention modules, active={self.active})"


def attach(model: nn.Module, stack: Iterable = (), *, warn: bool = True, cache: bool = True) -> Attachment:
    """Hook every attention k/v projection of `model`; an earlier attachment on it is removed first.

    `cache=False` recomputes the chain in every layer (the webui's way); the outputs are the same."""
    if not isinstance(model, nn.Module):
        raise HypernetError(f"attach: expected a torch.nn.Module (a UNet), got {type(model).__name__}")
    return Attachment(model, stack, warn=warn, cache=cache)


def detach(model: nn.Module) -> int:
    """Remove every hypernetwork hook on `model`; returns how many attachments were removed."""
    owners = {id(o): o for p, o in list(_OWNER.items()) if any(p is m for m in model.modules())}
    for owner in owners.values():
        owner.remove()
    return len(owners)
