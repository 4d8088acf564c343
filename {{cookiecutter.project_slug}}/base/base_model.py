"""Base class of every model in model/model.py."""

from abc import ABC, abstractmethod

import torch
from torch import nn


class BaseModel(nn.Module, ABC):
    """An nn.Module whose `forward` must be written, and whose `str()` ends with the count
    of trainable parameters."""

    @abstractmethod
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The forward pass."""

    def num_trainable_parameters(self) -> int:
        return count_parameters(self)[1]

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrainable parameters: {self.num_trainable_parameters():,}"


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable ones) of `model`, counted in numbers."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)
