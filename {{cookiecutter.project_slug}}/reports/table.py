"""The table of runs side by side (Markdown, CSV): runs that differ only in `trainer.seed`, each
with a seed of its own, are one row (mean ± sample standard deviation), and the config keys in
which the rows differ are columns."""

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from reports.run_folder import Run
from utils.errors import listed

SEED_KEY = "trainer.seed"  # runs that differ only here (and do differ here) are one row
# The CSV columns of a row after its name, n and state: a mean and its standard deviation side by side
RUN_CSV_TITLES = ["epochs", "best", "best_std", "best_epoch", "final_lr", "final_lr_std", "wall_s", "wall_s_std"]
STD_NOTE = ("A row of n > 1 runs that differ only in trainer.seed, each seed once, shows mean ± sample standard "
            "deviation (n - 1 in the denominator); the ± part is left out where the runs agree.")


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
    """The runs in groups whose configs are equal but for `trainer.seed`, and whose seeds all
    differ, in the order of their first run. Runs whose configs are equal, seed included (two
    branches of one run, a run repeated), are not samples of the seed's effect: each joins the
    first group of its config that lacks its seed, or starts one."""
    groups: list[list[Run]] = []
    by_config: dict[str, list[list[Run]]] = {}
    for run in runs:
        rest = {key: value for key, value in run.flat.items() if key != SEED_KEY}
        same_config = by_config.setdefault(json.dumps(rest, sort_keys=True, default=str), [])
        seed = _shown(run.flat.get(SEED_KEY, ...))
        group = next((group for group in same_config
                      if all(_shown(other.flat.get(SEED_KEY, ...)) != seed for other in group)), None)
        if group is None:
            group = []
            same_config.append(group)
            groups.append(group)
        group.append(run)
    return groups


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


def duration(seconds: float) -> str:
    """`4.2s`, `45s`, `3m05s`, `2h07m`."""
    if seconds < 9.95:
        return f"{seconds:.1f}s"
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
