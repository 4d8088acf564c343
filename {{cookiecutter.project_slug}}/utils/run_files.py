"""The files that say how a run was made: its resolved `config.json`, and `run_info.json`, a
list with one entry per invocation (the first start, then one more for every resume) holding
the command line, working folder, start time, versions and the project's git commit.

Only the main process writes them (the trainer calls `ConfigParser.make_run_dir` on rank 0)."""

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from utils.errors import InputError

RUN_INFO = "run_info.json"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 5.0  # git on a slow network file system must not hold up training


def save_run_files(run_dir: Path, config: dict[str, Any], made: bool) -> None:
    """Write `config` to `config.json` and append this invocation to `run_info.json` in
    `run_dir`. Any OSError is an InputError naming the folder, and the folder is left as it was
    (`made`: the caller has just created it, so it is removed again)."""
    try:
        check_writable(run_dir, resuming=not made)
        contents = {"config.json": config, RUN_INFO: [*read_run_info(run_dir), invocation()]}
        _write_all(run_dir, contents)
    except BaseException:
        if made:
            _remove_empty(run_dir)
        raise


def check_writable(run_dir: Path, resuming: bool) -> None:
    """Create and remove a file in `run_dir`: a folder we may not write in (a read-only copy of
    a finished run, say) is refused before anything is written, not by a traceback mid-way."""
    try:
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


def invocation() -> dict[str, Any]:
    """How this process was started, as one `run_info.json` entry."""
    return {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
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
    staged: list[tuple[str, Path]] = []
    name = ""
    try:
        for name, value in contents.items():
            staged.append((_stage(folder / name, value), folder / name))
        for temp, path in staged:
            name = path.name
            os.replace(temp, path)
    except OSError as exc:
        for temp, _ in staged:
            Path(temp).unlink(missing_ok=True)
        raise InputError(f"run directory '{folder}': cannot write {name} ({exc.strerror or exc})") from None


def _stage(path: Path, value: Any) -> str:
    """`value` as JSON in a temp file next to `path`, flushed to disk; returns the temp file."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes the file private; these are normal files
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(value, indent=4, allow_nan=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty or already gone: nothing of ours to clean up
