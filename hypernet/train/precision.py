"""The precision a run computes in: autocast for the mixed precision option, the UNet's dtype, float16 loss scaling."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for a precision option on a device (None = full precision)."""
    if device.type != "cuda" or precision == "no":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(precision: str, device: torch.device):
    """The autocast context for a precision option on a device; none for full precision."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compute_dtype(host) -> torch.dtype:
    """The dtype the host's UNet computes in: the autocast dtype of its precision context, else its own dtype."""
    kind = torch.device(host.device).type
    with host_precision(host):
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
    return host.dtype


def host_precision(host):
    """The host's own precision context (the webui's devices.autocast()), or none for a host without one."""
    precision = getattr(host, "precision", None)
    return precision() if precision is not None else contextlib.nullcontext()


def grad_scaler(precision: str, host) -> Optional[torch.amp.GradScaler]:
    """Dynamic loss scaling when the UNet computes in float16 (a half model, or fp16 autocast), whose small
    gradients would otherwise flush to zero; None otherwise."""
    if torch.float16 not in (autocast_dtype(precision, host.device), compute_dtype(host)):
        return None
    return torch.amp.GradScaler(torch.device(host.device).type)
