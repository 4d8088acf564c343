"""The offline MNIST sample loads through torchvision's real MNIST dataset class."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from mnist_sample import load_mnist_sample, write_idx, write_mnist_raw


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root holding the sample written with the default split."""
    return write_mnist_raw(tmp_path_factory.mktemp("data"))


def test_sample_has_500_uint8_images_per_class() -> None:
    images, labels = load_mnist_sample()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_files_are_in_torchvision_raw_layout(root: Path) -> None:
    names = sorted(path.name for path in (root / "MNIST" / "raw").iterdir())
    assert names == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    header = (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()[:16]
    assert header == bytes.fromhex("00000803000003e80000001c0000001c")


@pytest.mark.parametrize(("train", "length"), [(True, 4000), (False, 1000)])
def test_torchvision_mnist_reads_balanced_splits(root: Path, train: bool, length: int) -> None:
    dataset = MNIST(root, train=train, download=False)
    assert len(dataset) == length
    assert dataset.data.dtype == torch.uint8 and dataset.data.shape == (length, 28, 28)
    assert torch.bincount(dataset.targets, minlength=10).tolist() == [length // 10] * 10
    assert dataset.targets[:10].tolist() == list(range(10)), "splits are not sorted by label"


def test_pixels_match_the_sample(root: Path) -> None:
    images, labels = load_mnist_sample()
    test_set = MNIST(root, train=False, download=False)
    train_set = MNIST(root, train=True, download=False)
    # Test split: rank r of class c sits at 10 * r + c; the sample is sorted by class, 500 each.
    for rank, label in [(0, 0), (0, 7), (99, 9), (42, 3)]:
        index, source = 10 * rank + label, 500 * label + rank
        assert np.array_equal(test_set.data[index].numpy(), images[source])
        assert int(test_set.targets[index]) == labels[source] == label
    # Train split: the same interleaving, starting after the 100 test images of each class.
    for rank, label in [(0, 0), (0, 5), (399, 9)]:
        index, source = 10 * rank + label, 500 * label + 100 + rank
        assert np.array_equal(train_set.data[index].numpy(), images[source])
        assert int(train_set.targets[index]) == label
    image, target = test_set[0]
    assert image.size == (28, 28) and target == 0


def sorted_rows(images: np.ndarray) -> np.ndarray:
    """The images as one sortable byte string each, sorted: a multiset to compare."""
    return np.sort(np.ascontiguousarray(images).reshape(len(images), -1).view("V784").ravel())


def test_splits_do_not_overlap_and_cover_the_sample(root: Path) -> None:
    images, _ = load_mnist_sample()
    splits = [MNIST(root, train=train, download=False).data.numpy() for train in (True, False)]
    assert np.array_equal(sorted_rows(np.concatenate(splits)), sorted_rows(images))


def test_tile_repeats_both_splits(tmp_path: Path) -> None:
    write_mnist_raw(tmp_path, n_test_per_class=50, tile=2)
    train_set = MNIST(tmp_path, train=True, download=False)
    test_set = MNIST(tmp_path, train=False, download=False)
    assert (len(train_set), len(test_set)) == (2 * 4500, 2 * 500)
    assert torch.equal(test_set.data[:500], test_set.data[500:])
    assert torch.bincount(train_set.targets, minlength=10).tolist() == [900] * 10


def test_write_idx_rejects_non_uint8(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros((2, 2), dtype=np.int32))


def test_command_line_writes_files_and_prints_one_line(tmp_path: Path) -> None:
    script = Path(__file__).with_name("mnist_sample.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--tile", "2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.count("\n") == 1 and "8000 train, 2000 test" in result.stdout
    assert len(MNIST(tmp_path, train=False, download=False)) == 2000
