"""Trainer (trainer): what one training batch and one validation batch do (`train_step`,
`valid_step`), the place to change how the model is trained; the loop around them is
BaseTrainer's (base/)."""

from trainer.trainer import Trainer

__all__ = ["Trainer"]
