"""Sample-weighted running averages of named metrics."""

from typing import Any

import torch


class MetricTracker:
    """Averages each metric over an epoch, weighting every batch by its number of samples.

    Values stay tensors (on whatever device they were computed) until read, so updating
    costs no device synchronisation; reading one (`average`, `result`) synchronises once.
    """

    def __init__(self, *keys: str) -> None:
        self.keys = keys
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {key: 0.0 for key in self.keys}
        self._counts: dict[str, int] = {key: 0 for key in self.keys}

    def update(self, key: str, value: torch.Tensor | float, n: int = 1) -> None:
        """Add a batch mean `value` computed over `n` samples."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        self._sums[key] = self._sums[key] + value * n
        self._counts[key] += n

    def average(self, key: str) -> float:
        count = self._counts[key]
        return float(self._sums[key]) / count if count else float("nan")

    def result(self) -> dict[str, float]:
        return {key: self.average(key) for key in self.keys}

    def state(self) -> dict[str, Any]:
        """The running sums and counts, for a checkpoint written in the middle of an epoch."""
        sums = {key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in self._sums.items()}
        return {"sums": sums, "counts": dict(self._counts)}

    def load_state(self, state: dict[str, Any], device: torch.device) -> None:
        self._sums = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                      for key, value in state["sums"].items()}
        self._counts = dict(state["counts"])
