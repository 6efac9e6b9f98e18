"""The training objective as pure functions: noise, timesteps, noisy latents, what the UNet should predict, the loss.

Training, validation (validation.py) and the measure (probe.py) share them; nothing here reads options or a host.
"""
from __future__ import annotations

from typing import Optional

import torch


def _broadcast(alpha_bar: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The per-sample alpha_bar shaped [N, 1, 1, ...] to multiply a batch like `like`."""
    return alpha_bar.view(-1, *([1] * (like.dim() - 1)))


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a) * x0 + sqrt(1 - a) * noise, with a the cumulative alpha per sample."""
    a = _broadcast(alpha_bar, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the UNet should output: the noise (epsilon) or v = sqrt(a) * noise - sqrt(1 - a) * x0."""
    if prediction_type == "epsilon":
        return noise
    a = _broadcast(alpha_bar, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def predicted_x0(prediction_type: str, pred: torch.Tensor, x_t: torch.Tensor,
                 alpha_bar: torch.Tensor) -> torch.Tensor:
    """The clean latent a prediction implies: (x_t - sqrt(1 - a) * eps) / sqrt(a) from epsilon,
    sqrt(a) * x_t - sqrt(1 - a) * v from v."""
    a = _broadcast(alpha_bar, x_t)
    if prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
    return a.sqrt() * x_t - (1 - a).sqrt() * pred


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weight min(SNR, gamma) / SNR (or / (SNR + 1) for v), 1 when gamma is 0."""
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v" else clipped / snr


def sample_noise(shape, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus an optional per-channel offset (the 'noise offset' trick)."""
    noise = torch.randn(shape, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn((shape[0], shape[1]) + (1,) * (len(shape) - 2), generator=generator)
    return noise


def sample_timesteps(n: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform integer timesteps in [low, high)."""
    return torch.randint(low, high, (n,), generator=generator)


def per_sample_loss(pred: torch.Tensor, tgt: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean squared error over C, H, W for each sample, optionally weighted per pixel (normalised by weight sum)."""
    err = (pred.float() - tgt.float()) ** 2
    if weights is None:
        return err.mean(dim=tuple(range(1, err.dim())))
    w = weights.float().expand_as(err)
    return (err * w).sum(dim=tuple(range(1, err.dim()))) / w.sum(dim=tuple(range(1, err.dim()))).clamp_min(1e-8)


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """A generator that depends only on (seed, step, micro-batch), so a resumed run draws the same numbers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro) % (2 ** 63))
