"""Base class of every data loader in data_loader/: a DataLoader with a validation split."""

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler
from torch.utils.data.dataloader import default_collate

from utils.errors import InputError

# The validation split is drawn with its own fixed seed, so it is the same for every run and
# every trainer.seed, and a resumed run validates on exactly the images it validated on before.
SPLIT_SEED = 0


class BaseDataLoader(DataLoader):
    """Loads `dataset` in batches, holding out `validation_split` of it (a fraction in [0, 1)
    or a number of samples) for `split_validation()`.

    Shuffling draws from `self.generator`, a torch.Generator seeded from the global torch RNG
    (so `trainer.seed` fixes it); the trainer saves and restores its state on resume.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        validation_split: float | int,
        num_workers: int,
        collate_fn: Callable[[list], Any] = default_collate,
        pin_memory: bool | None = None,
    ) -> None:
        train_indices, self.valid_indices = _split(len(dataset), validation_split)
        generator = torch.Generator()
        generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        sampler = SubsetRandomSampler(train_indices, generator=generator) if shuffle else train_indices
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        self._loader_args = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "collate_fn": collate_fn,
            "pin_memory": pin_memory,
            "persistent_workers": num_workers > 0,
        }
        super().__init__(dataset, sampler=sampler, generator=generator, **self._loader_args)

    def split_validation(self) -> DataLoader | None:
        """A loader over the held-out samples, in a fixed order; None without a split."""
        if not self.valid_indices:
            return None
        return DataLoader(self.dataset, sampler=self.valid_indices, **self._loader_args)


def _split(n_samples: int, validation_split: float | int) -> tuple[list[int], list[int]]:
    """Train and validation indices; the validation ones are a fixed random subset."""
    key = "config: 'data_loader.args.validation_split'"
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
        raise InputError(f"{key} must be a number, got {validation_split!r}")
    if isinstance(validation_split, int):
        if not 0 <= validation_split < n_samples:
            raise InputError(f"{key} must be a count from 0 to {n_samples - 1}, got {validation_split}")
        n_valid = validation_split
    else:
        if not 0.0 <= validation_split < 1.0:
            raise InputError(f"{key} must be a fraction in [0, 1), got {validation_split}")
        n_valid = int(n_samples * validation_split)
    permutation = torch.randperm(n_samples, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    valid = sorted(permutation[:n_valid])
    train = sorted(permutation[n_valid:])
    return train, valid
