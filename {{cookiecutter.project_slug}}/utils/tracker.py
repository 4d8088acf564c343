"""Sample-weighted running averages of named metrics."""

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
