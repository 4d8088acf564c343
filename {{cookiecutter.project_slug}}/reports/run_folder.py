"""One run folder read back: what it says about its run (state, epochs, metrics per epoch, best
monitored value, final lr, wall time, config). A run folder is a folder holding `config.json`. It
is only read: `config.json`, `metrics.csv` (with the tolerant reader that resuming uses),
`run_info.json`, `train.log`, the lock `.lock`, and `latest.pth` only when nothing else says
whether the run finished."""

import math
import os
import struct
import sys
from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from cli import read_config
from engine.resume import flatten
from engine.run_files import read_run_info
from engine.run_lock import LOCK_FILE  # held (an exclusive POSIX lock) by the live process that owns the run folder
from logger.metrics_csv import read_metrics_csv  # the one tolerant reader of metrics.csv
from utils.errors import InputError, first_line

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks to ask about
    fcntl = None  # type: ignore[assignment]

DIVERGED_LINE = "Training failed: training diverged"  # what the trainer logs when the loss became NaN
RESUMED_LINE = "Resuming from '"  # a later invocation trained on: an earlier divergence is history
LOG_STAMP = "%Y-%m-%d %H:%M:%S,%f"  # logging's asctime, the start of every train.log record
# `ended.outcome` in run_info.json that are a state by themselves; the others read "<outcome> at epoch E"
WHOLE_OUTCOMES = ("finished", "diverged")
# struct flock as fcntl(F_GETLK) reads and writes it: its format and field order on each platform
FLOCK_LAYOUTS = {
    "linux": ("hhqqi", ("type", "whence", "start", "len", "pid")),
    "darwin": ("qqihh", ("start", "len", "pid", "type", "whence")),
}


@dataclass
class Run:
    """One run folder, read."""

    folder: Path
    label: str
    config: dict[str, Any]
    columns: list[str]  # metrics.csv's header
    rows: list[dict[str, float]]  # metrics.csv, one dict per epoch; an empty cell is left out
    state: str  # finished, running, diverged, stopped at epoch E, ...
    wall_s: float | None  # None: no run_info.json to tell

    @property
    def flat(self) -> dict[str, Any]:
        """The config as dotted keys."""
        return flatten(self.config)

    @property
    def monitor(self) -> str:
        return str(self.config.get("trainer", {}).get("monitor", "off"))

    @property
    def epochs_done(self) -> int:
        return int(self.rows[-1]["epoch"]) if self.rows else 0

    def best(self) -> tuple[float, int] | None:
        """The best value of the monitored metric and its epoch (the first, on a tie, as the
        trainer counts an improvement); None with the monitor off or no value yet."""
        mode, _, metric = self.monitor.partition(" ")
        values = [(row[metric], int(row["epoch"])) for row in self.rows
                  if metric in row and not math.isnan(row[metric])]
        if mode not in ("min", "max") or not values:
            return None
        return (min if mode == "min" else max)(values, key=lambda pair: pair[0])

    def last(self, metric: str) -> float | None:
        """The metric's value in the last epoch that logged it."""
        return next((row[metric] for row in reversed(self.rows) if metric in row), None)

    def curve(self, metric: str) -> dict[int, float]:
        """Epoch -> the metric's value (NaN left out)."""
        return {int(row["epoch"]): row[metric] for row in self.rows if metric in row and not math.isnan(row[metric])}


def read_run(folder: Path, label: str | None = None) -> Run:
    """Read the run in `folder`; anything unreadable is an InputError naming the file."""
    config = read_config(folder / "config.json")
    columns, rows = read_metrics(folder / "metrics.csv")
    entries = read_run_info(folder)
    stamps, diverged = read_log(folder / "train.log")
    running = lock_held(folder / LOCK_FILE)
    last_entry = entries[-1] if entries and isinstance(entries[-1], dict) else {}
    epochs_done = int(rows[-1]["epoch"]) if rows else 0
    state = run_state(folder, config, epochs_done, last_entry.get("ended"), diverged, running)
    return Run(folder, label or folder.name, config, columns, rows, state, wall_seconds(entries, stamps, running))


def read_metrics(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    """metrics.csv's header and rows as numbers (none for a run without epochs yet)."""
    if not path.exists():
        return [], []
    columns, cells = read_metrics_csv(path)
    rows = []
    for row in cells:
        numbers = {}
        for key, text in row.items():
            if not text.strip():
                continue
            try:
                numbers[key] = float(text)
            except ValueError:
                raise InputError(f"metrics file '{path}': epoch {row['epoch']} has {key} {text!r}, "
                                 "not a number") from None
        rows.append(numbers)
    return columns, rows


def read_log(path: Path) -> tuple[list[datetime], bool]:
    """train.log's time stamps (local time, as the run's process wrote them), and whether the
    run diverged in its last invocation (the line of a divergence that a resume did not follow)."""
    stamps: list[datetime] = []
    diverged = False
    if not path.is_file():
        return stamps, diverged
    with path.open(encoding="utf-8", errors="replace") as file:
        for line in file:
            if line[:1].isdigit():
                try:
                    stamps.append(datetime.strptime(line[:23], LOG_STAMP))
                except ValueError:
                    pass  # a message's second line
            if DIVERGED_LINE in line:
                diverged = True
            elif RESUMED_LINE in line:
                diverged = False
    return sorted(stamps), diverged


def lock_held(path: Path) -> bool:
    """Whether a live process holds the run folder's lock: an exclusive POSIX lock on `path`
    that the process owning the folder holds while it runs (the OS drops it when the process
    dies, however it dies). Asked with fcntl's F_GETLK, which only looks: taking the lock, even
    for an instant, could refuse the folder to its own run starting at that moment. False where
    the file is missing or the platform cannot be asked."""
    layout = next((layout for name, layout in FLOCK_LAYOUTS.items() if sys.platform.startswith(name)), None)
    if fcntl is None or layout is None or not path.is_file():
        return False
    form, names = layout
    query = {"type": fcntl.F_WRLCK, "whence": os.SEEK_SET, "start": 0, "len": 0, "pid": 0}  # len 0: to the end
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        # 16 bytes more: room for the padding at the end of the platform's struct
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(form, *(query[name] for name in names)) + bytes(16))
    except OSError:
        return False
    finally:
        os.close(fd)
    found = dict(zip(names, struct.unpack(form, answer[: struct.calcsize(form)]), strict=True))
    return found["type"] != fcntl.F_UNLCK


