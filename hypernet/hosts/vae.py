"""A separate VAE for the diffusers host (`--vae`): a diffusers AutoencoderKL folder, or a single .safetensors file
in diffusers or original (ldm) key layout, never fetched from a hub."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import HypernetError

_LDM_MARKERS = ("encoder.down.0.", "first_stage_model.", "vae.encoder.down.")


def load_vae(path, like, dtype: torch.dtype = torch.float32):
    """An AutoencoderKL read from `path`; a single file takes its architecture from `like`, the model's own VAE."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL
    path = Path(str(path)).expanduser()
    if path.is_dir():
        return _from_folder(AutoencoderKL, path, dtype)
    if not path.is_file():
        raise HypernetError(f"vae: {path} not found; give a diffusers VAE folder or a .safetensors VAE file")
    if path.suffix.lower() != ".safetensors":
        raise HypernetError(f"vae: {path} is not a .safetensors file; .ckpt/.pt VAEs run code when read, convert "
                            "it to .safetensors first")
    vae = AutoencoderKL.from_config(like.config)
    state = _diffusers_layout(_read_tensors(path), dict(like.config), path)
    try:
        missing, unexpected = vae.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a weight of another shape
        raise HypernetError(f"vae: {path} does not fit this model's VAE ({str(exc).splitlines()[-1].strip()[:200]}); "
                            "is it a VAE for this kind of model?") from None
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:4])
        raise HypernetError(f"vae: {path} does not fit this model's VAE ({len(missing)} weights missing, "
                            f"{len(unexpected)} unexpected: {shown}); is it a VAE for this kind of model?")
    return vae.to(dtype=dtype)


def _from_folder(cls, path: Path, dtype: torch.dtype):
    """AutoencoderKL.from_pretrained on a VAE folder, or on the vae/ folder of a whole pipeline."""
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise HypernetError(f"vae: {path} has no config.json; it is not a diffusers VAE folder")
    try:
        return cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise HypernetError(f"vae: cannot load {folder} ({str(exc).splitlines()[0][:160]})") from None


def _read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as exc:
        raise HypernetError(f"vae: {path} is not a readable .safetensors file ({exc})") from None


def _diffusers_layout(state: dict, config: dict, path: Path) -> dict:
    """The state dict in diffusers' key layout, converted from the original (ldm) layout when it is in that one."""
    if not any(k.startswith(_LDM_MARKERS) for k in state):
        return state
    try:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    except ImportError:
        raise HypernetError(f"vae: {path} is in the original (ldm) layout, and this diffusers has no "
                            "convert_ldm_vae_checkpoint; upgrade diffusers or give a diffusers VAE") from None
    return convert_ldm_vae_checkpoint(state, config)
