"""Base class of every data loader in data_loader/: a DataLoader with a validation split, whose
batches engine/batches.py serves (an order exact on resume, workers safe from stop signals)."""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.dataloader import default_collate

from base.preprocessing import IMAGE_SUFFIXES, Preprocessing, read_image_file
from engine import distributed
from engine.batches import EpochBatches, StopSafeDataLoader, epoch_seed, is_plain_tensor_dataset
from utils.errors import InputError

# The validation split is drawn with its own fixed seed, so it is the same for every run and
# every trainer.seed, and a resumed run validates on exactly the images it validated on before.
SPLIT_SEED = 0

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class BaseDataLoader(StopSafeDataLoader):
    """Loads `dataset` in batches, holding out `validation_split` of it (a fraction in [0, 1)
    or a number of samples) for `split_validation()`.

    The training batches come from an `EpochBatches` sampler whose `seed` is drawn from the
    global torch RNG (so `trainer.seed` fixes it) and saved in checkpoints; the trainer calls
    `set_epoch` before every epoch (with the samples already trained, for a resumed one). The
    generator of worker seeds is reseeded every epoch too, so random augmentations in worker
    processes also depend only on (seed, epoch).

    What a checkpoint keeps of the loader, so that the model can be used with the file alone
    (predict.py, export.py; docs/use-the-model.md): `classes`, the class names in label order
    (None: the labels' numbers name them), and `preprocessing()`, how evaluation turns an input
    into the model's; `read_inputs` turns a file into those inputs again.
    """

    classes: list[str] | None = None  # class names in label order, where the loader knows them

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        validation_split: float | int,
        num_workers: int,
        collate_fn: Callable[[list], Any] = default_collate,
        pin_memory: bool | None = None,
        valid_dataset: Dataset | None = None,
    ) -> None:
        """`valid_dataset`: validate on this separate dataset instead of holding out part of
        `dataset` (`validation_split` is then ignored)."""
        self.valid_dataset = valid_dataset
        self.train_indices, self.valid_indices = _split(len(dataset), 0 if valid_dataset else validation_split)
        seed = distributed.broadcast(int(torch.randint(0, 2**62, (1,)).item()))  # one order for all ranks
        self.batches = EpochBatches(self.train_indices, batch_size, shuffle, seed,
                                    distributed.rank(), distributed.world_size())
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        self._collate_fn = collate_fn
        self._loader_args = {"num_workers": num_workers, "pin_memory": pin_memory}
        super().__init__(dataset, generator=torch.Generator(), **self._batching(self.batches, dataset),
                         **self._loader_args)

    @property
    def seed(self) -> int:
        return self.batches.seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self.batches.seed = seed

    def adapt_to_model(self, model: nn.Module) -> None:
        """Take from the model what the inputs depend on, before the first batch: train.py,
        test.py and export.py call it once the model is built (the image-folder loader takes the
        normalisation of pretrained weights, `model.normalization`). This default takes nothing."""

    def preprocessing(self) -> dict[str, Any] | None:
        """How evaluation turns one input into the model's input, as plain data that every
        checkpoint stores: for images, `Preprocessing(...).to_dict()` (base/preprocessing.py).
        None (this default): the loader does not say, and predict.py and export.py refuse its
        checkpoints in one line."""
        return None

    @classmethod
    def read_inputs(cls, path: Path, preprocessing: dict[str, Any]) -> torch.Tensor | None:
        """The model's inputs held by the file at `path`, float32 `(N, ...)`, exactly as
        evaluation feeds them, for `preprocessing` (what `preprocessing()` returned, read back
        from a checkpoint); None for a file this loader does not read (predict.py skips and
        counts it). A file it reads but cannot decode is an InputError naming it. This default
        reads one image per file (IMAGE_SUFFIXES) with PIL, as the `Preprocessing` says; a
        loader that decodes its own way, or reads other files, overrides it."""
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return None
        described = Preprocessing.from_dict(preprocessing, f"data loader {cls.__name__}")
        return described.prepare(read_image_file(path, described.channels).unsqueeze(0))

    def set_epoch(self, epoch: int, skip: int = 0, samples_done: int | None = None) -> None:
        """Serve the batches of `epoch` not trained yet: all but its first `skip` batches (of
        this number of processes) or, when given, all but the first `samples_done` samples of
        its order (trained on any number of processes: see EpochBatches). The first batch
        served is then number `first_batch()` of the epoch (from 0)."""
        self.batches.set_epoch(epoch, skip, samples_done)
        assert self.generator is not None
        self.generator.manual_seed(epoch_seed(self.seed + 1, epoch))

    def first_batch(self) -> int:
        """The number (from 0) in its epoch of the first batch served: the batches already trained."""
        return self.batches.skip

    def batches_before(self, samples_done: int) -> int:
        """The batches per process that the first `samples_done` samples of an epoch's order
        fill on this number of processes (rounded up)."""
        return self.batches.batches_before(samples_done)

    def samples_after(self, batches_done: int) -> int:
        """The samples of this epoch's order trained once every process trained its first
        `batches_done` batches of it: the position a checkpoint records."""
        return self.batches.samples_after(batches_done)

    def batches_per_epoch(self) -> int:
        return self.batches.batches_per_epoch()

    def epoch_batch(self, index: int) -> tuple[Any, list[int]]:
        """Batch `index` (from 0) of the current epoch fetched again, as this process was served
        it (on the host, before any `device_transform`), and the dataset indices of its samples:
        to look at a batch after it was trained (one whose loss was NaN)."""
        size = self.batches.batch_size
        first = (index - self.batches.skip) * size
        indices = self.batches.epoch_order()[first : first + size].tolist()
        if self._fetches_whole_batches(self.dataset):
            return list(self.dataset[indices]), indices
        return self._collate_fn([self.dataset[i] for i in indices]), indices

    def max_label(self) -> int | None:
        """The largest class label of the training and validation data, when the datasets can
        tell without loading samples (a TensorDataset whose last tensor holds integer labels,
        or a dataset with `targets`, as torchvision's have); None when neither can tell."""
        labels = [_max_label(dataset) for dataset in (self.dataset, self.valid_dataset) if dataset is not None]
        return max((label for label in labels if label is not None), default=None)

    def sample_batch(self) -> Any:
        """A batch of the first training sample alone, collated as the loader's batches are
        (for checks that the model fits the data; no worker is started); None without samples."""
        if not self.train_indices:
            return None
        return self._collate_fn([self.dataset[self.train_indices[0]]])

    def _fetches_whole_batches(self, dataset: Dataset) -> bool:
        """Tensors in memory are fetched a batch at a time (one indexing per tensor) rather than
        sample by sample and stacked by the collate function: the same batches, far cheaper."""
        return is_plain_tensor_dataset(dataset) and self._collate_fn is default_collate

    def _batching(self, batches: Iterable[list[int]], dataset: Dataset) -> dict[str, Any]:
        if self._fetches_whole_batches(dataset):
            return {"sampler": batches, "batch_size": None, "collate_fn": None}
        return {"batch_sampler": batches, "collate_fn": self._collate_fn}

    def split_validation(self) -> DataLoader | None:
        """A loader over the held-out samples (or `valid_dataset`), in a fixed order; None
        without either."""
        dataset = self.dataset
        indices = self.valid_indices
        if self.valid_dataset is not None:
            dataset = self.valid_dataset
            indices = list(range(len(dataset)))  # type: ignore[arg-type]
        if not indices:
            return None
        batches = EpochBatches(indices, self.batches.batch_size, shuffle=False, seed=0,
                               rank=distributed.rank(), world_size=distributed.world_size(), pad=False)
        # its own generator (of worker seeds), so that validating draws nothing from the global RNG
        return StopSafeDataLoader(dataset, generator=torch.Generator(), **self._batching(batches, dataset),
                                  **self._loader_args)


def _max_label(dataset: Dataset) -> int | None:
    labels = dataset.tensors[-1] if isinstance(dataset, TensorDataset) else getattr(dataset, "targets", None)
    if isinstance(labels, list) and labels and all(type(label) is int for label in labels):
        return max(labels)
    if isinstance(labels, torch.Tensor) and labels.dim() == 1 and labels.numel() and labels.dtype in INTEGER_DTYPES:
        return int(labels.max())
    return None  # no labels, or not class indices (floats, one-hot, masks): nothing to check


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
