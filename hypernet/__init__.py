"""hypernet: create, train and apply NovelAI / AUTOMATIC1111 hypernetworks, with or without the webui.

This module is the public API; docs/architecture.md draws the layers beneath it."""
from __future__ import annotations

from . import library, tags
from .attach import Attachment, Compatibility, attach, compatibility, detach, find_attention
from .config import ACTIVATIONS, WEIGHT_INITS, CreateOptions
from .errors import (ConfigError, FileFormatError, HypernetError, HypernetWarning, NotFoundError, TagError,
                     UnsafeFileError)
from .fileformat.files import load, save, shorthash, webui_check
from .network import Hypernetwork, HypernetworkModule, create, from_options, transform
from .version import __version__

__all__ = [
    "ACTIVATIONS", "WEIGHT_INITS", "Attachment", "Compatibility", "ConfigError", "CreateOptions",
    "FileFormatError", "Hypernetwork", "HypernetworkModule", "HypernetError", "HypernetWarning", "NotFoundError",
    "TagError", "UnsafeFileError", "__version__", "attach", "compatibility", "create", "detach", "find_attention",
    "from_options", "library", "load", "save", "shorthash", "tags", "transform", "webui_check",
]
