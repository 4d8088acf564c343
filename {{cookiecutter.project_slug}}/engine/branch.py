"""Resuming from a checkpoint older than its run's newest state branches into a new run folder.

Resuming in place from an older checkpoint would overwrite `latest.pth` and `model_best.pth`
with worse models and drop the later rows of `metrics.csv`: work of later epochs, lost. So the
older checkpoint starts a branch beside the run instead, `<run>-from-epoch<E>`, which carries
what the run had at that point (its metrics.csv rows up to epoch E, its model_best.pth if that
is not from a later epoch, the checkpoint itself as the branch's latest.pth), and the original
run folder is left exactly as it was.
"""

import shutil
from pathlib import Path
from typing import Any

from engine.checkpoint import load_checkpoint
from utils.errors import InputError
from utils.staged_files import full_disk_reported


def position(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """(last finished epoch, batches of the next epoch already trained)."""
    return checkpoint["epoch"], checkpoint.get("batches_done", 0)


def is_older_than_its_run(resume_path: Path, checkpoint: dict[str, Any]) -> bool:
    """Whether the run folder holding `resume_path` has a later state in its latest.pth. An
    unreadable latest.pth counts as later: it is not ours to overwrite."""
    latest = resume_path.resolve().parent / "latest.pth"
    if not latest.is_file() or latest.samefile(resume_path):
        return False
    try:
        newest = load_checkpoint(latest)
    except InputError:
        return True
    return position(checkpoint) < position(newest)


def make_branch_folder(source: Path, epoch: int) -> Path:
    """Create and return a new folder beside `source` for a branch from `epoch`. Creating it is
    what claims the name: of two processes branching at once, each gets a folder of its own."""
    suffix = 1
    while True:
        candidate = source.parent / (f"{source.name}-from-epoch{epoch}" + (f"-{suffix}" if suffix > 1 else ""))
        try:
            with full_disk_reported(candidate):
                candidate.mkdir()
        except FileExistsError:
            suffix += 1
            continue
        except OSError as exc:
            raise InputError(f"run directory '{candidate}': cannot create it ({exc.strerror or exc})") from None
        return candidate


def start_branch(resume_path: Path, checkpoint: dict[str, Any], branch: Path) -> None:
    """Fill the new folder `branch` (this process holds its lock) with what the run had at the
    checkpoint's position."""
    source = resume_path.resolve().parent
    copies = [(resume_path, branch / "latest.pth")]
    if (source / "metrics.csv").is_file():
        copies.append((source / "metrics.csv", branch / "metrics.csv"))  # later rows: dropped by MetricsCSV
    best = source / "model_best.pth"
    best_epoch = _epoch_or_none(best) if best.is_file() else None
    if best_epoch is not None and best_epoch <= checkpoint["epoch"]:
        copies.append((best, branch / "model_best.pth"))
    for origin, copy in copies:
        with full_disk_reported(copy):
            shutil.copy2(origin, copy)


def _epoch_or_none(path: Path) -> int | None:
    try:
        return load_checkpoint(path)["epoch"]
    except InputError:
        return None
