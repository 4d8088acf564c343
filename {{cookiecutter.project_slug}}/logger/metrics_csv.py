"""metrics.csv: one row per epoch, written by this class only."""

import csv
import io
from pathlib import Path

from utils.errors import InputError
from utils.staged_files import write_atomic  # the one atomic writer of run files


class MetricsCSV:
    """One row per epoch in `path`: `epoch`, then every logged key.

    A resumed run keeps the rows of the epochs before `start_epoch` and drops later ones
    (they are about to be trained again), so no epoch appears twice. Every column stays
    honest: a key first logged on resume becomes a new column (earlier rows get an empty
    cell), and a column that a row does not log gets an empty cell, never a made-up value.

    Creating one only reads `path`: a file that cannot be continued (two rows for one epoch
    among them) is an InputError naming it. The file is always replaced whole: `content_with`
    gives the new content for the trainer to save with the epoch's checkpoint, `added` then
    records that it was written; `write` does both at once.
    """

    def __init__(self, path: Path, start_epoch: int = 1) -> None:
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, str]] = []
        if path.exists():
            self.columns, rows = read_metrics_csv(path)
            self.rows = [row for row in rows if int(row["epoch"]) < start_epoch]
        kept = {int(row["epoch"]) for row in self.rows}
        # the epochs before `start_epoch` that have no row (taken out of the file, or the file lost)
        self.missing = [epoch for epoch in range(1, start_epoch) if epoch not in kept]

    def write(self, row: dict[str, float | int]) -> None:
        """Add the row of one epoch to the file now."""
        write_atomic(self.content_with(row), self.path)
        self.added(row)

    def content_with(self, row: dict[str, float | int]) -> bytes:
        """The whole file with `row` added (a key the header lacks widens it by one column);
        nothing is written or changed."""
        columns = self.columns + [key for key in row if key not in self.columns]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows([*self.rows, _cells(row)])
        return text.getvalue().encode("utf-8")

    def added(self, row: dict[str, float | int]) -> None:
        """`row` is in the file now (written with `content_with`'s content)."""
        self.columns.extend(key for key in row if key not in self.columns)
        self.rows.append(_cells(row))


def read_metrics_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of an existing metrics.csv, `epoch` as a plain integer: the one
    tolerant reader, used by resuming (MetricsCSV) and by report.py.

    Accepts what a spreadsheet makes of the file when it saves it again: a UTF-8 byte order
    mark, CRLF line ends, epochs written as `2.0`, empty trailing lines or rows of empty cells.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drops the byte order mark
    except UnicodeDecodeError:
        raise InputError(f"metrics file '{path}': not UTF-8 text; save it as UTF-8 CSV") from None
    except OSError as exc:
        raise InputError(f"metrics file '{path}': cannot read it ({exc.strerror or exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    lines = [(number, cells) for number, cells in enumerate(reader, start=1) if any(cell.strip() for cell in cells)]
    if not lines:
        return [], []
    (_, header), body = lines[0], lines[1:]
    if "epoch" not in header:
        shown = ",".join(header)
        separator = next((mark for mark in (";", "\t") if len(header) == 1 and mark in header[0]), None)
        if separator is not None:
            raise InputError(f"metrics file '{path}': its columns are separated by {separator!r}, not commas "
                             f"({shown[:60]}); save it as comma-separated CSV")
        raise InputError(f"metrics file '{path}': no 'epoch' column in its header ({shown[:120]})")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise InputError(f"metrics file '{path}': column '{duplicates[0]}' appears twice in its header")
    rows: list[dict[str, str]] = []
    first_line_of: dict[str, int] = {}
    for number, cells in body:
        if len(cells) > len(header):
            raise InputError(f"metrics file '{path}': line {number} has {len(cells)} cells, the header {len(header)}")
        row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
        row["epoch"] = str(_epoch(path, number, row["epoch"]))
        if row["epoch"] in first_line_of:  # what two processes training one run at once leave
            raise InputError(f"metrics file '{path}': epoch {row['epoch']} has two rows (lines "
                             f"{first_line_of[row['epoch']]} and {number}), written by two processes training this "
                             "run at once; keep one row per epoch and resume again")
        first_line_of[row["epoch"]] = number
        rows.append(row)
    return header, rows


def _epoch(path: Path, number: int, text: str) -> int:
    """`3`, or `3.0` as a spreadsheet may write it; anything else is refused."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or value < 0:
        raise InputError(f"metrics file '{path}': line {number} has epoch {text!r}, not a whole number")
    return int(value)


def _cells(row: dict[str, float | int]) -> dict[str, str]:
    return {key: str(value) if isinstance(value, int) else repr(float(value)) for key, value in row.items()}


def epoch_ranges(epochs: list[int]) -> str:
    """Sorted epochs as runs of consecutive ones: [2, 3, 4, 7] -> '2-4, 7'."""
    parts: list[str] = []
    for epoch in sorted(epochs):
        if parts and parts[-1].rpartition("-")[2] == str(epoch - 1):
            parts[-1] = f"{parts[-1].partition('-')[0]}-{epoch}"
        else:
            parts.append(str(epoch))
    return ", ".join(parts)
