"""Sample-weighted running averages of named metrics."""

from typing import Any

import torch

from utils import distributed


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

    def sum_across_ranks(self, device: torch.device) -> None:
        """Replace this process's sums and counts by those of all DDP ranks together, so that
        every rank's averages are over every sample (no-op in a single process)."""
        if not distributed.active():
            return
        sums = [torch.as_tensor(self._sums[key], dtype=torch.float64, device=device) for key in self.keys]
        counts = [torch.tensor(float(self._counts[key]), dtype=torch.float64, device=device) for key in self.keys]
        packed = distributed.sum_across_ranks(torch.stack(sums + counts))
        n = len(self.keys)
        self._sums = {key: packed[i].float() for i, key in enumerate(self.keys)}
        self._counts = {key: int(packed[n + i].item()) for i, key in enumerate(self.keys)}

    def average(self, key: str) -> float:
        count = self._counts[key]
        return float(self._sums[key]) / count if count else float("nan")

    def result(self) -> dict[str, float]:
        return {key: self.average(key) for key in self.keys}

    def state(self) -> dict[str, Any]:
        """This process's running sums and counts, for a checkpoint written in the middle of an
        epoch (under DDP the trainer saves every rank's, so that each continues its own sums
        exactly as an uninterrupted run would)."""
        sums = {key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in self._sums.items()}
        return {"sums": sums, "counts": dict(self._counts)}

    def load_state(self, state: dict[str, Any], device: torch.device) -> None:
        self._sums = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                      for key, value in state["sums"].items()}
        self._counts = dict(state["counts"])

    @staticmethod
    def merged(states: list[dict[str, Any]]) -> dict[str, Any]:
        """The sums and counts of several saved states together (a resume on another number of
        DDP processes continues from the total in one of them)."""
        first = states[0]
        return {"sums": {key: sum(state["sums"][key] for state in states) for key in first["sums"]},
                "counts": {key: sum(state["counts"][key] for state in states) for key in first["counts"]}}
