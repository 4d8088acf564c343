"""The one way this project writes a file it must not lose: to a temp file beside it, flushed to
disk, then renamed over it, so that a crash leaves the old file or the new one, never half of one.

`StagedFiles` does this for the files of one save together (an epoch end's metrics.csv row and
its checkpoints): every file is written before any is renamed, so a full disk while writing
changes none of them (a rename needs no space). A full disk, or a full quota, is a DiskFull
naming the file and the file system."""

import errno
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from utils.errors import DiskFull, InputError

FULL = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}


class StagedFiles:
    """New contents for several files, replacing them only in `commit`. Use it as a context
    manager: whatever is still staged when the block ends (a failure) is removed again."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temp file, destination), in commit order

    def add(self, data: bytes, *paths: Path) -> None:
        """Stage `data` as the new content of each of `paths`. It is written once, to a temp file
        beside the first path and flushed to disk; the other paths get hard links to that file
        (copies where the file system has no hard links), so a checkpoint saved under three
        names needs the space of one. Nothing is replaced yet."""
        first = self._write(data, paths[0])
        for path in paths[1:]:
            self._link(first, data, path)

    def commit(self) -> None:
        """Rename every staged file over its destination, in the order added, then flush the
        folders' entries to disk."""
        folders = {path.parent for _, path in self._staged}
        while self._staged:
            temp, path = self._staged[0]
            with full_disk_reported(path):
                os.replace(temp, path)
            self._staged.pop(0)
        for folder in folders:
            _fsync_folder(folder)

    def discard(self) -> None:
        """Remove what is staged; the destinations stay as they were."""
        for temp, _ in self._staged:
            temp.unlink(missing_ok=True)
        self._staged = []

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.discard()

    def _write(self, data: bytes, path: Path) -> Path:
        with full_disk_reported(path):
            fd, name = temp_file_beside(path, ".tmp")
            self._staged.append((name, path))
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        return name

    def _link(self, source: Path, data: bytes, path: Path) -> None:
        temp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.link(source, temp)
        except OSError:  # no hard links here (or another process took the name): a copy
            self._write(data, path)
            return
        self._staged.append((temp, path))


def temp_file_beside(path: Path, suffix: str) -> tuple[int, Path]:
    """A new, open temporary file `.<name>.XXXX<suffix>` in `path`'s folder (its descriptor and
    path), to be renamed over `path` once written. Its permissions are those of a normal new
    file (0666 less the umask): mkstemp makes it private, which the renamed file would keep."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(name)


def check_writable_file(path: Path, label: str = "") -> None:
    """Refuse, before any work, a file that cannot be written: `path` a folder, or in a folder
    that is missing or not writable. An InputError beginning with `label` (e.g. `--out `)."""
    if path.is_dir():
        raise InputError(f"{label}'{path}': a folder; give a file name")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{label}'{path}': cannot write in the folder '{folder}' (missing or not writable)")
    refused = write_refused(folder)  # the permission bits let root through anywhere: ask the file system
    if refused is not None:
        raise InputError(f"{label}'{path}': cannot write in the folder '{folder}' ({refused.strerror or refused})")


def write_refused(folder: Path) -> OSError | None:
    """Why a file cannot be made in `folder` (a temporary one is made and removed), or None."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc


def write_atomic(data: bytes, path: Path) -> None:
    """Replace `path` with `data` whole (temp file, flush, rename)."""
    with StagedFiles() as files:
        files.add(data, path)
        files.commit()


@contextmanager
def full_disk_reported(path: Path) -> Iterator[None]:
    """Turn a full disk or quota while writing `path` into a DiskFull naming both."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL:
            raise
        raise DiskFull(f"{FULL[exc.errno]} on {file_system(path)}", str(path)) from None


def file_system(path: Path) -> str:
    """The mount point holding `path`, with its device when /proc/self/mounts names it, e.g.
    `/scratch (/dev/sdb1)`: what `df` needs to show the free space."""
    folder = Path(os.path.abspath(path))
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        mounts = [line.split()[:2] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return str(folder)
    devices = [device for device, point in mounts if point == str(folder)]
    return f"{folder} ({devices[-1]})" if devices else str(folder)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
