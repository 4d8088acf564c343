"""Adding a dataset or a model as docs/extending.md says (one class in one file of data_loader/, or a
class in model/model.py, plus the config), then training and evaluating as a user does.

Each test edits a copy of this project in tmp_path and runs `python train.py` / `python test.py`
there, so the project the tests run from is never changed and no module stays imported.
"""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SKIPPED_FOLDERS = {"__pycache__", ".git", ".venv", "data", "saved", "tests"}

# A user's new dataset: synthetic images whose class (0-9) is where a bright square sits.
MY_DATA = '''
"""Squares: 28x28 images whose class is where a bright 6x6 square sits."""

import torch
from torch.utils.data import TensorDataset

from base import BaseDataLoader


class SquaresDataLoader(BaseDataLoader):
    def __init__(self, batch_size: int, size: int = 200, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, training: bool = True) -> None:
        generator = torch.Generator().manual_seed(0 if training else 1)
        labels = torch.arange(size) % 10
        images = torch.randn(size, 1, 28, 28, generator=generator) * 0.1  # (N, 1, 28, 28)
        for image, label in zip(images, labels.tolist()):
            row, col = divmod(label, 5)
            image[:, 4 + row * 12 : 10 + row * 12, 2 + col * 5 : 8 + col * 5] = 3.0
        super().__init__(TensorDataset(images, labels), batch_size, shuffle, validation_split, num_workers)
'''

# A user's new model, added at the end of model/model.py.
MY_MODEL = '''

class LinearModel(BaseModel):
    """One linear layer over the flattened image."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.linear(x.flatten(1)), dim=1)  # (B, num_classes)
'''


def copy_project(tmp_path: Path) -> Path:
    """This project's code and configs, copied to tmp_path/project."""

    def skipped(folder: str, names: list[str]) -> list[str]:
        return [name for name in names if name in SKIPPED_FOLDERS
                or (Path(folder, name).is_file() and not name.endswith((".py", ".json")))]

    return Path(shutil.copytree(PROJECT_ROOT, tmp_path / "project", ignore=skipped))


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python *args` in `project`, as a user runs it there."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)


def train_and_test(project: Path, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Train one epoch with `config`, then evaluate its last checkpoint with test.py; returns
    the checkpoint and test.py's output."""
    (project / "my_config.json").write_text(json.dumps(config))
    trained = run(project, "train.py", "-c", "my_config.json", "--run-id", "run")
    assert trained.returncode == 0, trained.stderr
    run_dir = Path(config["trainer"]["save_dir"]) / config["name"] / "run"
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")  # the header and epoch 1
    tested = run(project, "test.py", "-r", str(run_dir / "latest.pth"))
    assert tested.returncode == 0, tested.stderr
    return torch.load(run_dir / "latest.pth", weights_only=True), tested.stdout


def test_a_dataset_is_one_class_in_a_new_file_plus_the_config(
    make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    project = copy_project(tmp_path)
    (project / "data_loader" / "my_data.py").write_text(MY_DATA)  # not exported from __init__.py
    config = make_config(trainer__epochs=1)
    config["data_loader"] = {"type": "SquaresDataLoader", "args": {"batch_size": 32, "validation_split": 0.1}}
    checkpoint, tested = train_and_test(project, config)
    assert checkpoint["config"]["data_loader"]["type"] == "SquaresDataLoader"
    results = dict(line.split(": ") for line in tested.splitlines() if ": " in line)
    assert 0 <= float(results["accuracy"]) <= 1 and float(results["loss"]) > 0


def test_a_model_is_one_class_in_model_py_plus_the_config(
    make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    project = copy_project(tmp_path)
    with (project / "model" / "model.py").open("a") as file:
        file.write(MY_MODEL)
    config = make_config(trainer__epochs=1, arch={"type": "LinearModel", "args": {}})
    checkpoint, tested = train_and_test(project, config)
    assert checkpoint["arch"] == "LinearModel"
    assert set(checkpoint["state_dict"]) == {"linear.weight", "linear.bias"}
    assert "accuracy: " in tested


def test_a_class_name_defined_in_two_data_loader_files_is_refused_naming_both(
    make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    project = copy_project(tmp_path)
    (project / "data_loader" / "other_mnist.py").write_text(
        MY_DATA.replace("SquaresDataLoader", "MnistDataLoader")
    )
    (project / "my_config.json").write_text(json.dumps(make_config()))
    result = run(project, "train.py", "-c", "my_config.json", "--dry-run")
    assert result.returncode == 2
    assert result.stderr == (
        "error: config: 'data_loader.type' is 'MnistDataLoader', which is defined in both "
        "data_loader/data_loaders.py and data_loader/other_mnist.py; rename one of them\n"
    )
    assert not Path(make_config()["trainer"]["save_dir"]).exists()


def test_a_broken_data_loader_file_shows_its_own_traceback(
    make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    project = copy_project(tmp_path)
    (project / "data_loader" / "broken.py").write_text("class Broken(BaseDataLoader:\n    pass\n")
    (project / "my_config.json").write_text(json.dumps(make_config()))  # names MnistDataLoader, not Broken
    result = run(project, "train.py", "-c", "my_config.json", "--dry-run")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "SyntaxError" in result.stderr
    assert f'File "{project / "data_loader" / "broken.py"}", line 1' in result.stderr
