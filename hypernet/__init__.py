"""hypernet: create, train and apply NovelAI / AUTOMATIC1111 hypernetworks, with or without the webui."""
from __future__ import annotations

from typing import Optional

import torch

from .attach import Attachment, Compatibility, attach, compatibility, detach, find_attention
from .config import ACTIVATIONS, WEIGHT_INITS, CreateOptions
from .errors import (ConfigError, FileFormatError, HypernetError, HypernetWarning, NotFoundError, TagError,
                     UnsafeFileError)
from .files import load, save, shorthash, webui_check
from .network import Hypernetwork, HypernetworkModule, transform
from . import library, tags  # noqa: E402  (public submodules)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "WEIGHT_INITS", "Attachment", "Compatibility", "ConfigError", "CreateOptions",
    "FileFormatError", "Hypernetwork", "HypernetworkModule", "HypernetError", "HypernetWarning", "NotFoundError",
    "TagError", "UnsafeFileError", "attach", "compatibility", "create", "detach", "find_attention", "library",
    "load", "save", "shorthash", "tags", "transform", "webui_check",
]


def create(dims=(768, 320, 640, 1280), layer_structure=(1, 2, 1), activation="relu", weight_init="Normal",
           layer_norm=False, dropout_structure=None, activate_output=False, name="hypernetwork", *,
           seed: Optional[int] = None) -> Hypernetwork:
    """A new hypernetwork initialised as the webui would; `seed` makes the initial weights reproducible."""
    config = CreateOptions(name=name, dims=list(dims) if not isinstance(dims, (str, int)) else dims,
                           layer_structure=layer_structure if isinstance(layer_structure, str) else list(layer_structure),
                           activation=activation, weight_init=weight_init, layer_norm=layer_norm,
                           dropout_structure=dropout_structure, activate_output=activate_output)
    return from_options(config, seed=seed)


def from_options(config: CreateOptions, *, seed: Optional[int] = None) -> Hypernetwork:
    """A new hypernetwork for a validated CreateOptions."""
    if seed is None:
        return Hypernetwork(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Hypernetwork(config)
