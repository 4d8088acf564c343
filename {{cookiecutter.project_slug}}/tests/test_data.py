"""The data loader: validation split, determinism, the MNIST tensors, and input files turned into
exactly the tensors that evaluation feeds the model (the preprocessing a checkpoint keeps)."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from base import BaseDataLoader
from base.preprocessing import Preprocessing
from data_loader import MnistDataLoader
from data_loader.mnist_files import read_idx
from utils.errors import InputError


def test_validation_split_is_fixed_whatever_the_seed(mnist_dir: Path) -> None:
    torch.manual_seed(1)
    first = MnistDataLoader(str(mnist_dir), batch_size=32, validation_split=0.1)
    torch.manual_seed(2)
    second = MnistDataLoader(str(mnist_dir), batch_size=32, validation_split=0.1)
    assert first.valid_indices == second.valid_indices and len(first.valid_indices) == 40
    valid = first.split_validation()
    assert valid is not None and sum(len(target) for _, target in valid) == 40
    assert sum(len(target) for _, target in first) == 360
    assert not set(first.valid_indices) & set(first.train_indices)


def test_the_batch_order_depends_on_the_seed_and_epoch_only(mnist_dir: Path) -> None:
    loader = MnistDataLoader(str(mnist_dir), batch_size=50)

    def labels(epoch: int, skip: int = 0) -> list[torch.Tensor]:
        loader.set_epoch(epoch, skip)
        return [target for _, target in loader]

    first = labels(1)
    assert len(first) == loader.batches_per_epoch() == 8
    labels(2)
    again = labels(1)  # epoch 1 again, after another epoch: the same batches
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, labels(2), strict=True))
    rest = labels(1, skip=3)  # a resume after 3 batches serves the other 5
    assert len(rest) == len(loader) == 5
    assert all(torch.equal(a, b) for a, b in zip(first[3:], rest, strict=True))
    loader.seed += 1
    assert not all(torch.equal(a, b) for a, b in zip(first, labels(1), strict=True))


class SampleBySample(Dataset):
    """The same samples, but not a TensorDataset: loaded one by one and collated."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]


@pytest.mark.parametrize("shuffle", [True, False])
def test_whole_batch_fetching_gives_the_batches_of_sample_by_sample_loading(mnist_dir: Path, shuffle: bool) -> None:
    tensors = MnistDataLoader(str(mnist_dir), batch_size=32).dataset
    loaders = []
    for dataset in (tensors, SampleBySample(tensors)):
        torch.manual_seed(7)  # the shuffle generator is seeded from the global RNG
        loaders.append(BaseDataLoader(dataset, batch_size=48, shuffle=shuffle, validation_split=0.1, num_workers=0))
    fast, slow = loaders
    assert fast._fetches_whole_batches(fast.dataset) and not slow._fetches_whole_batches(slow.dataset)
    for fast_loader, slow_loader in ((fast, slow), (fast.split_validation(), slow.split_validation())):
        fast_batches, slow_batches = list(fast_loader), list(slow_loader)
        assert len(fast_batches) == len(slow_batches) == len(fast_loader)
        for (data, target), (data_slow, target_slow) in zip(fast_batches, slow_batches, strict=True):
            assert torch.equal(data, data_slow) and torch.equal(target, target_slow)


def test_images_are_normalised_tensors(mnist_dir: Path) -> None:
    data, target = next(iter(MnistDataLoader(str(mnist_dir), batch_size=8, shuffle=False, training=False)))
    assert data.shape == (8, 1, 28, 28) and data.dtype == torch.float32
    assert target.dtype == torch.int64
    assert -0.5 < data.min().item() < 0 and data.max().item() > 2.5  # (x / 255 - 0.1307) / 0.3081


