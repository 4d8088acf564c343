"""Input files for a trained model: the files that paths name (folders searched recursively, in
sorted order), read one at a time by the data loader's `read_inputs` and cut into batches, so
that a folder larger than memory streams through."""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils.errors import InputError

Reader = Callable[[Path], torch.Tensor | None]  # a file -> its inputs (N, ...), or None: not an input


def find_input_files(paths: list[Path]) -> list[Path]:
    """The files that `paths` name, in the order given, a folder's files (and its folders',
    recursively) sorted by name; each file once. A path that does not exist is an InputError."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_file():
            found.setdefault(path)
        elif path.is_dir():
            for folder, folders, files in os.walk(path):
                folders.sort()
                for name in sorted(files):
                    found.setdefault(Path(folder) / name)
        else:
            raise InputError(f"input '{path}': no such file or folder")
    return list(found)


@dataclass
class InputBatches:
    """The inputs that `read` finds in `files`, in batches of `batch_size`: (names, inputs
    (B, ...)). A file holding one input is named by its path, one holding several (an IDX file
    of digits) `path[i]` for its i-th. Files that are not inputs are counted in `skipped`; an
    unreadable one stops with its InputError or, with `skip_unreadable`, is counted in
    `unreadable`. `on_file` is called after each file (a progress bar)."""

    files: list[Path]
    read: Reader
    batch_size: int
    skip_unreadable: bool = False
    on_file: Callable[[], object] = lambda: None
    skipped: int = 0
    unreadable: list[Path] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        pending: list[torch.Tensor] = []
        names: list[str] = []
        for path in self.files:
            inputs = self._read(path)
            self.on_file()
            if inputs is None:
                continue
            pending.append(inputs)
            names += [str(path)] if len(inputs) == 1 else [f"{path}[{index}]" for index in range(len(inputs))]
            while len(names) >= self.batch_size:
                data = pending[0] if len(pending) == 1 else torch.cat(pending)  # one file's slices: no copy
                yield names[: self.batch_size], data[: self.batch_size]
                pending, names = [data[self.batch_size :]], names[self.batch_size :]
        if names:
            yield names, pending[0] if len(pending) == 1 else torch.cat(pending)

    def _read(self, path: Path) -> torch.Tensor | None:
        try:
            inputs = self.read(path)
        except InputError as exc:
            if not self.skip_unreadable:
                raise InputError(f"{exc}; or skip such files with --skip-unreadable") from None
            self.unreadable.append(path)
            return None
        if inputs is None:
            self.skipped += 1
        return inputs
