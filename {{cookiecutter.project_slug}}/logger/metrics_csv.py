"""metrics.csv: one row per epoch, written by this class only."""

import csv
import math
from pathlib import Path


class MetricsCSV:
    """Appends one row per epoch to `path`: `epoch`, then every logged key.

    A resumed run keeps the rows of the epochs before `start_epoch` and drops later ones
    (they are about to be trained again), so no epoch appears twice.
    """

    def __init__(self, path: Path, start_epoch: int = 1) -> None:
        self.path = path
        self.columns: list[str] | None = None
        if path.exists():
            with path.open(newline="") as file:
                reader = csv.DictReader(file)
                self.columns = list(reader.fieldnames or []) or None
                kept = [row for row in reader if int(row["epoch"]) < start_epoch]
            self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as file:
            if self.columns:
                writer = csv.DictWriter(file, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(rows)
        tmp.replace(self.path)

    def write(self, row: dict[str, float | int]) -> None:
        """Append the row of one epoch; the first row fixes the columns."""
        if self.columns is None:
            self.columns = list(row)
            self._rewrite([])
        with self.path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns, extrasaction="ignore")
            writer.writerow({key: _format(row.get(key, math.nan)) for key in self.columns})


def _format(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
