"""Fixtures: tiny synthetic MNIST-format files and a shrunken copy of the real config.json."""

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from parse_config import ConfigParser

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The MNIST example, shrunk by `make_config`: config_mnist.json where config.json is the example
# for your own images (a project generated with dataset=image_folder), else config.json.
MNIST_CONFIG = "config_mnist.json" if (PROJECT_ROOT / "config_mnist.json").is_file() else "config.json"
# Whether the project was generated with TensorBoard: only then has it logger/visualization.py.
TENSORBOARD = (PROJECT_ROOT / "logger" / "visualization.py").is_file()
# Whether it tracks runs in MLflow: only then has it logger/mlflow_tracker.py (and `trainer.mlflow`).
MLFLOW = (PROJECT_ROOT / "logger" / "mlflow_tracker.py").is_file()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format that torchvision's MNIST reader expects."""
    magic = 0x0800 + array.ndim  # 0x08: unsigned byte data
    with path.open("wb") as file:
        file.write(struct.pack(">I", magic))
        file.write(struct.pack(f">{array.ndim}I", *array.shape))
        file.write(array.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` noisy 28x28 images whose class (0-9) is where a bright 6x6 square sits: easy to
    learn in a few steps, so tests can check that training works without real data."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[i, 4 + row * 12 : 10 + row * 12, 2 + col * 5 : 8 + col * 5] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding synthetic MNIST files: 400 training and 100 test images."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", 400, 0), ("t10k", 100, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def mnist_checkpoint(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`latest.pth` of a LeNet trained for one epoch on the synthetic digits (CPU), to use as
    it is (predict.py, export.py, test.py): copy it to change it."""
    import train

    config = json.loads((PROJECT_ROOT / MNIST_CONFIG).read_text())
    config["n_gpu"] = 0
    config["data_loader"]["args"].update(data_dir=str(mnist_dir), batch_size=32)
    config["trainer"].update(epochs=1, save_dir=str(tmp_path_factory.mktemp("runs")), verbosity=0)
    parser = ConfigParser(config, run_id="trained")
    train.train(parser)
    assert parser.run_dir is not None
    return parser.run_dir / "latest.pth"


@pytest.fixture
def make_config(mnist_dir: Path, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """The project's own config.json, shrunk for tests: CPU, 2 epochs, batch 32, synthetic
    data, runs under tmp_path, not tracked in MLflow (tests/test_mlflow.py turns it on).
    Keyword arguments `section__key=value` change more."""

    def make(**changes: Any) -> dict[str, Any]:
        config = json.loads((PROJECT_ROOT / MNIST_CONFIG).read_text())
        config["n_gpu"] = 0
        config["data_loader"]["args"].update(data_dir=str(mnist_dir), batch_size=32)
        config["trainer"].update(epochs=2, save_dir=str(tmp_path / "saved"), verbosity=0)
        if MLFLOW:  # a new SQLite store takes seconds to create: only the tests of tracking pay for it
            config["trainer"]["mlflow"]["enabled"] = False
        for name, value in changes.items():
            section, _, key = name.partition("__")
            if key:
                config[section][key] = value
            else:
                config[section] = value
        return config

    return make


def call_main(main: Callable[[list[str]], int], args: list[str],
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run an entry point's main() as the command line would: (exit status, stdout, stderr)."""
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse usage errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def victoresque_checkpoint(state_dict: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What victoresque/pytorch-template's trainer saves: weights with DataParallel's `module.`
    prefixes and its live ConfigParser object, pickled by reference to `parse_config.ConfigParser`
    (this project's class has the same import path, so it stands in for victoresque's)."""
    parser = object.__new__(ConfigParser)  # victoresque's constructor is not ours: set its attributes
    parser.__dict__.update(_config=config, resume=None, _save_dir=Path("saved/models/Mnist_LeNet/0101_120000"))
    return {
        "arch": "MnistModel",
        "epoch": 3,
        "state_dict": {f"module.{key}": value for key, value in state_dict.items()},
        "optimizer": {"state": {}, "param_groups": []},
        "monitor_best": 0.1,
        "config": parser,
    }


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its content: equal before and after, nothing was written."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def edited_checkpoint(checkpoint: Path, path: Path, **changes: Any) -> None:
    """A copy of `checkpoint` at `path` with `changes` to its keys; a new `arch` is named in its
    config too."""
    saved = torch.load(checkpoint, weights_only=True)
    saved.update(changes)
    if "arch" in changes:
        saved["config"]["arch"] = {"type": changes["arch"], "args": {}}
    torch.save(saved, path)


class Echo(torch.nn.Module):
    """Not a classifier: returns its input (put it in model.model to name it in a config)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
