"""A --model path as a pipeline: the apps' one door to a model, the built-in tiny model included.

The hosts know nothing of the tiny model; this is where its folder layout (model.safetensors + config.json, no
model_index.json) is told apart from a diffusers folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..hosts import diffusers
from ..tiny import model as tiny
from ..train import compare
from ..train.config_file import section


def load_pipeline(path: Optional[str] = None, *, dtype=torch.float32, kind: str = "auto",
                  prediction_type: str = "auto"):
    """The pipeline at `path` (the shipped tiny model when None): a tiny model folder, else a diffusers folder or a
    single .safetensors / .ckpt file as hosts.diffusers.load_pipeline reads them."""
    if path is None:
        return tiny.load_pipeline(dtype=dtype)
    folder = Path(path)
    if folder.is_dir() and not (folder / "model_index.json").exists() and tiny.is_model_folder(folder):
        return tiny.load_pipeline(folder, dtype=dtype)
    return diffusers.load_pipeline(path, dtype=dtype, kind=kind, prediction_type=prediction_type)


def model_of(settings: dict) -> str:
    """The model a run's settings.json names, found again: the built-in tiny model recorded from another checkout
    is the shipped one here."""
    model = section(settings, "model")
    if not Path(model.get("path") or "").exists() and model.get("name") == tiny.ASSETS.name:
        return str(tiny.ASSETS)
    return compare.model_of(settings)
