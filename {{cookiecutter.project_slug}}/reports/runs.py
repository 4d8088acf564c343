"""Runs side by side: what a run folder says about its run (state, epochs, best monitored value,
final lr, wall time, config), runs that differ only in `trainer.seed` grouped into one row (mean
± sample standard deviation), the table (Markdown, CSV) and the curves of metrics per epoch
(matplotlib, drawn without a display).

A run folder is a folder holding `config.json`. It is only read: `config.json`, `metrics.csv`
(with the tolerant reader that resuming uses), `run_info.json`, `train.log`, the lock `.lock`,
and `latest.pth` only when nothing else says whether the run finished.
"""

import csv
import difflib
import io
import json
import math
import os
import statistics
import struct
import sys
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cli import read_config, with_overrides
from config_schema import validate
from engine.resume import flatten
from engine.run_files import read_run_info
from logger.metrics_csv import _read as read_metrics_csv  # the one tolerant reader of metrics.csv
from utils.errors import InputError, first_line, listed
from utils.staged_files import write_atomic  # the one atomic writer of files

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks to ask about
    fcntl = None  # type: ignore[assignment]

SEED_KEY = "trainer.seed"  # runs that differ only here are one row
LOCK_FILE = ".lock"  # held (an exclusive POSIX lock) by the live process that owns the run folder
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
# The CSV columns of a row after its name, n and state: a mean and its standard deviation side by side
RUN_CSV_TITLES = ["epochs", "best", "best_std", "best_epoch", "final_lr", "final_lr_std", "wall_s", "wall_s_std"]
STD_NOTE = ("A row of n > 1 runs that differ only in trainer.seed shows mean ± sample standard deviation "
            "(n - 1 in the denominator); the ± part is left out where the runs agree.")


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


# ---------------------------------------------------------------- reading a run folder
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


# ---------------------------------------------------------------- finding runs
def runs_folder(config_path: Path, overrides: list[str]) -> Path:
    """`<save_dir>/<name>/` of the config file with `-o` overrides: where train.py puts its runs."""
    config = validate(with_overrides(read_config(config_path), overrides))
    return Path(config["trainer"]["save_dir"]) / config["name"]


def is_study_folder(path: Path) -> bool:
    """A sweep's study folder: `study.db` beside the trials' run folders."""
    return (path / "study.db").is_file()


def is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def find_runs(paths: list[Path]) -> list[Path]:
    """The run folders that `paths` name: a run folder itself, or the run folders directly in a
    folder (in name order). Anything else is an InputError naming the path."""
    found: list[Path] = []
    for path in paths:
        if is_run_folder(path):
            found.append(path)
            continue
        if not path.exists():
            raise InputError(f"'{path}': no such run or folder")
        if not path.is_dir():
            raise InputError(f"'{path}': a file, not a run folder (one holding config.json) or a folder of runs")
        runs = sorted(child for child in path.iterdir() if is_run_folder(child))
        if not runs:
            raise InputError(f"'{path}': not a run folder (no config.json) and holds no run folders"
                             + studies_hint(path))
        found.extend(runs)
    unique = {folder.resolve(): folder for folder in reversed(found)}  # a run named twice counts once
    return [folder for folder in found if unique[folder.resolve()] is folder]


def studies_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(child for child in folder.iterdir() if child.is_dir() and is_study_folder(child))


def studies_hint(folder: Path) -> str:
    """For a message about `folder`: the study folders it holds, and how to report one."""
    studies = studies_in(folder)
    if not studies:
        return ""
    return f"; it holds the studies {listed([s.name for s in studies])}: report one with python report.py {studies[0]}"


def read_runs(folders: list[Path]) -> list[Run]:
    """Every run folder read, each labelled with its name (with its path where two share one)."""
    names = [folder.name for folder in folders]
    return [read_run(folder, folder.name if names.count(folder.name) == 1 else str(folder)) for folder in folders]


# ---------------------------------------------------------------- rows: runs and groups of seeds
@dataclass(frozen=True)
class Stat:
    """Values of one quantity over the runs of a row: their mean and sample standard deviation."""

    mean: float
    std: float | None  # None for one value
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> "Stat | None":
        known = [value for value in values if value is not None]
        if not known:
            return None
        return cls(statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else None, len(known))

    def shown(self, runs: int, form: Any = "{:.4g}".format) -> str:
        spread = self.std is not None and form(self.std) != form(0)  # left out where the runs agree
        text = form(self.mean) + (f" ± {form(self.std)}" if spread else "")
        return text + (f" ({self.n} of {runs})" if self.n < runs else "")


