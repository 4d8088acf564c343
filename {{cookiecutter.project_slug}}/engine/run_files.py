"""The files that say how a run was made: its resolved `config.json`, and `run_info.json`, a
list with one entry per invocation (the first start, then one more for every resume) holding
the run's identity, the command line, working folder, start time, versions and the project's
git commit.

A run's identity, `run_uid`, is a random id made when the run starts (a branch is a new run:
it gets one of its own); every entry of run_info.json and every checkpoint of the run carries
it, so that a checkpoint of another run is not resumed in this run's folder.

When the process ends, its entry gets `ended`: how the run ended (`record_end`, which the
trainer calls).

Only the process that owns the run folder writes them (`ConfigParser.make_run_dir` and the
trainer, on rank 0, with the folder's lock held)."""

import importlib.metadata
import json
import logging
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from utils.errors import DiskFull, InputError, TrainingDiverged, TrainingInterrupted, exit_status_of, first_line
from utils.staged_files import StagedFiles, full_disk_reported

logger = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 5.0  # git on a slow network file system must not hold up training


def new_run_uid() -> str:
    """A new run's identity: 16 random hex digits."""
    return secrets.token_hex(8)


def recorded_run_uid(run_dir: Path) -> str | None:
    """The identity of the run that `run_dir` holds, by the last entry of its run_info.json that
    records one; None without such an entry (no run yet, or one made before runs had one)."""
    uids = [entry.get("run_uid") for entry in read_run_info(run_dir) if isinstance(entry, dict)]
    return next((uid for uid in reversed(uids) if isinstance(uid, str)), None)


def save_run_files(run_dir: Path, config: dict[str, Any], resuming: bool, run_uid: str | None = None) -> None:
    """Write `config` to `config.json` and append this invocation (of the run `run_uid`) to
    `run_info.json` in `run_dir`, both or neither. An OSError is an InputError naming the folder
    (a full disk: a DiskFull), and the files are left as they were."""
    check_writable(run_dir, resuming)
    contents = {"config.json": config, RUN_INFO: [*read_run_info(run_dir), invocation(run_uid)]}
    _write_all(run_dir, contents)


def outcome(exc: BaseException | None) -> tuple[str, int]:
    """How a run that ended with `exc` (None: it returned) ended, and the exit status that
    says so: `finished` 0, `stopped` 128 + signal (also a second Ctrl-C, which exits at once),
    `diverged` 3, `no space` 4, `crashed` (any other error: its status, 1 for a bug)."""
    if exc is None:
        return "finished", 0
    if isinstance(exc, TrainingInterrupted):
        return "stopped", 128 + exc.signal_number
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return "stopped", 128 + signal.SIGINT
    if isinstance(exc, TrainingDiverged):
        return "diverged", TrainingDiverged.EXIT_STATUS
    if isinstance(exc, DiskFull):
        return "no space", DiskFull.EXIT_STATUS
    return "crashed", exit_status_of(exc) or 1


def record_end(run_dir: Path, how: str, status: int, epoch: int) -> None:
    """Add `ended` (`at`, `outcome` `how`, exit `status`, the last finished `epoch`) to this
    invocation's entry, the last of `run_dir/run_info.json`, whole or not at all. It never
    raises: a failure to write (a full disk, whose last bytes are the run's saves) is a warning,
    the file stays as it was, and report.py then judges the run by its files. A folder removed
    meanwhile (a new run that failed before its first checkpoint) is left alone."""
    try:
        entries = read_run_info(run_dir)
        if not entries or not isinstance(entries[-1], dict):
            return
        at = datetime.now().astimezone().isoformat(timespec="milliseconds")
        entries[-1]["ended"] = {"at": at, "outcome": how, "status": status, "epoch": epoch}
        _write_all(run_dir, {RUN_INFO: entries})
    except Exception as exc:  # noqa: BLE001  (the record must never change how the run ended)
        logger.warning("Could not record how the run ended in %s: %s", run_dir / RUN_INFO, first_line(exc))


def check_writable(run_dir: Path, resuming: bool) -> None:
    """Create and remove a file in `run_dir`: a folder we may not write in (a read-only copy of
    a finished run, say) is refused before anything is written, not by a traceback mid-way."""
    try:
        with full_disk_reported(run_dir):
            fd, name = tempfile.mkstemp(dir=run_dir, prefix=".write-check-")
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        remedy = ("copy the checkpoint into a writable folder and resume from there" if resuming
                  else "choose a writable trainer.save_dir")
        raise InputError(f"run directory '{run_dir}': cannot write in it ({exc.strerror or exc}); {remedy}") from None


def read_run_info(run_dir: Path) -> list[Any]:
    """The entries of `run_dir/run_info.json`; none for a new run or one made before the file
    existed."""
    path = run_dir / RUN_INFO
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise InputError(f"run directory '{run_dir}': cannot read {RUN_INFO} ({exc}); move it away "
                         "and resume again") from None
    if not isinstance(entries, list):
        raise InputError(f"run directory '{run_dir}': {RUN_INFO} is not a list of entries; move it away "
                         "and resume again")
    return entries


def invocation(run_uid: str | None = None) -> dict[str, Any]:
    """How this process was started, as one `run_info.json` entry of the run `run_uid`."""
    return {
        "run_uid": run_uid,
        "started": datetime.now().astimezone().isoformat(timespec="milliseconds"),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": _version("torchvision"),  # from the metadata: importing it takes seconds
        "git": git_state(PROJECT_ROOT),
    }


def git_state(folder: Path) -> dict[str, Any] | None:
    """`{"commit": ..., "dirty": ...}` of the git checkout holding `folder` (dirty: tracked files
    differ from the commit, as `git describe --dirty` counts it); None without git, outside a
    checkout, or when git does not answer in time."""
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        changes = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changes)}


def _git(folder: Path, *args: str) -> str:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock a user's git command needs
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    result = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                            timeout=GIT_TIMEOUT_S, env=env)
    return result.stdout.strip()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_all(folder: Path, contents: dict[str, Any]) -> None:
    """Write each value as JSON to its file name in `folder`. Every file is written in full
    before any replaces its old version, so a failure (a full disk, say) changes none of them."""
    name = ""
    try:
        with StagedFiles() as files:
            for name, value in contents.items():
                files.add((json.dumps(value, indent=4, allow_nan=False) + "\n").encode(), folder / name)
            name = ""
            files.commit()
    except OSError as exc:
        what = f"write {name}" if name else "rename its files into place"
        raise InputError(f"run directory '{folder}': cannot {what} ({exc.strerror or exc})") from None
