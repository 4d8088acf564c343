"""Loss functions, named by the `loss` key of config.json: f(output, target) -> scalar tensor.

Extra keyword arguments come from `"loss": {"type": name, "args": {...}}`, e.g. class weights:
`{"type": "cross_entropy", "args": {"weight": [1.0, 2.0, 1.0]}}`.
"""

import torch
import torch.nn.functional as F


def nll_loss(output: torch.Tensor, target: torch.Tensor, weight: list[float] | None = None) -> torch.Tensor:
    """Mean negative log-likelihood; `output` holds log-probabilities (B, C); `weight`: one per class."""
    return F.nll_loss(output, target, weight=_on(weight, output))


def cross_entropy(output: torch.Tensor, target: torch.Tensor, weight: list[float] | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy; `output` holds raw scores (B, C); `weight`: one per class."""
    return F.cross_entropy(output, target, weight=_on(weight, output), label_smoothing=label_smoothing)


def _on(weight: list[float] | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if weight is None else torch.as_tensor(weight, dtype=like.dtype, device=like.device)
