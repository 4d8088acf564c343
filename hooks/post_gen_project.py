"""Post-generation hook: remove what an answer turned off, move variants into place. Never prompts.

Cookiecutter renders this file with Jinja and runs it inside the generated project folder.
The template's Python files hold no Jinja: where an answer changes a Python file, the template
holds each version as a whole file (`<name>.<variant>.py` beside `<name>.py`) and this hook
moves the one the answers chose into place and deletes the others. To make another option
remove or swap files, add one line to REMOVALS or MOVES.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Choice answers: cookiecutter refuses any value that is not one of the choices, so each is a
# plain word, and this file stays valid Python (lintable) before it is rendered.
LICENSE = "{{ cookiecutter.license }}"
DATASET = "{{ cookiecutter.dataset }}"
TENSORBOARD = "{{ cookiecutter.tensorboard }}" == "yes"
GITHUB_ACTIONS = "{{ cookiecutter.github_actions }}" == "yes"
SWEEPS = "{{ cookiecutter.sweeps }}" == "yes"
MLFLOW = "{{ cookiecutter.mlflow }}" == "yes"

# (condition, paths relative to the generated project to delete when the condition holds)
REMOVALS: list[tuple[bool, tuple[str, ...]]] = [
    (LICENSE == "none", ("LICENSE",)),
    (not TENSORBOARD, ("logger/visualization.py",)),
    (TENSORBOARD, ("logger/__init__.no_tensorboard.py",)),
    (not GITHUB_ACTIONS, (".github",)),
    (not SWEEPS, ("sweep.py", "sweep.json", "sweeps", "reports/study.py", "tests/test_sweep.py", "docs/sweeps.md")),
    (not MLFLOW, ("logger/mlflow_tracker.py", "tests/test_mlflow.py", "docs/tracking.md")),
    (
        DATASET != "image_folder",
        (
            "data_loader/image_folder.py",
            "data_loader/image_files.py",
            "data_loader/__init__.image_folder.py",
            "config_image_folder.json",
            "config_finetune.json",
            "tests/test_image_folder.py",
            "docs/images.md",
        ),
    ),
]

# (condition, source, destination): files that an answer puts in place of another
MOVES: list[tuple[bool, str, str]] = [
    (DATASET == "image_folder", "config.json", "config_mnist.json"),
    (DATASET == "image_folder", "config_image_folder.json", "config.json"),
    (DATASET == "image_folder", "data_loader/__init__.image_folder.py", "data_loader/__init__.py"),
    (not TENSORBOARD, "logger/__init__.no_tensorboard.py", "logger/__init__.py"),
]


def remove(path: Path) -> None:
    """Delete a file or a folder; a path that does not exist is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def main() -> None:
    """Move, then delete, every path whose condition holds."""
    for condition, source, destination in MOVES:
        if condition:
            Path(source).replace(destination)
    for condition, paths in REMOVALS:
        if condition:
            for path in paths:
                remove(Path(path))


if __name__ == "__main__":
    main()
