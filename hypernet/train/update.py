"""One optimizer step on checked gradients: summed over the processes, the NaN guard, float16 loss scaling, clipping.

The guard reads one number per step back from the device (the sum of the loss and every gradient is finite exactly
when they all are), after the next batch is on its way.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import torch

from . import distributed, schedule


class Updater:
    """Backward, check and apply the optimizer's steps for `params` (float32 master weights) of one run."""

    def __init__(self, params: list, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler],
                 group: distributed.Group, stop: threading.Event, clip_schedule: Optional[list], clip_mode: str,
                 device):
        """`stop`: this process's stop request, agreed with the others at each all-reduce. `clip_schedule`: the
        parsed clip_grad_value (None: no clipping); `clip_mode`: "norm" or "value"."""
        self.params = params
        self.optimizer = optimizer
        self.scaler = scaler
        self.group = group
        self.stop = stop
        self.clip_schedule = clip_schedule
        self.clip_mode = clip_mode
        self.device = device
        self.stop_all = False  # data-parallel: a stop any process asked for, agreed at the last all-reduce
        self.overflowed = 0.0  # the loss scale of the last step if float16 scaling overflowed there, else 0

    def set_learning_rate(self, lr: float) -> None:
        """The rate of the next step, in every parameter group."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of `loss`, scaled first when float16 loss scaling is on."""
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def stopping(self) -> bool:
        """Whether to stop after this step; data-parallel processes stop together, at the step all agreed on."""
        return self.stop_all if self.group.active else self.stop.is_set()

    def checked_loss(self, loss: torch.Tensor) -> Optional[float]:
        """The step's mean loss when it and every (unscaled, summed across processes) gradient are finite, else None
        with the gradients dropped."""
        self.overflowed = 0.0
        total = self._all_reduce(float(loss)) if self.group.active else None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        value, grads = (float(v) for v in torch.stack([loss, self._grad_sum()]).tolist())
        value = value if total is None else total  # a non-finite loss anywhere makes the sum non-finite
        if math.isfinite(value) and math.isfinite(grads):
            return value
        # Non-finite gradients from a finite loss under float16 scaling: an overflow, which lowers the scale.
        self.overflowed = self._overflow_scale() if math.isfinite(value) else 0.0
        self._drop_gradients()
        return None

    def apply(self, step: int) -> None:
        """Clip and step on gradients known finite (already unscaled), then let the scaler raise its scale."""
        self._clip(step)
        self.optimizer.step()  # not scaler.step, which would read the inf check back once more
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _all_reduce(self, total: float) -> float:
        """Sum the gradients, losses and stop requests of every process (the gradients still scaled, so every
        process's GradScaler sees the same numbers); the summed loss, non-finite when any was."""
        device = distributed.collective_device(self.device)
        total, stops = distributed.sum_with_gradients(self.group, self.params, [total, self.stop.is_set()], device)
        self.stop_all = self.stop_all or stops > 0
        return total

    def _grad_sum(self) -> torch.Tensor:
        """The sum of every gradient, on the device: finite exactly when they all are (a float32 sum overflows only
        past gradients of 1e31, as unusable as inf), in one pass and one value to read back."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.stack([g.float().sum() for g in grads]).sum()

    def _overflow_scale(self) -> float:
        """The loss scale when non-finite gradients came from float16 loss scaling (a finite loss, a scale with room
        to come down), else 0: a true NaN, which the NaN guard counts."""
        if self.scaler is None:
            return 0.0
        scale = float(self.scaler.get_scale())
        return scale if scale > 1.0 else 0.0

    def _drop_gradients(self) -> None:
        """Forget a skipped step's gradients (and let the scaler lower its scale after an overflow)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()  # also resets the unscale bookkeeping for the next step

    def _clip(self, step: int) -> None:
        """Clip the gradients by norm or value at the schedule's value for this step, when clipping is on."""
        if self.clip_schedule is None:
            return
        value = schedule.value_at(self.clip_schedule, step)
        if self.clip_mode == "norm":
            torch.nn.utils.clip_grad_norm_(self.params, value)
        else:
            torch.nn.utils.clip_grad_value_(self.params, value)