@dataclass
class Row:
    """One row of the table: a run, or runs that differ only in `trainer.seed`."""

    runs: list[Run]
    values: dict[str, str] = field(default_factory=dict)  # dotted key -> the row's value(s), as shown

    @property
    def label(self) -> str:
        return listed([run.label for run in self.runs], limit=3)

    @property
    def state(self) -> str:
        return _counted([run.state for run in self.runs])

    @property
    def best(self) -> Stat | None:
        return Stat.of([best[0] if (best := run.best()) else None for run in self.runs])

    @property
    def best_epoch(self) -> str:
        return _span([best[1] for run in self.runs if (best := run.best())])

    @property
    def epochs(self) -> str:
        return _span([run.epochs_done for run in self.runs])

    @property
    def final_lr(self) -> Stat | None:
        return Stat.of([run.last("lr") for run in self.runs])

    @property
    def wall(self) -> Stat | None:
        return Stat.of([run.wall_s for run in self.runs])

    @property
    def legend(self) -> str:
        return self.label if len(self.runs) == 1 else f"{self.label}: mean of {len(self.runs)}, band min-max"

    def curve(self, metric: str) -> tuple[list[int], list[float], list[float], list[float]] | None:
        """Epochs, and per epoch the mean, lowest and highest value over the row's runs that
        logged the metric in that epoch; None when none did."""
        curves = [run.curve(metric) for run in self.runs]
        epochs = sorted({epoch for curve in curves for epoch in curve})
        if not epochs:
            return None
        per_epoch = [[curve[epoch] for curve in curves if epoch in curve] for epoch in epochs]
        return (epochs, [statistics.fmean(v) for v in per_epoch], [min(v) for v in per_epoch],
                [max(v) for v in per_epoch])


def _counted(states: list[str]) -> str:
    """`finished`, or `2 finished, 1 running` when the runs of a row disagree."""
    distinct = list(dict.fromkeys(states))
    return distinct[0] if len(distinct) == 1 else ", ".join(f"{states.count(s)} {s}" for s in distinct)


def _span(numbers: list[int]) -> str:
    if not numbers:
        return "-"
    low, high = min(numbers), max(numbers)
    return str(low) if low == high else f"{low}-{high}"


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs in groups whose configs are equal but for `trainer.seed`, in the order of their
    first run."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        rest = {key: value for key, value in run.flat.items() if key != SEED_KEY}
        groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(run)
    return list(groups.values())


def differing_keys(runs: list[Run]) -> list[str]:
    """The dotted config keys whose values are not the same in every run (a key one run lacks
    counts as differing), in the order of the first config."""
    flats = [run.flat for run in runs]
    keys = dict.fromkeys(key for flat in flats for key in flat)
    return [key for key in keys if len({_shown(flat.get(key, ...)) for flat in flats}) > 1]


def _shown(value: Any) -> str:
    """A config value as the table shows it; `...` for a key the run's config lacks."""
    if value is ...:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def rows_of(runs: list[Run]) -> tuple[list[Row], list[str]]:
    """One row per group of seeds, and the config keys the runs differ in (each row's values)."""
    keys = differing_keys(runs)
    rows = []
    for group in seed_groups(runs):
        values = {key: ", ".join(dict.fromkeys(_shown(run.flat.get(key, ...)) for run in group)) for key in keys}
        rows.append(Row(group, values=values))
    return rows, keys


