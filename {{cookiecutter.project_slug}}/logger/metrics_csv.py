"""metrics.csv: one row per epoch, written by this class only."""

import csv
import io
from pathlib import Path

from utils.checkpoint import _write_atomic as write_atomic  # the one atomic writer of run files
from utils.errors import InputError


class MetricsCSV:
    """Appends one row per epoch to `path`: `epoch`, then every logged key.

    A resumed run keeps the rows of the epochs before `start_epoch` and drops later ones
    (they are about to be trained again), so no epoch appears twice. Every column stays
    honest: a key first logged on resume becomes a new column (earlier rows get an empty
    cell), and a column that a row does not log gets an empty cell, never a made-up value.

    Creating one only reads `path`: a file that cannot be continued is an InputError naming
    it, and the file is rewritten only by the first `write`.
    """

    def __init__(self, path: Path, start_epoch: int = 1) -> None:
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, str]] = []
        self._synced = False  # False until the file on disk holds exactly `columns` and `rows`
        if path.exists():
            self.columns, rows = _read(path)
            self.rows = [row for row in rows if int(row["epoch"]) < start_epoch]

    def write(self, row: dict[str, float | int]) -> None:
        """Add the row of one epoch; a key the header lacks widens the file by one column."""
        new_columns = [key for key in row if key not in self.columns]
        self.columns.extend(new_columns)
        cells = {key: _format(value) for key, value in row.items()}
        self.rows.append(cells)
        if new_columns or not self._synced:
            self._rewrite()
            self._synced = True
            return
        with self.path.open("a", newline="", encoding="utf-8") as file:
            csv.DictWriter(file, fieldnames=self.columns, restval="").writerow(cells)

    def _rewrite(self) -> None:
        """Replace the whole file at once, so that a crash leaves the old file or the new one."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(text.getvalue().encode("utf-8"), self.path)


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of an existing metrics.csv, `epoch` as a plain integer.

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
        raise InputError(f"metrics file '{path}': no 'epoch' column in its header ({shown[:120]})")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise InputError(f"metrics file '{path}': column '{duplicates[0]}' appears twice in its header")
    rows = []
    for number, cells in body:
        if len(cells) > len(header):
            raise InputError(f"metrics file '{path}': line {number} has {len(cells)} cells, the header {len(header)}")
        row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
        row["epoch"] = str(_epoch(path, number, row["epoch"]))
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


def _format(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
