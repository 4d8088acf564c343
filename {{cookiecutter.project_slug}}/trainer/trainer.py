"""Trainer: what one training batch and one validation batch do. The loop around them, with
exact resume, stops, saves, DDP, precision and accumulation, is BaseTrainer's."""

from base import BaseTrainer
from base.base_trainer import Batch, StepResult


class Trainer(BaseTrainer):
    """Batches of `(data, target)`: the model maps data to outputs (B, num_classes), the loss
    compares them with the targets (B,). To train differently (another batch layout, an extra
    loss term), subclass this and override `train_step` and `valid_step`."""

    def train_step(self, batch: Batch) -> StepResult:
        data, target = batch
        output = self.model(data)
        return self.criterion(output, target), output, target

    def valid_step(self, batch: Batch) -> StepResult:
        data, target = batch
        output = self.raw_model(data)  # not through DDP: processes validate different numbers of batches
        return self.criterion(output, target), output, target
