"""Loss functions, named by the `loss` key of config.json: f(output, target) -> scalar tensor."""

import torch
import torch.nn.functional as F


def nll_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood; `output` holds log-probabilities (B, C)."""
    return F.nll_loss(output, target)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; `output` holds raw scores (B, C)."""
    return F.cross_entropy(output, target)
