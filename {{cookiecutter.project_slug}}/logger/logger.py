"""Logging setup: the console for everyone, plus `train.log` in the run directory."""

import logging
import os
import sys
from pathlib import Path

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
# Modules and packages of this project (folders and .py files beside train.py): their records
# pass at every verbosity; other libraries' records pass from WARNING up, so that verbosity 2
# shows our debug lines without theirs.
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_OWN_NAMES = {"__main__"} | {p.stem for p in _PROJECT_ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}


def _is_own_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.split(".")[0] in _OWN_NAMES
_CONSOLE_FORMAT = "%(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbosity: int = 2) -> None:
    """Send log records of the given verbosity (0, 1, 2) to stdout; idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_project_console", False):
            root.removeHandler(handler)
    console = ConsoleHandler(sys.stdout)
    console.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
    console.setLevel(LEVELS[verbosity])
    console.addFilter(_is_own_or_warning)
    console._project_console = True  # type: ignore[attr-defined]
    root.addHandler(console)
    # The root passes everything; each handler keeps its own level (train.log always has INFO).
    root.setLevel(logging.DEBUG)


class ConsoleHandler(logging.StreamHandler):
    """stdout. When it cannot be written (a closed pipe, as in `python train.py ... | head`, or a
    full device) the console goes quiet: its file descriptor is pointed at /dev/null, so neither
    logging nor Python at exit prints a traceback for every record; train.log keeps them all."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)
            return
        try:
            fileno = self.stream.fileno()
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, fileno)
            os.close(quiet)
        except (OSError, ValueError, AttributeError):  # no file descriptor (a test's stream): drop it
            self.setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the life of the handler


class RunLogHandler(logging.FileHandler):
    """Appends records to train.log. A record that cannot be written (a full disk) is counted,
    not reported with logging's "--- Logging error ---" traceback; the first record written
    after such a gap is preceded by a line saying how many were lost and why. The console shows
    every record either way, and a save on that full disk ends the run with one line."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", delay=True)  # opened at the first record: a failure is counted too
        self.lost = 0
        self.reason = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
            if self.lost:
                gap = logging.makeLogRecord({"name": record.name, "levelno": logging.WARNING, "levelname": "WARNING",
                                             "msg": f"{self.lost} log records before this one could not be "
                                                    f"written here ({self.reason})"})
                text = self.format(gap) + self.terminator + text
            if self.stream is None:
                self.stream = self._open()
            self.stream.write(text)
            self.flush()
            self.lost = 0
        except OSError as exc:
            self.lost += 1
            self.reason = exc.strerror or str(exc)
            self._drop_stream()  # what its buffer still holds may be half a line: a new one next time
        except Exception:
            self.handleError(record)

    def _drop_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def add_file_handler(path: Path, verbosity: int = 2) -> logging.Handler:
    """Also append records to `path` (INFO and up, DEBUG too at verbosity 2); call
    `remove_handler` with the result when done."""
    handler = RunLogHandler(path)
    handler.setLevel(min(logging.INFO, LEVELS[verbosity]))
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    handler.addFilter(_is_own_or_warning)
    logging.getLogger().addHandler(handler)
    return handler


def remove_handler(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()
