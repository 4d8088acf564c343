"""One training batch's backward pass and, when due, the optimizer step: precision (autocast and
the fp16 gradient scaler), gradient accumulation, DDP's `no_sync`, clipping, and a per-step
learning-rate schedule."""

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from engine.lr_schedule import step_scheduler
from utils.errors import InputError


class OptimizerStep:
    """Backward and step for `model` (possibly wrapped in DDP) and `optimizer`, as the
    `trainer` config options say (`precision`, `accumulate_grad_batches`, `clip_grad_norm`).
    Without an optimizer (evaluation) only `autocast` is of use."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, options: dict[str, Any],
                 device: torch.device, scheduler: Any = None, scheduler_interval: str | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.accumulate: int = options["accumulate_grad_batches"]
        self.clip_grad_norm: float | None = options["clip_grad_norm"]
        self.precision: str = options["precision"]
        if self.precision == "fp16" and device.type != "cuda":
            raise InputError("config: 'trainer.precision' is 'fp16', which needs a CUDA GPU; use 'bf16' or 'fp32'")
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.scheduler = scheduler if scheduler_interval == "step" else None
        self.steps_taken = 0  # optimizer steps taken by this process (skipped fp16 steps not counted)

    def autocast(self) -> AbstractContextManager:
        """The mixed-precision context of `trainer.precision` (a no-op for fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def is_due(self, batches_done: int, batches_per_epoch: int) -> bool:
        """Whether the optimizer steps after the `batches_done`-th batch of an epoch: every
        `accumulate_grad_batches` batches, and after the last batch of the epoch."""
        return batches_done % self.accumulate == 0 or batches_done == batches_per_epoch

    def backward(self, loss: torch.Tensor, step: bool) -> None:
        """Backward pass of one batch's loss (divided by `accumulate_grad_batches`, so that the
        accumulated gradient is the mean over the batches), then, when `step`, the optimizer
        step. Under DDP the gradients are averaged across ranks only on a stepping backward."""
        if self.accumulate > 1:
            loss = loss / self.accumulate
        no_sync = getattr(self.model, "no_sync", None)  # DistributedDataParallel's
        with no_sync() if no_sync is not None and not step else nullcontext():
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        if step:
            self._step()

    def _step(self) -> None:
        """Clip (after unscaling), step, zero the gradients, and step a per-step schedule when
        the optimizer really stepped (the fp16 scaler skips steps with inf/NaN gradients)."""
        assert self.optimizer is not None, "an evaluation-only trainer does not step"
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        stepped = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale  # a lowered scale: the step was skipped
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if stepped:
            self.steps_taken += 1
            if self.scheduler is not None:
                step_scheduler(self.scheduler)
