"""One owner per run folder. The process that writes a run folder (rank 0 under DDP) holds an
exclusive lock on the folder's `.lock` file from before it writes anything there until it ends;
a second process that wants the folder is refused in one line naming the holder (the file
holds its host, PID and start time), and changes nothing.

The lock is a POSIX record lock (`fcntl.lockf`): the kernel releases it when the process ends,
however it ends (kill -9 included), so there is nothing to clean up. It belongs to the process
alone (DataLoader workers forked from it do not hold it), and it is released when the process
closes any descriptor of the lock file, which is why nothing else in the owner opens that file.
On network file systems it holds across machines where the file system carries such locks
(NFSv4; NFSv3 with lockd; Lustre mounted with `flock`, not `localflock`; GPFS; CephFS); where
locks are not supported at all, training goes on with a warning, unguarded.
"""

import errno
import json
import logging
import os
import socket
from datetime import datetime
from pathlib import Path

from utils.errors import InputError
from utils.staged_files import full_disk_reported

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
# lockf's errors when the file system has no locks (NFS without lockd, Lustre mounted noflock, FUSE)
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
ATTEMPTS = 5  # the lock file of a failed new run may be removed between our open and our lock

logger = logging.getLogger("trainer")


class RunFolderInUse(InputError):
    """Another live process owns the run folder."""


class RunLock:
    """The lock of one run folder, held by this process: `take` it, `record` who holds it once
    the folder is ours, `release` it when done (or let the process end)."""

    def __init__(self, folder: Path, fd: int | None, created: bool) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self._fd = fd  # None: the file system has no locks
        self._created = created  # this process made the lock file: removed again on failure
        self._recorded = False

    @classmethod
    def take(cls, folder: Path) -> "RunLock":
        """Lock `folder`, or raise RunFolderInUse naming the process that holds it. Reads the
        lock file and may create it; writes nothing else."""
        if fcntl is None:
            logger.warning("run directory %s: this system has no POSIX file locks, so nothing stops a second "
                           "process from training in it at the same time", folder)
            return cls(folder, None, False)
        for _ in range(ATTEMPTS):
            opened = _open(folder)
            if opened is None:
                continue
            fd, created = opened
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise RunFolderInUse(in_use(folder)) from None
                if exc.errno not in NO_LOCKS:
                    raise
                logger.warning("run directory %s: the file system has no file locks (%s), so nothing stops a "
                               "second process from training in it at the same time", folder, exc.strerror)
                return cls(folder, None, created)
            if _same_file(fd, folder / LOCK_FILE):
                return cls(folder, fd, created)
            os.close(fd)  # locked a lock file that was just removed: take the folder's current one
        raise InputError(f"run directory '{folder}': its lock file keeps being replaced; run the command again")

    def record(self) -> None:
        """Write this process's host, PID and start time into the lock file, for the line that
        refuses a second process. Done once the folder's own files are written, so that a
        process refused for another reason has changed nothing; a failed write (a full disk)
        leaves the lock held without its note."""
        if self._fd is None:
            return
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": datetime.now().astimezone().isoformat(timespec="seconds")}
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(holder) + "\n").encode(), 0)
            self._recorded = True
        except OSError:
            pass

    def release(self, undo: bool = False) -> None:
        """Give the folder up. `undo`: this process failed to start in it, so a lock file it
        created is removed again (the folder is left as it found it)."""
        if self._fd is None and not self._created:
            return
        try:
            if undo and self._created:
                self.path.unlink(missing_ok=True)
            elif self._recorded:
                os.ftruncate(self._fd, 0)  # the holder's note is gone with the holder
        except OSError:
            pass
        finally:
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._created = None, False


def in_use(folder: Path) -> str:
    """The line that refuses a second process: who holds `folder`, from its lock file."""
    try:
        holder = json.loads((folder / LOCK_FILE).read_text())
        who = f"process {holder['pid']} on {holder['host']} since {holder['since']}"
    except (OSError, ValueError, TypeError, KeyError):
        who = "another process, which is starting"  # locked, its note not written yet
    return (f"run directory '{folder}' is in use by {who}; one process at a time trains in a run folder: "
            "wait for that one to end, or stop it")


def _open(folder: Path) -> tuple[int, bool] | None:
    """The lock file's descriptor, and whether this call created the file; None when the file
    was removed between two steps here (try again)."""
    path = folder / LOCK_FILE
    flags = os.O_RDWR | os.O_CLOEXEC
    with full_disk_reported(path):
        try:
            try:
                return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                return os.open(path, flags), False
        except FileNotFoundError:
            if not folder.is_dir():
                raise InputError(f"run directory '{folder}': it was removed while this process was starting; "
                                 "run the command again") from None
            return None
        except PermissionError as exc:
            raise InputError(f"run directory '{folder}': cannot write in it ({exc.strerror})") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
