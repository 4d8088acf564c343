"""The one owner of a run's epoch output: the log line (console and train.log), metrics.csv and
TensorBoard. Everything a finished epoch writes goes through `EpochWriter.write` and
`EpochWriter.saved`."""

import importlib.util
import logging
from pathlib import Path
from typing import Any

from logger.logger import add_file_handler, remove_handler
from logger.metrics_csv import MetricsCSV

logger = logging.getLogger("trainer")


def tensorboard_available() -> bool:
    """Whether this project has TensorBoard output (a project generated without it has no
    logger/visualization.py)."""
    return importlib.util.find_spec("logger.visualization") is not None


class EpochWriter:
    """Fans each epoch's row out to the log, `metrics.csv` and TensorBoard in `run_dir`.

    `enabled` False (every DDP rank but 0) makes it write nothing at all; `tensorboard` False
    leaves TensorBoard out. A resumed run (`start_epoch` > 1) keeps the earlier rows and points
    and drops those of the epochs it trains again. Use it as a context manager, or `close` it.
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_epoch: int = 1,
                 verbosity: int = 2) -> None:
        self.enabled = enabled
        self.csv = MetricsCSV(run_dir / "metrics.csv", start_epoch=start_epoch) if enabled else None
        self.file_handler = add_file_handler(run_dir / "train.log", verbosity) if enabled else None
        self.tensorboard: Any = None
        if enabled and tensorboard and tensorboard_available():
            from logger.visualization import TensorboardWriter  # imports tensorboard: only when used

            self.tensorboard = TensorboardWriter(run_dir, enabled=True, start_epoch=start_epoch)

    def write(self, epoch: int, row: dict[str, float]) -> dict[Path, bytes]:
        """One epoch: log `row` (`epoch`, the metrics and `lr`) and return the new content of
        metrics.csv (path -> bytes; nothing when disabled), which the trainer saves together with
        the epoch's checkpoint, all or nothing. Call `saved` once that is done."""
        summary = "  ".join(f"{key} {value:.6g}" for key, value in row.items() if key != "epoch")
        logger.info("epoch %d: %s", epoch, summary)
        return {self.csv.path: self.csv.content_with(row)} if self.csv is not None else {}

    def saved(self, epoch: int, row: dict[str, float]) -> None:
        """The epoch's checkpoint and metrics.csv are on disk: TensorBoard shows the epoch now."""
        if self.csv is not None:
            self.csv.added(row)
        if self.tensorboard is not None:
            self.tensorboard.write_epoch(epoch, row)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.file_handler is not None:
            remove_handler(self.file_handler)
            self.file_handler = None

    def __enter__(self) -> "EpochWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
