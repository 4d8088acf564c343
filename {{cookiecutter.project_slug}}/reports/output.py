"""The files report.py writes (--csv, --plot): each checked before anything is written, and
each replaced whole."""

from pathlib import Path

from matplotlib.figure import Figure

from utils.errors import InputError
from utils.staged_files import check_writable_file, write_atomic  # the one atomic writer of files


def check_output(path: Path, image: bool = False) -> None:
    """Refuse an output file that cannot be written (before anything is written)."""
    suffix = path.suffix.lstrip(".").lower()
    formats = Figure().canvas.get_supported_filetypes()
    if image and suffix not in formats:
        raise InputError(f"--out '{path}': the file name must end in one of .{', .'.join(sorted(formats))}")
    check_writable_file(path)


def write_files(files: dict[Path, bytes]) -> None:
    """Write every file (each replaced whole, so a reader never sees half of one)."""
    for path in files:
        check_output(path)
    for path, data in files.items():
        try:
            write_atomic(data, path)
        except OSError as exc:
            raise InputError(f"'{path}': cannot write it ({exc.strerror or exc})") from None
