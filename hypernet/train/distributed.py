"""Data-parallel training over torch.distributed (`torchrun --nproc_per_node N -m hypernet train ...`).

Every process holds the whole frozen model and the same hypernetwork, draws the same global batch (batch_size x
world size images) with the same noise and timesteps, and computes the loss of its own shard of it. One
all-reduce (NCCL on CUDA, gloo on CPU) sums the gradients before each optimizer step, so every process takes the
same step, and the run equals one process training with the global batch. Process 0 alone writes files.

The hypernetwork is not called as a module (it runs inside hooks on the UNet), which DistributedDataParallel's
forward wrapper assumes; so the trainer reduces one flat gradient buffer itself, as DDP does per bucket.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass
class Group:
    """This process's place among the training processes; one process alone is Group(0, 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files (process 0)."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This process's contiguous part of n samples; the parts differ in size by at most one."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over every process, in place."""
        if self.active:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Process `src`'s `tensor` in every process, in place."""
        if self.active:
            torch.distributed.broadcast(tensor, src)
        return tensor

    def broadcast_int(self, value: int, device=None) -> int:
        """Process 0's value of an integer (a seed drawn at random, for instance)."""
        if not self.active:
            return int(value)
        return int(self.broadcast(torch.tensor([int(value)], dtype=torch.int64, device=device))[0])

    @contextlib.contextmanager
    def writer_first(self):
        """Run the block in process 0 first, then in the others (which then find what it wrote, a cache)."""
        if self.active and not self.writer:
            torch.distributed.barrier()
        yield
        if self.active and self.writer:
            torch.distributed.barrier()


def collective_device(device) -> torch.device:
    """Where collectives run for a model on `device`: NCCL needs CUDA tensors, gloo takes CPU ones."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def sum_with_gradients(group: Group, params: list, values: list, device) -> list:
    """Sum every parameter's gradient (a missing one as zeros) and `values` over every process in one flat buffer
    on `device`, as DDP does per bucket; the gradients are replaced by their sums, the summed values returned."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
                     + [torch.tensor([float(v) for v in values]).to(params[0].device)])
    flat = group.all_reduce_sum(flat.to(device))
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.device, p.dtype).clone()
        offset += p.numel()
    return [float(v) for v in flat[offset:]]


def current() -> Group:
    """The initialised process group's view of this process; Group() when there is none."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Group(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Group()


def launched() -> bool:
    """Whether a launcher (torchrun) started several processes: WORLD_SIZE > 1 in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: str) -> Group:
    """Join the process group a launcher describes in RANK / WORLD_SIZE / MASTER_ADDR (NCCL for CUDA, gloo for
    CPU); Group() when there is no launcher."""
    if not launched():
        return Group()
    if not torch.distributed.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(torch.device(device))
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return current()


def close() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
