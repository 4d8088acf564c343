"""Post-generation hook: remove what an answer turned off. Never prompts.

Cookiecutter renders this file with Jinja and runs it inside the generated project folder.
To make another option remove or swap files, add one line to REMOVALS or MOVES.
"""

from __future__ import annotations

import shutil
from pathlib import Path

LICENSE = {{cookiecutter.license | tojson}}
DATASET = {{cookiecutter.dataset | tojson}}
TENSORBOARD = {{cookiecutter.tensorboard | tojson}} == "yes"
GITHUB_ACTIONS = {{cookiecutter.github_actions | tojson}} == "yes"

# (condition, paths relative to the generated project to delete when the condition holds)
REMOVALS: list[tuple[bool, tuple[str, ...]]] = [
    (LICENSE == "none", ("LICENSE",)),
    (not TENSORBOARD, ("logger/visualization.py",)),
    (not GITHUB_ACTIONS, (".github",)),
    (DATASET != "image_folder", ("data_loader/image_folder.py", "config_image_folder.json",
                                 "tests/test_image_folder.py")),
]

# (condition, source, destination): files that an answer puts in place of another
MOVES: list[tuple[bool, str, str]] = [
    (DATASET == "image_folder", "config.json", "config_mnist.json"),
    (DATASET == "image_folder", "config_image_folder.json", "config.json"),
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
