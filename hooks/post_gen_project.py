"""Post-generation hook: remove what an answer turned off. Never prompts.

Cookiecutter renders this file with Jinja and runs it inside the generated project folder.
To make another option remove files, add one line to REMOVALS.
"""

from __future__ import annotations

import shutil
from pathlib import Path

LICENSE = {{cookiecutter.license | tojson}}

# (condition, paths relative to the generated project to delete when the condition holds)
REMOVALS: list[tuple[bool, tuple[str, ...]]] = [
    (LICENSE == "none", ("LICENSE",)),
]


def remove(path: Path) -> None:
    """Delete a file or a folder; a path that does not exist is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def main() -> None:
    """Delete every path whose condition holds."""
    for condition, paths in REMOVALS:
        if condition:
            for path in paths:
                remove(Path(path))


if __name__ == "__main__":
    main()
