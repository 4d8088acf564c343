"""Sample-weighted running averages of named metrics."""

from collections.abc import Sequence
from typing import Any

import torch

from engine import distributed

# How many of the latest batches' values the tracker keeps (for the NaN check, which reads them
# at least this often).
RECENT_BATCHES = 20


class MetricTracker:
    """Averages each metric over an epoch, weighting every batch by its number of samples.

    A batch's values go into one row of a small buffer on their device (one stack) and are
    added to the sums from there (one add): two kernels per batch whatever the number of
    metrics, and no device synchronisation. Reading (`average`, `result`) synchronises once.
    The buffer keeps the last RECENT_BATCHES rows, so that `first_nonfinite` can tell which
    batch had a NaN loss without a check per batch.
    """

    def __init__(self, *keys: str) -> None:
        self.keys = keys
        self.reset()

    def reset(self) -> None:
        self._sums: torch.Tensor | None = None  # (len(keys),) float32, on the values' device
        self._counts = [0] * len(self.keys)
        self._recent: torch.Tensor | None = None  # (RECENT_BATCHES, len(keys)) the latest rows
        self.updates = 0  # batches added since reset or load_state

    def update_batch(self, values: Sequence[torch.Tensor], n: int) -> None:
        """Add one batch: a mean over its `n` samples for every key, in the order of `keys`."""
        first = values[0] if isinstance(values[0], torch.Tensor) else torch.as_tensor(values[0])
        if self._recent is None:
            self._recent = torch.zeros(RECENT_BATCHES, len(self.keys), device=first.device)
        if self._sums is None:
            self._sums = torch.zeros(len(self.keys), device=first.device)
        values = [_as_float32(value, first.device) for value in values]
        row = self._recent[self.updates % RECENT_BATCHES]
        torch.stack(values, out=row)
        self._sums.add_(row, alpha=n)
        self._counts = [count + n for count in self._counts]
        self.updates += 1

    def first_nonfinite(self, key: str) -> int | None:
        """Of the last RECENT_BATCHES updates, the number (0-based, since reset) of the first
        whose `key` was NaN or infinite; None when all were finite. Reads the device once."""
        if self._recent is None:
            return None
        finite = torch.isfinite(self._recent[:, self.keys.index(key)]).tolist()
        latest = self.updates - 1
        bad = [latest - (latest - slot) % RECENT_BATCHES for slot, ok in enumerate(finite) if not ok]
        return min((number for number in bad if number >= 0), default=None)

    def sum_across_ranks(self, device: torch.device) -> None:
        """Replace this process's sums and counts by those of all DDP ranks together, so that
        every rank's averages are over every sample (no-op in a single process)."""
        if not distributed.active():
            return
        sums = self._sums.double() if self._sums is not None else torch.zeros(len(self.keys), dtype=torch.float64,
                                                                                device=device)
        counts = torch.tensor(self._counts, dtype=torch.float64, device=sums.device)
        packed = distributed.sum_across_ranks(torch.cat([sums, counts]))
        n = len(self.keys)
        self._sums = packed[:n].float()
        self._counts = [int(count) for count in packed[n:].tolist()]

    def average(self, key: str) -> float:
        index = self.keys.index(key)
        count = self._counts[index]
        return float(self._sums[index]) / count if count and self._sums is not None else float("nan")

    def result(self) -> dict[str, float]:
        sums = self._sums.tolist() if self._sums is not None else [0.0] * len(self.keys)
        return {key: total / count if count else float("nan")
                for key, total, count in zip(self.keys, sums, self._counts, strict=True)}

    def state(self) -> dict[str, Any]:
        """This process's running sums and counts, for a checkpoint written in the middle of an
        epoch (under DDP the trainer saves every rank's, so that each continues its own sums
        exactly as an uninterrupted run would)."""
        sums = self._sums.cpu() if self._sums is not None else torch.zeros(len(self.keys))
        return {"sums": dict(zip(self.keys, sums.unbind(), strict=True)),
                "counts": dict(zip(self.keys, self._counts, strict=True))}

    def load_state(self, state: dict[str, Any], device: torch.device) -> None:
        self.reset()
        self._sums = torch.stack([torch.as_tensor(state["sums"][key], dtype=torch.float32) for key in self.keys])
        self._sums = self._sums.to(device)
        self._counts = [int(state["counts"][key]) for key in self.keys]

    @staticmethod
    def merged(states: list[dict[str, Any]]) -> dict[str, Any]:
        """The sums and counts of several saved states together (a resume on another number of
        DDP processes continues from the total in one of them)."""
        first = states[0]
        return {"sums": {key: sum(state["sums"][key] for state in states) for key in first["sums"]},
                "counts": {key: sum(state["counts"][key] for state in states) for key in first["counts"]}}


def _as_float32(value: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """A batch value as a detached 0-d float32 tensor on `device` (the loss's): a Python number,
    a one-element tensor or a tensor on another device from a user's metric are accepted too."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.dim() == 0 and value.device == device:
        return value.detach()
    return torch.as_tensor(value).detach().to(device=device, dtype=torch.float32).reshape(())