def run_state(folder: Path, config: dict[str, Any], epochs_done: int, ended: Any, diverged: bool,
              running: bool) -> str:
    """running (the lock is held); else the last invocation's `ended` record in run_info.json;
    for runs without one (older runs, a process killed with SIGKILL): diverged (train.log says
    so), finished (latest.pth reached the last epoch or an early stop), or stopped at epoch E."""
    if running:
        return "running"
    if isinstance(ended, dict) and ended.get("outcome"):
        outcome = str(ended["outcome"])
        return outcome if outcome in WHOLE_OUTCOMES else f"{outcome} at epoch {ended.get('epoch', epochs_done)}"
    if diverged:
        return "diverged"
    if reached_the_end(folder, config.get("trainer", {}), epochs_done):
        return "finished"
    return f"stopped at epoch {epochs_done}"


def reached_the_end(folder: Path, trainer: dict[str, Any], epochs_done: int) -> bool:
    """Whether the run trained its last epoch or stopped early, by latest.pth (by metrics.csv
    when there is none). The checkpoint is memory-mapped: only the few numbers asked for are read."""
    epochs, early_stop = trainer.get("epochs", 0), trainer.get("early_stop") or 0
    latest = folder / "latest.pth"
    if not latest.is_file():
        return epochs_done >= epochs
    try:
        checkpoint = torch.load(latest, map_location="cpu", weights_only=True, mmap=True)
        epoch, batches_done = checkpoint["epoch"], checkpoint.get("batches_done", 0)
        not_improved = checkpoint.get("not_improved_count", 0)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InputError(f"checkpoint '{latest}': cannot read it ({first_line(exc)})") from None
    return (epoch >= epochs and not batches_done) or (early_stop > 0 and not_improved >= early_stop)


def wall_seconds(entries: list[Any], stamps: list[datetime], running: bool) -> float | None:
    """Seconds the run's processes ran, summed over its invocations (the waits between a stop
    and its resume left out). Each runs from its `started` to its `ended.at`; without one, to
    its last train.log record (the last before the next invocation started), or to now while
    it runs. None without run_info.json."""
    spans = [(start, entry.get("ended")) for entry in entries if isinstance(entry, dict)
             and (start := _time(entry.get("started"))) is not None]
    if not spans:
        return None
    total = 0.0
    for index, (start, ended) in enumerate(spans):
        end = _time(ended.get("at")) if isinstance(ended, dict) else None
        last = index == len(spans) - 1
        if end is not None:
            end = end.astimezone(start.tzinfo) if start.tzinfo and end.tzinfo else end
        elif last and running:
            end = datetime.now(start.tzinfo)
        else:  # train.log's stamps are the local time of the process that wrote them, as `started` is
            before = None if last else _local(spans[index + 1][0])
            end = _last_stamp(stamps, _local(start), before) or _local(start)
        total += max(0.0, (_local(end) - _local(start)).total_seconds())
    return total


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _local(moment: datetime) -> datetime:
    """The wall-clock reading, without its time zone (as train.log writes it)."""
    return moment.replace(tzinfo=None)


def _last_stamp(stamps: list[datetime], start: datetime, before: datetime | None) -> datetime | None:
    end = len(stamps) if before is None else bisect_left(stamps, before)
    return stamps[end - 1] if end and stamps[end - 1] >= start else None


def read_runs(folders: list[Path], named: set[Path] | None = None) -> tuple[list[Run], list[str]]:
    """Every run folder read, each labelled with its name (with its path where two share one),
    and a line for each that was left out. A folder in `named` (given by the user itself; all,
    when None) that cannot be read is an InputError naming the file; one found in a folder of
    runs is left out, its line saying why, so that one broken run does not hide the others."""
    names = [folder.name for folder in folders]
    runs, unreadable = [], []
    for folder in folders:
        label = folder.name if names.count(folder.name) == 1 else str(folder)
        try:
            runs.append(read_run(folder, label))
        except InputError as exc:
            if named is None or folder in named:
                raise
            unreadable.append((label, str(exc)))
    if unreadable and not runs:
        raise InputError(f"no run found can be read; the first: {unreadable[0][1]}")
    return runs, [f"Left out {label}, which cannot be read: {reason}" for label, reason in unreadable]
