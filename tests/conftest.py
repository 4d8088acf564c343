"""Fixtures of the template's tests: rendering the template, real MNIST digits on disk."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from cookiecutter.main import cookiecutter

from mnist_sample import write_mnist_raw

TEMPLATE = Path(__file__).resolve().parents[1]
DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text())

Render = Callable[..., Path]


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
        [sys.executable, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
    )
