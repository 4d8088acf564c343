"""The data loader: validation split, determinism, the MNIST tensors."""

from pathlib import Path

import pytest
import torch

from data_loader import MnistDataLoader
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
    assert not set(first.valid_indices) & set(first.sampler.indices)


def test_shuffle_order_follows_the_generator(mnist_dir: Path) -> None:
    loader = MnistDataLoader(str(mnist_dir), batch_size=400)
    state = loader.generator.get_state()
    first = next(iter(loader))[1]
    loader.generator.set_state(state)
    assert torch.equal(next(iter(loader))[1], first)


def test_images_are_normalised_tensors(mnist_dir: Path) -> None:
    data, target = next(iter(MnistDataLoader(str(mnist_dir), batch_size=8, shuffle=False, training=False)))
    assert data.shape == (8, 1, 28, 28) and data.dtype == torch.float32
    assert target.dtype == torch.int64
    assert -0.5 < data.min().item() < 0 and data.max().item() > 2.5  # (x / 255 - 0.1307) / 0.3081


@pytest.mark.parametrize(("split", "message"), [(1.5, "fraction in"), (400, "count from 0 to 399"), ("x", "number")])
def test_bad_validation_split_is_refused(mnist_dir: Path, split: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        MnistDataLoader(str(mnist_dir), batch_size=32, validation_split=split)  # type: ignore[arg-type]