def test_an_idx_file_gives_exactly_the_tensors_that_evaluation_feeds_the_model(mnist_dir: Path) -> None:
    loader = MnistDataLoader(str(mnist_dir), batch_size=8, shuffle=False, training=False)
    assert loader.classes == [str(digit) for digit in range(10)]
    inputs = MnistDataLoader.read_inputs(mnist_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte", loader.preprocessing())
    assert inputs is not None and torch.equal(inputs, loader.dataset.tensors[0])  # type: ignore[attr-defined]
    assert MnistDataLoader.read_inputs(mnist_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte",
                                       loader.preprocessing()) is None  # labels: not an input


def test_a_digit_image_is_converted_as_the_training_digits_are(mnist_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    preprocessing = MnistDataLoader(str(mnist_dir), batch_size=8, training=False).preprocessing()
    digits = read_idx(mnist_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte", ndim=3)[:3].numpy()
    from_idx = MnistDataLoader.read_inputs(mnist_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte", preprocessing)
    assert from_idx is not None
    for index, digit in enumerate(digits):
        Image.fromarray(digit).save(tmp_path / f"{index}.png")
        from_png = MnistDataLoader.read_inputs(tmp_path / f"{index}.png", preprocessing)
        assert from_png is not None and torch.equal(from_png, from_idx[index : index + 1])
    # a colour photo of another size: grey, 28x28, normalised alike
    Image.fromarray(np.repeat(np.kron(digits[0], np.ones((3, 3), np.uint8))[:, :, None], 3, axis=2)).save(
        tmp_path / "big.jpg", quality=95)
    big = MnistDataLoader.read_inputs(tmp_path / "big.jpg", preprocessing)
    assert big is not None and big.shape == (1, 1, 28, 28) and big.dtype == torch.float32
    assert (big - from_idx[:1]).abs().mean() < 0.2  # the same digit, give or take resampling and JPEG
    (tmp_path / "notes.txt").write_text("not an image")
    assert MnistDataLoader.read_inputs(tmp_path / "notes.txt", preprocessing) is None
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match=r"image .*broken.png cannot be decoded"):
        MnistDataLoader.read_inputs(tmp_path / "broken.png", preprocessing)


def test_a_preprocessing_description_round_trips_and_is_carried_out_as_it_says() -> None:
    photo = Preprocessing(channels=3, resize="shorter_side", resize_size=36, crop_size=32, interpolation="bicubic",
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    saved = json.loads(json.dumps(photo.to_dict()))  # plain data, as checkpoints and export files hold it
    assert Preprocessing.from_dict(saved, "checkpoint 'x.pth'") == photo and photo.input_size == (3, 32, 32)
    wide = torch.full((1, 3, 40, 80), 255, dtype=torch.uint8)
    prepared = photo.prepare(wide)  # shorter side 40 -> 36 (80 -> 72), then the centre 32 x 32
    assert prepared.shape == (1, 3, 32, 32) and prepared.dtype == torch.float32
    expected = (1 - torch.tensor(photo.mean)) / torch.tensor(photo.std)
    assert torch.allclose(prepared[0, :, 16, 16], expected)
    stretched = Preprocessing(channels=1, resize_size=8, mean=(0.5,), std=(0.5,)).prepare(
        torch.zeros(2, 1, 4, 12, dtype=torch.uint8))
    assert stretched.shape == (2, 1, 8, 8) and torch.equal(stretched, torch.full_like(stretched, -1.0))


@pytest.mark.parametrize(("changes", "message"), [
    ({"channels": 2}, "'channels' must be 1 (grey) or 3 (RGB), got 2"),
    ({"resize": "fit"}, "'resize' must be one of stretch, shorter_side, got 'fit'"),
    ({"resize": "shorter_side"}, "'shorter_side' keeps the aspect ratio, so it needs a 'crop_size'"),
    ({"crop_size": 40}, "'crop_size' must be null or a whole number of pixels up to resize_size, got 40"),
    ({"std": [0.0]}, "'mean' and 'std' must hold one finite number per channel (1), std above 0"),
    ({"mean": [0.5, 0.5]}, "'mean' and 'std' must hold one finite number per channel (1)"),
    ({"size": 28}, "its preprocessing is not an image description of base/preprocessing.py"),
])
def test_a_bad_preprocessing_description_is_one_line_naming_the_key(changes: dict[str, Any], message: str) -> None:
    described = {**Preprocessing(channels=1, resize_size=28, mean=(0.1,), std=(0.3,)).to_dict(), **changes}
    with pytest.raises(InputError) as refused:
        Preprocessing.from_dict(described, "checkpoint 'x.pth'")
    assert str(refused.value).startswith("checkpoint 'x.pth': ") and message in str(refused.value)


@pytest.mark.parametrize(("split", "message"), [(1.5, "fraction in"), (400, "count from 0 to 399"), ("x", "number")])
def test_bad_validation_split_is_refused(mnist_dir: Path, split: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        MnistDataLoader(str(mnist_dir), batch_size=32, validation_split=split)  # type: ignore[arg-type]


def batches_of(loader: Any, epoch: int, skip: int = 0, samples_done: int | None = None) -> list[list[torch.Tensor]]:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch, skip, samples_done)
    else:
        loader.sampler.set_epoch(epoch, skip, samples_done)
    return [[part.cpu() for part in batch] for batch in loader]


def assert_same_batches(expected: list[list[torch.Tensor]], actual: list[list[torch.Tensor]]) -> None:
    assert len(expected) == len(actual)
    for batch, other in zip(expected, actual, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(batch, other, strict=True))


def resident_and_host_loaders(mnist_dir: Path, device: torch.device, **ddp: int) -> tuple[Any, Any]:
    """Two MnistDataLoaders with the same seed, the first serving from `device` (keep_on)."""
    loaders = []
    for _ in range(2):
        torch.manual_seed(5)
        loaders.append(MnistDataLoader(str(mnist_dir), batch_size=48, validation_split=0.1))
    resident, host = loaders
    if ddp:  # a rank's share of the order, as under torchrun
        for loader in loaders:
            loader.batches.rank, loader.batches.world_size = ddp["rank"], ddp["world_size"]
    assert resident.keep_on(device) and host.resident is None
    return resident, host


@pytest.mark.parametrize("ddp", [{}, {"rank": 1, "world_size": 3}])
def test_batches_indexed_in_memory_equal_the_data_loaders_batches(mnist_dir: Path, ddp: dict[str, int]) -> None:
    resident, host = resident_and_host_loaders(mnist_dir, torch.device("cpu"), **ddp)
    # a new order every epoch; a resume skips batches, or samples trained on another number of processes
    for epoch, skip, samples_done in ((1, 0, None), (2, 0, None), (2, 1, None), (3, 2, None), (3, 0, 100)):
        expected = batches_of(host, epoch, skip, samples_done)
        assert len(expected) == len(host) and expected
        assert_same_batches(expected, batches_of(resident, epoch, skip, samples_done))
    assert batches_of(resident, 1, resident.batches_per_epoch()) == []  # an epoch resumed after its last batch
    valid_resident, valid_host = resident.split_validation(), host.split_validation()
    assert valid_resident.keep_on(torch.device("cpu"))
    assert_same_batches(batches_of(valid_host, 1), batches_of(valid_resident, 1))


def test_a_loader_with_workers_or_a_dataset_of_files_stays_on_the_host(mnist_dir: Path) -> None:
    tensors = MnistDataLoader(str(mnist_dir), batch_size=32).dataset
    with_workers = BaseDataLoader(tensors, batch_size=32, shuffle=True, validation_split=0.0, num_workers=1)
    sample_by_sample = BaseDataLoader(SampleBySample(tensors), batch_size=32, shuffle=True, validation_split=0.0,
                                      num_workers=0)
    assert not with_workers.keep_on(torch.device("cpu")) and not sample_by_sample.keep_on(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_kept_on_the_gpu_equal_the_host_batches(mnist_dir: Path) -> None:
    device = torch.device("cuda", 0)
    resident, host = resident_and_host_loaders(mnist_dir, device)
    assert resident.resident[0].device == device
    loader = next(iter(resident))
    assert all(part.device == device for part in loader)
    for epoch, skip in ((1, 0), (2, 4)):
        assert_same_batches(batches_of(host, epoch, skip), batches_of(resident, epoch, skip))
    validation = resident.split_validation()
    assert validation.keep_on(device) and validation.resident[0].data_ptr() == resident.resident[0].data_ptr()
