"""The optimizers a run can use, built from the options, and the saved optimizer state a resumed run continues."""
from __future__ import annotations

import importlib
import logging

import torch

from ..config import TrainOptions
from ..errors import HypernetError
from ..network import Hypernetwork

log = logging.getLogger("hypernet")


def build_optimizer(name: str, params, opts: TrainOptions, lr: float) -> torch.optim.Optimizer:
    """The optimizer named in the options, with the configured decay and betas."""
    params = list(params)
    if name in ("AdamW", "Adam"):
        cls = torch.optim.AdamW if name == "AdamW" else torch.optim.Adam
        return cls(params, lr=lr, betas=(opts.beta1, opts.beta2), eps=opts.eps, weight_decay=opts.weight_decay,
                   **fast_adam(params))
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=opts.beta1, weight_decay=opts.weight_decay)
    if name == "AdamW8bit":
        bnb = _optional_package("bitsandbytes", "AdamW8bit", "bitsandbytes` (and a CUDA GPU")
        return bnb.optim.AdamW8bit(params, lr=lr, betas=(opts.beta1, opts.beta2), eps=opts.eps,
                                   weight_decay=opts.weight_decay)
    if name == "Lion":
        lion = _optional_package("lion_pytorch", "Lion", "lion-pytorch")
        return lion.Lion(params, lr=lr, betas=(opts.beta1, opts.beta2), weight_decay=opts.weight_decay)
    if name == "Prodigy":  # learning_rate is Prodigy's multiplier of its own estimate: 1.0 is the usual value
        prodigy = _optional_package("prodigyopt", "Prodigy", "prodigyopt")
        return prodigy.Prodigy(params, lr=lr, betas=(opts.beta1, opts.beta2), eps=opts.eps,
                               weight_decay=opts.weight_decay)
    if name == "Adafactor":  # the trainer's schedule sets the rate, so Adafactor's own relative step is off
        optimization = _optional_package("transformers.optimization", "Adafactor", "transformers")
        return optimization.Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                                      weight_decay=opts.weight_decay)
    raise HypernetError(f"optimizer: unknown {name!r}")


def fast_adam(params) -> dict:
    """Adam's fastest implementation for these parameters: fused (one kernel for all of them; 4x the default loop on
    a CPU for the default file) where torch has it for their device and dtype, else foreach."""
    kinds = {(p.device.type, p.dtype) for p in params}
    fused_ok = all(device in ("cpu", "cuda") and dtype in (torch.float32, torch.float16, torch.bfloat16)
                   for device, dtype in kinds)
    return {"fused": True} if fused_ok and kinds else {"foreach": True}


def _optional_package(module: str, optimizer: str, pip_name: str):
    """The module an optimizer comes from, or a HypernetError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HypernetError(f"optimizer: {optimizer} needs `pip install {pip_name}`; install it or choose "
                            "AdamW") from None


def for_hypernetwork(hn: Hypernetwork, opts: TrainOptions, lr: float) -> torch.optim.Optimizer:
    """The configured optimizer over the hypernetwork's parameters, continuing the state saved with its file when
    that is for the same optimizer and fits; else fresh, with a warning saying why."""
    optimizer = build_optimizer(opts.optimizer, hn.parameters(), opts, lr)
    state = hn.optimizer_state_dict
    if state is None:
        return optimizer
    if hn.optimizer_name != opts.optimizer:
        log.warning("saved optimizer state is for %s, training with %s: starting the optimizer fresh",
                    hn.optimizer_name, opts.optimizer)
        return optimizer
    try:
        optimizer.load_state_dict(state)
        log.info("resuming with the saved %s optimizer state", opts.optimizer)
    except (ValueError, KeyError, RuntimeError) as exc:
        log.warning("saved optimizer state does not fit (%s); starting the optimizer fresh", exc)
    return optimizer