# ---------------------------------------------------------------- the table
def duration(seconds: float) -> str:
    """`45s`, `3m05s`, `2h07m`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Table:
    """What report.py prints (Markdown) and writes with --csv (the same rows, numbers as numbers:
    a mean and its standard deviation in two columns)."""

    titles: list[str]
    cells: list[list[str]]
    csv_titles: list[str]
    csv_cells: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [self.titles, ["---"] * len(self.titles), *self.cells]
        text = "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)
        return text + "".join(f"\n\n{note}" for note in self.notes)

    def csv(self) -> str:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(self.csv_titles)
        writer.writerows([["" if cell is None else cell for cell in line] for line in self.csv_cells])
        return buffer.getvalue()


def monitor_title(runs: list[Run]) -> str:
    """`best val_loss (min)` when every run monitors the same, else `best` (trainer.monitor is
    then a column of its own)."""
    monitors = {run.monitor for run in runs}
    if len(monitors) == 1 and (monitor := monitors.pop()) != "off":
        mode, _, metric = monitor.partition(" ")
        return f"best {metric} ({mode})"
    return "best"


def run_cells(row: Row) -> tuple[list[str], list[Any]]:
    """The cells of a row after its name and state: epochs, best value, its epoch, final lr, wall
    time (Markdown), and the same as CSV cells."""
    n = len(row.runs)
    best, lr, wall = row.best, row.final_lr, row.wall
    shown = [row.epochs, best.shown(n) if best else "-", row.best_epoch, lr.shown(n) if lr else "-",
             wall.shown(n, duration) if wall else "-"]
    numbers = [row.epochs, *_pair(best), row.best_epoch, *_pair(lr), *_pair(wall)]
    return shown, numbers


def _pair(stat: Stat | None) -> tuple[float | None, float | None]:
    return (stat.mean, stat.std) if stat else (None, None)


def runs_table(runs: list[Run]) -> tuple[Table, list[Row]]:
    """The table of `runs`, grouped by seed, and its rows."""
    rows, keys = rows_of(runs)
    titles = ["run", "n", "state", "epochs", monitor_title(runs), "best epoch", "final lr", "wall time", *keys]
    cells, csv_cells = [], []
    for row in rows:
        shown, numbers = run_cells(row)
        values = [row.values[key] for key in keys]
        cells.append([row.label, str(len(row.runs)), row.state, *shown, *values])
        csv_cells.append([row.label, len(row.runs), row.state, *numbers, *values])
    notes = [STD_NOTE] if any(len(row.runs) > 1 for row in rows) else []
    return Table(titles, cells, ["run", "n", "state", *RUN_CSV_TITLES, *keys], csv_cells, notes), rows


# ---------------------------------------------------------------- the plot
def check_metrics(runs: list[Run], metrics: list[str]) -> None:
    """Refuse a metric that no run logged, naming those they did."""
    logged = list(dict.fromkeys(column for run in runs for column in run.columns if column != "epoch"))
    for metric in metrics:
        if not any(run.curve(metric) for run in runs):
            close = difflib.get_close_matches(metric, logged, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"--plot {metric}: no run logged it; their metrics.csv hold "
                             f"{listed(logged, None) or 'no epochs yet'}{hint}")


def plot_metrics(rows: list[Row], metrics: list[str]) -> Figure:
    """One panel per metric, one line per row in the table's order and colour: a run's value per
    epoch, or a group's mean with a band from its lowest to its highest run (with a few seeds a
    standard deviation says little, and the band shows every run)."""
    figure = Figure(figsize=(8, 0.5 + 3 * len(metrics)), layout="constrained")
    for axes, metric in zip(figure.subplots(len(metrics), 1, squeeze=False)[:, 0], metrics, strict=True):
        for index, row in enumerate(rows):
            curve = row.curve(metric)
            if curve is None:
                continue
            epochs, mean, low, high = curve
            colour = f"C{index % 10}"
            axes.plot(epochs, mean, color=colour, marker="o" if len(epochs) <= 30 else None, markersize=3,
                      label=row.legend)
            if len(row.runs) > 1:
                axes.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
        axes.set(title=metric, xlabel="epoch", ylabel=metric)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def figure_bytes(figure: Figure, path: Path) -> bytes:
    """The figure as the file `path` names it (.png, .svg, .pdf, ...)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower(), dpi=120, bbox_inches="tight")  # no label cut off
    return buffer.getvalue()


def check_output(path: Path, image: bool = False) -> None:
    """Refuse an output file that cannot be written (before anything is written)."""
    suffix = path.suffix.lstrip(".").lower()
    formats = Figure().canvas.get_supported_filetypes()
    if image and suffix not in formats:
        raise InputError(f"--out '{path}': the file name must end in one of .{', .'.join(sorted(formats))}")
    if path.is_dir():
        raise InputError(f"'{path}': a folder; give a file name")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise InputError(f"'{path}': cannot write in the folder '{path.parent}' (missing or not writable)")


def write_files(files: dict[Path, bytes]) -> None:
    """Write every file (each replaced whole, so a reader never sees half of one)."""
    for path in files:
        check_output(path)
    for path, data in files.items():
        try:
            write_atomic(data, path)
        except OSError as exc:
            raise InputError(f"'{path}': cannot write it ({exc.strerror or exc})") from None
