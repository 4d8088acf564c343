"""How the batches of an epoch are served: `EpochBatches` (an epoch's order of samples as a
function of (seed, epoch), so that a resume, also on another number of processes, serves exactly
the batches still to train), `StopSafeDataLoader` (a DataLoader whose worker processes leave
SIGINT and SIGTERM to the training process, and which serves an in-memory dataset from a copy
on the device: `resident_tensors`). BaseDataLoader (base/base_data_loader.py) is built on them."""

import functools
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from engine.signals import ignore_stop_signals, stop_signals_blocked


class EpochBatches(Sampler[list[int]]):
    """The batches of one epoch: `indices` in an order that depends only on (`seed`, epoch) when
    shuffling, cut into batches of `batch_size`, those already trained left out.

    Because the order is a function of the epoch rather than of a generator's running state,
    a resumed run (at an epoch boundary or in the middle of one, skipping what was already
    trained) sees exactly the batches that an uninterrupted run sees.

    Under DDP (`world_size` > 1) each rank takes every `world_size`-th sample of that order,
    starting at its `rank`, as DistributedSampler does. With `pad`, the order is first padded
    (repeating its start) to a multiple of `world_size`, so that every rank has the same number
    of batches, which training needs; validation shards are left unpadded, so each sample
    counts once.

    Where an epoch resumes is a number of samples of its order (the same for every number of
    processes): once every rank trained `b` batches, the first `world_size * b * batch_size`
    samples of the order are trained, whichever rank took them. A resumed epoch shares the rest
    of the order out among the ranks in the same way (padded again where needed), so a resume
    on another number of processes still trains every sample once, and a resume on the same
    number serves exactly the batches an uninterrupted run would.
    """

    def __init__(self, indices: list[int], batch_size: int, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1, pad: bool = True) -> None:
        self.indices = indices
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 1
        self.start = 0  # samples of the epoch's order already trained
        self.skip = 0  # batches of this world size those samples fill: the first batch served is number `skip`

    def set_epoch(self, epoch: int, skip: int = 0, samples_done: int | None = None) -> None:
        """Serve `epoch` after its first `skip` batches (of this number of processes) or, when
        given, after the first `samples_done` samples of its order (trained on any number)."""
        if samples_done is None:
            samples_done = skip * self.batch_size * self.world_size
        self.epoch = epoch
        self.start = min(samples_done, len(self.indices))
        self.skip = self.batches_before(self.start)

    def batches_before(self, samples_done: int) -> int:
        """The batches each rank of this world size takes to train the first `samples_done`
        samples of an epoch's order (rounded up: the number the next batch is counted from)."""
        return math.ceil(min(samples_done, len(self.indices)) / (self.batch_size * self.world_size))

    def samples_after(self, batches_done: int) -> int:
        """The samples of the epoch's order trained once every rank trained its first
        `batches_done` batches of the epoch (counted from 0, as `skip` is)."""
        trained = self.start + (batches_done - self.skip) * self.batch_size * self.world_size
        return min(trained, len(self.indices))

    def samples_per_rank(self) -> int:
        return self._samples_per_rank(0)

    def _samples_per_rank(self, start: int) -> int:
        left = len(self.indices) - start
        if self.pad:
            return math.ceil(left / self.world_size)
        return len(range(self.rank, left, self.world_size))

    def batches_per_epoch(self) -> int:
        return math.ceil(self.samples_per_rank() / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self._samples_per_rank(self.start) / self.batch_size)

    def epoch_order(self) -> torch.Tensor:
        """This rank's sample indices for the rest of the epoch, in order."""
        order = torch.as_tensor(self.indices, dtype=torch.long)
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = order[torch.randperm(len(order), generator=generator)]
        rest = order[self.start :]
        if self.world_size > 1:
            if self.pad and len(rest) % self.world_size:
                # the epoch's first samples, repeated: for an epoch from its start the padding of
                # DistributedSampler; a resume on the same number of processes pads alike
                padding = self.world_size - len(rest) % self.world_size
                rest = torch.cat([rest, order.repeat(math.ceil(padding / len(order)))[:padding]])
            rest = rest[self.rank :: self.world_size]
        return rest

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order().tolist()
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for each epoch of a run, spread so that neighbouring epochs are unrelated."""
    return (seed * 1_000_003 + epoch * 7_919) % 2**63


def _init_worker(worker_id: int, then: Callable[[int], None] | None = None) -> None:
    ignore_stop_signals()  # the training process decides when to stop; see engine/signals.py
    if then is not None:
        then(worker_id)


class StopSafeDataLoader(DataLoader):
    """A DataLoader whose worker processes leave SIGINT and SIGTERM to the training process,
    so that a signal to the whole process group stops training cleanly instead of killing
    a worker under it.

    `keep_on(device)` (the trainer calls it) serves an in-memory TensorDataset from a copy on
    the device: see `resident_tensors`. `device_transform(batch, epoch, index)`, when a loader
    has one, is applied by the trainer to each batch once it is on the device (batched
    augmentation, conversion of uint8 images): `index` counts the epoch's batches from 0."""

    device_transform: Callable[[Any, int, int], Any] | None = None

    def __init__(self, *args: Any, worker_init_fn: Callable[[int], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=functools.partial(_init_worker, then=worker_init_fn), **kwargs)
        self.resident: tuple[torch.Tensor, ...] | None = None  # the dataset's tensors on the device

    def keep_on(self, device: torch.device) -> bool:
        """Index batches in the dataset's tensors on `device` from now on, if they can be kept
        there (see `resident_tensors`); True when they are. The batches are unchanged."""
        if self.resident is None and isinstance(self.sampler, EpochBatches) and self.batch_size is None:
            self.resident = resident_tensors(self.dataset, device, self.num_workers)
        return self.resident is not None

    def __iter__(self) -> Any:
        if self.resident is not None:
            return self._resident_batches(self.resident)
        if self.num_workers == 0:
            return super().__iter__()
        with stop_signals_blocked():  # the workers start with the signals blocked
            return super().__iter__()

    def _resident_batches(self, tensors: tuple[torch.Tensor, ...]) -> Iterator[list[torch.Tensor]]:
        """The sampler's batches, cut from `tensors` with one index copy per epoch."""
        assert isinstance(self.sampler, EpochBatches)
        order = self.sampler.epoch_order().to(tensors[0].device)
        size = self.sampler.batch_size
        for start in range(0, len(order), size):
            index = order[start : start + size]
            yield [tensor.index_select(0, index) for tensor in tensors]


# An in-memory dataset is copied to a GPU when all its tensors take at most this fraction of the
# GPU's free memory (the rest is for the model, its activations and the optimizer).
RESIDENT_FRACTION = 0.25
_resident_copies: "weakref.WeakKeyDictionary[Dataset, dict[torch.device, tuple[torch.Tensor, ...]]]" = (
    weakref.WeakKeyDictionary()
)


def resident_tensors(dataset: Dataset, device: torch.device, num_workers: int) -> tuple[torch.Tensor, ...] | None:
    """The tensors of `dataset` on `device`, when batches can be indexed there: a TensorDataset,
    no worker processes asked for, and, on a GPU, tensors within RESIDENT_FRACTION of its free
    memory (copied once and shared by the loaders of one dataset, e.g. training and held-out
    validation). On the CPU the tensors themselves. None otherwise: the loader then fetches
    batches on the host (pinned, on a GPU machine) and the trainer copies each ahead of use."""
    if not is_plain_tensor_dataset(dataset) or num_workers > 0:
        return None
    if device.type == "cpu":
        return tuple(dataset.tensors)
    copies = _resident_copies.setdefault(dataset, {})
    if device not in copies:
        size = sum(tensor.nbytes for tensor in dataset.tensors)
        if device.type != "cuda" or size > RESIDENT_FRACTION * torch.cuda.mem_get_info(device)[0]:
            return None
        copies[device] = tuple(tensor.to(device) for tensor in dataset.tensors)
    return copies[device]


def is_plain_tensor_dataset(dataset: Dataset) -> bool:
    """A TensorDataset whose samples are its tensors' rows as they are: a subclass that changes
    `__getitem__` (a transform per sample) is loaded sample by sample, through that method."""
    return isinstance(dataset, TensorDataset) and type(dataset).__getitem__ is TensorDataset.__getitem__
