"""Fixtures of the template's tests: rendering the template, real MNIST digits on disk."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

from mnist_sample import write_mnist_raw

TEMPLATE = Path(__file__).resolve().parents[1]
DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text())

Render = Callable[..., Path]

# The files of a project rendered with the default answers.
EXPECTED_FILES = {
    ".cookiecutter.json",
    ".gitignore",
    "LICENSE",
    "README.md",
    "config.json",
    "config_schema.py",
    "cli.py",
    "convert_checkpoint.py",
    "parse_config.py",
    "pyproject.toml",
    "launch.py",
    "slurm/train.sbatch",
    "requirements.txt",
    "requirements-dev.txt",
    "test.py",
    "train.py",
    "base/__init__.py",
    "base/base_data_loader.py",
    "base/base_model.py",
    "base/base_trainer.py",
    "base/checkpointed_run.py",
    "data_loader/__init__.py",
    "data_loader/data_loaders.py",
    "data_loader/mnist_files.py",
    "logger/__init__.py",
    "logger/logger.py",
    "logger/metrics_csv.py",
    "logger/visualization.py",
    "logger/epoch_writer.py",
    "model/__init__.py",
    "model/loss.py",
    "model/metric.py",
    "model/model.py",
    "trainer/__init__.py",
    "trainer/trainer.py",
    "utils/__init__.py",
    "utils/checkpoint.py",
    "utils/device.py",
    "utils/errors.py",
    "utils/seed.py",
    "utils/tracker.py",
    "utils/distributed.py",
    "utils/signals.py",
    "utils/lr_schedule.py",
    "utils/resume.py",
    "utils/branch.py",
    "utils/fit_check.py",
    "utils/run_files.py",
    "utils/optimizer_step.py",
    "utils/monitor.py",
    "tests/conftest.py",
    "tests/test_bad_inputs.py",
    "tests/test_checkpoint.py",
    "tests/test_config.py",
    "tests/test_convert_checkpoint.py",
    "tests/test_custom_trainer.py",
    "tests/test_data.py",
    "tests/test_extending.py",
    "tests/test_fit_check.py",
    "tests/test_metrics_csv.py",
    "tests/test_resume.py",
    "tests/test_resume_rules.py",
    "tests/test_run_files.py",
    "tests/test_safety.py",
    "tests/test_scaling.py",
    "tests/test_training.py",
    ".github/workflows/tests.yml",
}


def expected_files(answers: dict[str, str]) -> set[str]:
    """The files that the answers (defaults for the rest) must produce, no more, no fewer."""
    files = set(EXPECTED_FILES)
    if answers.get("license") == "none":
        files.discard("LICENSE")
    if answers.get("tensorboard") == "no":
        files.discard("logger/visualization.py")
    if answers.get("github_actions") == "no":
        files.discard(".github/workflows/tests.yml")
    if answers.get("dataset") == "image_folder":
        files |= {"data_loader/image_folder.py", "config_mnist.json", "tests/test_image_folder.py"}
    return files


def files_of(project: Path) -> set[str]:
    return {str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()}


@pytest.fixture
def render(tmp_path: Path) -> Render:
    """Render the template with `--no-input` and the given answers; returns the project folder."""

    def render_with(**answers: Any) -> Path:
        out = tmp_path / "rendered"
        return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out), extra_context=answers))

    return render_with


@pytest.fixture(scope="session")
def mnist_sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with the 5,000 real digits in torchvision's MNIST layout (4,000 train, 1,000 test)."""
    return write_mnist_raw(tmp_path_factory.mktemp("mnist"))


def run_python(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS` inside a generated project, as a user would."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
