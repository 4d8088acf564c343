"""Where a resume trains: in the checkpoint's own run folder, in a branch beside it, or nowhere.

A checkpoint resumes in place only in its own run's folder: a checkpoint of another run (copied
into the folder, say) would overwrite that run's `latest.pth` and `model_best.pth` and mix two
runs in one `metrics.csv`, so it is refused (`check_same_run`: runs are told apart by their
`run_uid`, engine/run_files.py). A folder that holds no run at all (no `latest.pth`, no run
files) takes the checkpoint's run in: that is how a checkpoint put alone in an empty folder is
continued there (`check_scratch_folder`).

Resuming in place from an older checkpoint would overwrite `latest.pth` and `model_best.pth`
with worse models and drop the later rows of `metrics.csv`: work of later epochs, lost. So the
older checkpoint starts a branch beside the run instead, `<run>-from-epoch<E>`, a new run with
an identity of its own, which carries what the run had at that point (its metrics.csv rows up to
epoch E, its model_best.pth if that is not from a later epoch, the checkpoint itself as the
branch's latest.pth), and the original run folder is left exactly as it was.
"""

import shutil
from pathlib import Path
from typing import Any

from engine.checkpoint import load_checkpoint, run_uid_of, write_checkpoint
from engine.run_files import RUN_INFO, recorded_run_uid
from utils.errors import InputError, listed
from utils.staged_files import full_disk_reported


def position(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """(last finished epoch, batches of the next epoch already trained)."""
    return checkpoint["epoch"], checkpoint.get("batches_done", 0)


# A folder with none of these (and no latest.pth but the checkpoint resumed) holds no run.
RUN_FILES = (RUN_INFO, "metrics.csv")


def check_resume_folder(resume_path: Path, checkpoint: dict[str, Any]) -> bool:
    """Refuse, in one line, to resume `checkpoint` (read from `resume_path`) in its folder when
    that holds another run, or holds no run but files the run would overwrite. Returns whether
    the folder holds no run (it then becomes the checkpoint's run folder)."""
    check_same_run(resume_path, checkpoint)
    empty = holds_no_run(resume_path)
    if empty:
        check_scratch_folder(resume_path)
    return empty


def folder_run_uid(resume_path: Path) -> str | None:
    """The identity of the run in the folder that holds `resume_path`: its latest.pth's (when
    that is another file), else the one its run_info.json records last; None when neither says
    (no run there, or one from before runs had an identity)."""
    latest = resume_path.resolve().parent / "latest.pth"
    if latest.is_file() and not latest.samefile(resume_path):
        uid = run_uid_of(latest)
        if uid is not None:
            return uid
    return recorded_run_uid(resume_path.resolve().parent)


def check_same_run(resume_path: Path, checkpoint: dict[str, Any]) -> None:
    """Refuse, in one line, to resume `checkpoint` in a folder that holds another run. A
    checkpoint or folder that does not say which run it is (older formats) passes: it is judged
    by its position alone, as before runs had an identity."""
    own, folder = checkpoint["run_uid"], resume_path.resolve().parent
    theirs = folder_run_uid(resume_path) if own is not None else None
    if theirs is None or theirs == own:
        return
    raise InputError(
        f"checkpoint '{resume_path}': it is of another run (run_uid {own}) than the run in its folder {folder} "
        f"(run_uid {theirs}), whose files resuming there would overwrite; to continue its run, resume it from "
        f"that run's own folder, or put it alone in an empty folder and resume it there; to start a new run from "
        f"its weights: --fine-tune -r {resume_path}"
    )


def holds_no_run(resume_path: Path) -> bool:
    """Whether the folder of `resume_path` holds no run: no run files and no latest.pth other
    than the checkpoint itself (a folder the checkpoint was copied into)."""
    folder = resume_path.resolve().parent
    latest = folder / "latest.pth"
    if latest.is_file() and not latest.samefile(resume_path):
        return False
    return not any((folder / name).exists() for name in RUN_FILES)


def check_scratch_folder(resume_path: Path) -> None:
    """Refuse a folder that holds no run but files that the run would write over or mix with
    its own: other checkpoints (`model_best.pth`, `checkpoint-epoch<N>.pth`, another run's) and
    a `config.json` (a project folder's own config, say)."""
    folder = resume_path.resolve().parent
    others = sorted(path.name for path in folder.glob("*.pth") if not path.samefile(resume_path))
    if (folder / "config.json").exists():
        others.insert(0, "config.json")
    if others:
        raise InputError(
            f"checkpoint '{resume_path}': its folder {folder} holds no run (no latest.pth, {' or '.join(RUN_FILES)}) "
            f"but files that resuming there would overwrite or mix with the run's ({listed(others, 3)}); put the "
            "checkpoint alone in an empty folder and resume it there"
        )


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


def start_branch(resume_path: Path, checkpoint: dict[str, Any], branch: Path, run_uid: str) -> None:
    """Fill the new folder `branch` (this process holds its lock) with what the run had at the
    checkpoint's position; the checkpoints carried are rewritten as the branch's own (`run_uid`)."""
    source = resume_path.resolve().parent
    carried = [(checkpoint, branch / "latest.pth")]
    best = _readable(source / "model_best.pth")
    if best is not None and best["epoch"] <= checkpoint["epoch"]:
        carried.append((best, branch / "model_best.pth"))
    if (source / "metrics.csv").is_file():  # later rows: dropped by MetricsCSV
        with full_disk_reported(branch / "metrics.csv"):
            shutil.copy2(source / "metrics.csv", branch / "metrics.csv")
    for state, path in carried:
        write_checkpoint({**state, "run_uid": run_uid}, path)


def _readable(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except InputError:
        return None
