"""Fixtures of the template's tests: rendering the template, real MNIST digits on disk."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

from mnist_sample import write_mnist_raw, write_png_folders

# The tests and every process they start do their math on one thread (unless OMP_NUM_THREADS
# says otherwise). The models here are tiny, so a thread per core gains little, and where other
# processes share the cores (pytest-xdist's workers in `make test`, torchrun's ranks, a busy CI
# machine) torch's threads wait on each other: on 2 busy cores a test trained 4x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TEMPLATE = Path(__file__).resolve().parents[1]
DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text())

Render = Callable[..., Path]

# The files of a project rendered with the default answers.
EXPECTED_FILES = {
    ".cookiecutter.json",
    ".gitignore",
    "LICENSE",
    "README.md",
    "docs/backbones.md",
    "docs/config.md",
    "docs/distributed.md",
    "docs/exit-status.md",
    "docs/extending.md",
    "docs/reports.md",
    "docs/resume.md",
    "docs/run-directory.md",
    "docs/speed.md",
    "docs/sweeps.md",
    "docs/tests.md",
    "docs/use-the-model.md",
    "config.json",
    "config_schema.py",
    "cli.py",
    "convert_checkpoint.py",
    "parse_config.py",
    "pyproject.toml",
    "launch.py",
    "exit_status.py",
    "slurm/train.sbatch",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-export.txt",
    "test.py",
    "train.py",
    "predict.py",
    "export.py",
    "inference/exporting.py",
    "inference/__init__.py",
    "inference/inputs.py",
    "inference/predictions.py",
    "inference/trained_model.py",
    "report.py",
    "reports/__init__.py",
    "reports/evaluation.py",
    "reports/find.py",
    "reports/output.py",
    "reports/plot.py",
    "reports/run_folder.py",
    "reports/table.py",
    "reports/study.py",
    "sweep.py",
    "sweep.json",
    "sweeps/__init__.py",
    "sweeps/runner.py",
    "sweeps/spec.py",
    "sweeps/study.py",
    "sweeps/trial.py",
    "base/__init__.py",
    "base/base_data_loader.py",
    "base/base_model.py",
    "base/base_trainer.py",
    "base/preprocessing.py",
    "data_loader/__init__.py",
    "data_loader/data_loaders.py",
    "data_loader/mnist_files.py",
    "engine/__init__.py",
    "engine/backbone.py",
    "engine/batches.py",
    "engine/branch.py",
    "engine/checkpoint.py",
    "engine/checkpointed_run.py",
    "engine/device.py",
    "engine/distributed.py",
    "engine/fit_check.py",
    "engine/lr_schedule.py",
    "engine/metric_tracker.py",
    "engine/monitor.py",
    "engine/optimizer_step.py",
    "engine/resume.py",
    "engine/run_files.py",
    "engine/run_lock.py",
    "engine/signals.py",
    "logger/__init__.py",
    "logger/logger.py",
    "logger/metrics_csv.py",
    "logger/visualization.py",
    "logger/epoch_writer.py",
    "model/__init__.py",
    "model/loss.py",
    "model/metric.py",
    "model/model.py",
    "model/torchvision_classifier.py",
    "trainer/__init__.py",
    "trainer/trainer.py",
    "utils/__init__.py",
    "utils/errors.py",
    "utils/seed.py",
    "utils/staged_files.py",
    "tests/conftest.py",
    "tests/test_backbones.py",
    "tests/test_bad_inputs.py",
    "tests/test_checkpoint.py",
    "tests/test_config.py",
    "tests/test_convert_checkpoint.py",
    "tests/test_custom_trainer.py",
    "tests/test_docs.py",
    "tests/test_data.py",
    "tests/test_extending.py",
    "tests/test_fit_check.py",
    "tests/test_interrupts.py",
    "tests/test_metrics_csv.py",
    "tests/test_resume.py",
    "tests/test_report.py",
    "tests/test_resume_rules.py",
    "tests/test_run_files.py",
    "tests/test_run_folder.py",
    "tests/test_safety.py",
    "tests/test_scaling.py",
    "tests/test_sweep.py",
    "tests/test_training.py",
    "tests/test_predict.py",
    "tests/test_export.py",
    "tests/test_evaluation_report.py",
    ".github/workflows/tests.yml",
}

# What sweeps=no leaves out (README.md, requirements.txt and some docs/ pages lose their sweep parts).
SWEEP_FILES = {name for name in EXPECTED_FILES if name.startswith(("sweep", "tests/test_sweep"))} | {
    "reports/study.py",
    "docs/sweeps.md",
}
# What mlflow=yes adds (README.md, config.json, requirements.txt and some docs/ pages gain their MLflow parts).
MLFLOW_FILES = {"logger/mlflow_tracker.py", "tests/test_mlflow.py", "docs/tracking.md"}


def expected_files(answers: dict[str, str]) -> set[str]:
    """The files that the answers (defaults for the rest) must produce, no more, no fewer."""
    files = set(EXPECTED_FILES)
    if answers.get("license") == "none":
        files.discard("LICENSE")
    if answers.get("tensorboard") == "no":
        files.discard("logger/visualization.py")
    if answers.get("github_actions") == "no":
        files.discard(".github/workflows/tests.yml")
    if answers.get("sweeps") == "no":
        files -= SWEEP_FILES
    if answers.get("mlflow") == "yes":
        files |= MLFLOW_FILES
    if answers.get("dataset") == "image_folder":
        files |= {
            "data_loader/image_folder.py",
            "data_loader/image_files.py",
            "config_mnist.json",
            "config_finetune.json",
            "tests/test_image_folder.py",
            "docs/images.md",
        }
    return files


def files_of(project: Path) -> set[str]:
    return {str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()}


def render_into(out: Path, answers: dict[str, Any]) -> Path:
    """Render the template with `--no-input` and the given answers into `out`; returns the project folder."""
    return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out), extra_context=answers))


@pytest.fixture
def render(tmp_path: Path) -> Render:
    """A fresh project of the given answers, the test's own to change (under tmp_path/rendered)."""

    def render_with(**answers: Any) -> Path:
        return render_into(tmp_path / "rendered", answers)

    return render_with


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Render:
    """The project of the given answers, rendered once per test session (per xdist worker) and
    shared: only read its files (ruff --no-cache reads only). To run or change a project, use
    `render` or `default_project`."""
    projects: dict[str, Path] = {}

    def render_once(**answers: Any) -> Path:
        key = json.dumps(answers, sort_keys=True)
        if key not in projects:
            projects[key] = render_into(tmp_path_factory.mktemp("rendered"), answers)
        return projects[key]

    return render_once


@pytest.fixture(scope="session")
def default_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default project, rendered once per test session (per xdist worker), to run: tests may
    run its code (which leaves __pycache__ folders) but send every output elsewhere (save_dir,
    data_dir, config files under their tmp_path) and change none of its files."""
    return render_into(tmp_path_factory.mktemp("default"), {})


@pytest.fixture(scope="session")
def mnist_sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with the 5,000 real digits in torchvision's MNIST layout (4,000 train, 1,000 test)."""
    return write_mnist_raw(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def png_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 training and 300 validation PNG digits of the real sample, in class folders."""
    return write_png_folders(tmp_path_factory.mktemp("pngs"), n_train_per_class=100, n_val_per_class=30)


def run_python(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS` inside a generated project, as a user would."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort, so files keep their order): under pytest-xdist the quick
    tests then fill the gaps at the end, instead of one worker finishing a long run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
