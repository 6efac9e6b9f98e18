"""Batches on their way to the device: the next one read and copied while the device still works on this one."""
from __future__ import annotations

import dataclasses

import torch


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on `device`; to CUDA from pinned memory without waiting, since a pageable copy there makes the
    host wait for the GPU to finish all its queued work."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class Staged:
    """The batch stream one batch ahead: stage() reads the next batch and starts its latents' copy to the device
    (from pinned memory, not waiting, on CUDA) while the device still works on the step before."""

    def __init__(self, batches, device: torch.device):
        self.batches = batches
        self.device = device
        self.staged = None

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.staged if self.staged is not None else self._copy(next(self.batches))
        self.staged = None
        return batch

    def stage(self) -> None:
        """Read the next batch now."""
        if self.staged is None:
            self.staged = self._copy(next(self.batches))

    def _copy(self, batch):
        """The batch with its latents and weights on their way to the device (CUDA only; elsewhere as it is)."""
        if self.device.type != "cuda":
            return batch
        weights = None if batch.weights is None else to_device(batch.weights, self.device)
        return dataclasses.replace(batch, latents=to_device(batch.latents, self.device), weights=weights)
