"""A hypernetwork file's metadata and layer shapes, read without its weights (for cards and API listings).

.safetensors: the JSON header only. .pt (zip or legacy torch format): the pickle only, with a restricted unpickler
that rebuilds nothing but plain containers and records each tensor's shape; storages are never read and no code
from the file runs. Anything unexpected raises, and the caller falls back to a full (safe) load.
"""
from __future__ import annotations

import collections
import json
import math
import os
import pickle
import re
import struct
import zipfile
from typing import Optional

from ..files import SAFETENSORS_FORMAT, ST_SUFFIX

_KNOWN_CROSS = {768: "SD1", 1024: "SD2", 2048: "SDXL"}
_ST_KEY = re.compile(r"^(\d+)\.([kv])\.(.+)$")
_MAX_HEADER = 64 << 20


class _Shape:
    """Stands in for a tensor: only its shape is kept."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)


class _Storage:
    __slots__ = ()


def _rebuild_tensor(storage, offset, size, *args, **kwargs):
    return _Shape(size)


def _rebuild_parameter(data, *args, **kwargs):
    return data


def _storage(*args, **kwargs):
    return _Storage()


class _ShapeUnpickler(pickle.Unpickler):
    _CLASSES = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def find_class(self, module, name):
        found = self._CLASSES.get((module, name))
        if found is not None:
            return found
        if module == "torch" and (name.endswith("Storage") or name in ("float32", "float16", "bfloat16")):
            return _storage
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and pid and pid[0] == "storage":
            return _Storage()
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")


def _pt_object(path: str):
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pkl) != 1:
                raise ValueError("expected one data.pkl")
            with archive.open(pkl[0]) as fh:
                return _ShapeUnpickler(fh).load()
    with open(path, "rb") as fh:  # legacy format: magic number, protocol, sys info, then the object
        for _ in range(3):
            _ShapeUnpickler(fh).load()
        return _ShapeUnpickler(fh).load()


def _safetensors_object(path: str) -> dict:
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError("truncated safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise ValueError("safetensors header too large")
        header = json.loads(fh.read(length))
    meta = header.pop("__metadata__", {}) or {}
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise ValueError("not a hypernetwork safetensors file")
    obj = {k: v for k, v in json.loads(meta.get("hypernet", "{}")).items() if isinstance(k, str)}
    for key, info in header.items():
        found = _ST_KEY.match(key)
        if not found:
            raise ValueError(f"unexpected tensor {key}")
        dim, which, rest = int(found.group(1)), found.group(2), found.group(3)
        obj.setdefault(dim, ({}, {}))[0 if which == "k" else 1][rest] = _Shape(info["shape"])
    return obj


def _count(state) -> int:
    return sum(math.prod(t.shape) for t in state.values() if isinstance(t, _Shape))


def _floats(value, default):
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    return default


def read(path: str) -> dict:
    """Plain, JSON-ready facts about a hypernetwork file; raises if its layout is not understood."""
    obj = _safetensors_object(path) if path.lower().endswith(ST_SUFFIX) else _pt_object(path)
    if not isinstance(obj, dict):
        raise ValueError("not a dict")
    dims = sorted(k for k in obj if type(k) is int)
    if not dims:
        raise ValueError("no hypernetwork layers")
    params = 0
    for dim in dims:
        pair = obj[dim]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(sd, dict) for sd in pair):
            raise ValueError(f"width {dim} is not a (k, v) pair")
        params += _count(pair[0]) + _count(pair[1])
    meta = {k: v for k, v in obj.items() if isinstance(k, str)}
    activation = meta.get("activation_func")
    structure = _floats(meta.get("layer_structure"), [1.0, 2.0, 1.0])
    dropout = _floats(meta.get("dropout_structure"), None)
    return {
        "name": meta["name"] if isinstance(meta.get("name"), str) else os.path.splitext(os.path.basename(path))[0],
        "dims": dims,
        "layer_structure": structure,
        "activation": activation.lower() if isinstance(activation, str) else "linear",
        "layer_norm": bool(meta.get("is_layer_norm", False)),
        "dropout_structure": dropout if dropout is not None else [0.0] * len(structure),
        "activate_output": bool(meta.get("activate_output", True)),  # the webui's default for files without it
        "weight_init": meta["weight_initialization"] if isinstance(meta.get("weight_initialization"), str)
        else "Normal",
        "step": int(meta["step"]) if isinstance(meta.get("step"), int) else 0,
        "sd_checkpoint": meta["sd_checkpoint"] if isinstance(meta.get("sd_checkpoint"), str) else None,
        "sd_checkpoint_name": meta["sd_checkpoint_name"] if isinstance(meta.get("sd_checkpoint_name"), str) else None,
        "optional_info": meta["optional_info"] if isinstance(meta.get("optional_info"), str) else None,
        "parameters": params,
        "made_for": made_for(dims),
    }


def from_hypernetwork(hn) -> dict:
    """The same facts from a loaded Hypernetwork (the fallback when `read` cannot parse the file cheaply)."""
    c = hn.config
    return {"name": c.name, "dims": hn.dims, "layer_structure": list(c.layer_structure), "activation": c.activation,
            "layer_norm": c.layer_norm, "dropout_structure": list(c.dropout_structure),
            "activate_output": c.activate_output, "weight_init": c.weight_init, "step": hn.step,
            "sd_checkpoint": hn.sd_checkpoint, "sd_checkpoint_name": hn.sd_checkpoint_name,
            "optional_info": hn.optional_info, "parameters": hn.parameter_count(), "made_for": made_for(hn.dims)}


def made_for(dims) -> Optional[str]:
    """"SD1", "SD2", "SDXL" (or several joined by '/') from the cross-attention widths a file has."""
    kinds = [_KNOWN_CROSS[d] for d in sorted(dims) if d in _KNOWN_CROSS]
    return "/".join(kinds) or None
