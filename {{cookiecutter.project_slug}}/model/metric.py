"""Metrics, named by the `metrics` list of config.json: f(output, target) -> batch mean.

Each returns a 0-d tensor (no `.item()`, so no device synchronisation per batch); the
trainer averages them over an epoch weighted by the number of samples in each batch.
"""

import torch


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target."""
    return (output.argmax(dim=1) == target).float().mean()


def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Fraction of samples whose target is among the `k` highest-scoring classes."""
    if k > output.size(1):  # topk's own error names neither the metric nor the class count
        raise ValueError(f"top-k with k={k} needs at least {k} classes, the model outputs {output.size(1)}")
    top_k = output.topk(k, dim=1).indices  # (B, k)
    return (top_k == target.unsqueeze(1)).any(dim=1).float().mean()
