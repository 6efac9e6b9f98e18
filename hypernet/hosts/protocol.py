"""The contract between the trainer (train/, and compare, previews, the UIs) and a host: what a host must have,
and what it may have. Only for the type checker and readers: nothing here runs, no host inherits from it.

`Host` is what every host has (DiffusersHost, WebuiHost, ForgeHost and the tests' stand-ins; tests/typing_hosts.py
makes mypy check that they do). The small protocols after it are the optional members the trainer looks up with
hasattr/getattr, each present on some hosts only.
"""
from __future__ import annotations

import os
from typing import (TYPE_CHECKING, Callable, ContextManager, Dict, List, Optional, Protocol, Sequence, Tuple, TypedDict,
                    Union)

import torch

if TYPE_CHECKING:
    from PIL import Image

# A batch's text conditioning: a [B, 77, D] tensor (SD1/2), or SDXL's dict of tensors ("context"/"pooled" from
# diffusers, "crossattn"/"vector" from the webui and Forge).
Conditioning = Union[torch.Tensor, Dict[str, torch.Tensor]]


class _IdentityKeys(TypedDict):
    host: str              # "diffusers", "webui" or "forge"
    kind: str              # "sd1", "sd2" or "sdxl"
    name: str              # the model's name (file or folder name), else its kind
    path: Optional[str]    # where it was loaded from, when known
    prediction_type: str   # as Host.prediction_type
    unet_hash: str         # a short hash of the UNet: the webui's shorthash, else a fingerprint of its weights


class Identity(_IdentityKeys, total=False):
    """What identity() returns: the model a hypernetwork was trained on, stamped into its file and run folder."""
    cross_attention_dim: int  # diffusers only


class Host(Protocol):
    """What every host gives the trainer. Properties here are read-only for the trainer: a host may have a plain
    attribute or a property."""

    @property
    def unet(self) -> torch.nn.Module: ...  # the frozen UNet whose attention the hypernetwork hooks

    @property
    def device(self) -> torch.device: ...  # where the UNet runs and the trainer puts its tensors

    @property
    def dtype(self) -> torch.dtype: ...  # the UNet's own dtype (its weights', or the webui's)

    @property
    def alphas_cumprod(self) -> torch.Tensor: ...  # the training noise schedule, [num_train_timesteps] float32

    @property
    def prediction_type(self) -> str: ...  # "epsilon" or "v": what predict() returns

    @property
    def vae_key(self) -> str: ...  # names the VAE in the latent cache: a different VAE never reads old latents

    def encode_images(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the scaled latent Gaussian for [B, 3, H, W] pixels in [-1, 1]."""
        ...

    def encode_prompts(self, texts: Sequence[str]) -> Conditioning:
        """The texts' conditioning, one row (or one row of each tensor) per text, on the host's device."""
        ...

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The UNet's prediction (noise or v, as prediction_type says) for noisy latents at timesteps t."""
        ...

    def frozen_modules(self) -> Sequence[torch.nn.Module]:
        """The modules the trainer freezes (requires_grad off, eval mode) before training."""
        ...

    def identity(self) -> Identity:
        """The model, as saved in a hypernetwork's metadata and a run's files."""
        ...

    def model_dims(self) -> List[int]:
        """The context widths the UNet's attention reads, cross-attention first: a new hypernetwork's dims."""
        ...

    def sample(self, prompt: str, negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0,
               seed: int = 0, width: int = 512, height: int = 512, *,
               sampler_name: Optional[str] = None) -> Image.Image:
        """One preview image with the hooks as they are; `sampler_name` is passed only when one is chosen (the
        webui's samplers; the diffusers host keeps its pipeline's scheduler)."""
        ...


# ---------------------------------------------------------------------------------------------- optional members
class Checkpointing(Protocol):
    """Gradient checkpointing of the UNet, turned on for the run when the options ask for it and off after."""

    def enable_gradient_checkpointing(self) -> None: ...

    def disable_gradient_checkpointing(self) -> None: ...


class SkipsClip(Protocol):
    """Clip skip as the webui counts it (0: the host's default, 1: the last layer, 2: the penultimate...); the
    trainer sets it for the run and puts the value before back."""

    clip_skip: int


class SwapsVae(Protocol):
    """A VAE other than the model's for the run."""

    def use_vae(self, vae: Union[torch.nn.Module, str, os.PathLike]) -> torch.nn.Module:
        """Encode, decode and sample with `vae` (a module or a file); returns the one it replaced, which the trainer
        passes back after the run."""
        ...


class Releasing(Protocol):
    """Frees the VAE and/or text encoders once every latent and prompt is encoded."""

    def release(self, *, vae: bool, text: bool) -> Callable[[], None]:
        """Frees them (off the GPU, or dropped); returns what brings back what can come back."""
        ...


class HasPrecision(Protocol):
    """The precision context the host's own sampling runs in (the webui's devices.autocast())."""

    def precision(self) -> ContextManager[object]: ...


class ChecksTrainable(Protocol):
    """A host whose current mode cannot train (the webui's --lowvram) says so before step 0."""

    def check_trainable(self) -> None: ...  # raises HypernetError


class Closing(Protocol):
    """A host that changed its model for training (Forge's copy hooks) undoes that after the run."""

    def close(self) -> None: ...
