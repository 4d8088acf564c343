"""The one owner of a run's epoch output: the log line (console and train.log), metrics.csv,
TensorBoard and the MLflow run that mirrors metrics.csv. Everything a finished epoch writes goes
through `EpochWriter.write` and `EpochWriter.saved`."""

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


def mlflow_available() -> bool:
    """Whether this project tracks runs in MLflow (a project generated without it has no
    logger/mlflow_tracker.py)."""
    return importlib.util.find_spec("logger.mlflow_tracker") is not None


def connect_tracker(config: dict[str, Any]) -> Any:
    """The MLflow tracker that the resolved `config` asks for, its store checked (an InputError
    when it does not answer; nothing is created), or None: tracking is off, or not in this
    project. Imports mlflow only when it tracks."""
    options = config["trainer"].get("mlflow")
    if not mlflow_available() or not options or not options["enabled"]:
        return None
    from logger.mlflow_tracker import connect

    return connect(options, config["trainer"]["save_dir"], options["experiment"] or config["name"])


class EpochWriter:
    """Fans each epoch's row out to the log, `metrics.csv` and TensorBoard in `run_dir`, and to
    `tracker` (from `connect_tracker`; None: no MLflow), which `track` opens.

    `enabled` False (every DDP rank but 0) makes it write nothing at all; `tensorboard` False
    leaves TensorBoard out. A resumed run (`start_epoch` > 1) keeps the earlier rows and points
    and drops those of the epochs it trains again. Use it as a context manager, or `close` it.
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_epoch: int = 1,
                 verbosity: int = 2, tracker: Any = None) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.tracker = tracker if enabled else None
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

    def track(self, tags: dict[str, str], branched_from: Path | None = None) -> None:
        """Open the run's MLflow run (tagged with `tags`; a branch with the run folder it came
        from) and send it the rows metrics.csv keeps that it lacks; call it once, before the
        first epoch."""
        if self.tracker is not None and self.csv is not None:
            self.tracker.start(self.run_dir, self.csv.rows, tags, branched_from)

    def saved(self, epoch: int, row: dict[str, float]) -> None:
        """The epoch's checkpoint and metrics.csv are on disk: TensorBoard shows the epoch now,
        and MLflow gets every row of metrics.csv it lacks (this one, and any it missed)."""
        if self.csv is not None:
            self.csv.added(row)
        if self.tensorboard is not None:
            self.tensorboard.write_epoch(epoch, row)
        if self.tracker is not None and self.csv is not None:
            self.tracker.sync(self.csv.rows)

    def close(self, error: BaseException | None = None, discarded: bool = False) -> None:
        """The run ends (with `error`, None when it finished; `discarded`: its folder is about
        to be removed): the MLflow run is marked so, or deleted with the folder."""
        if self.tracker is not None and self.csv is not None:
            self.tracker.finish(self.csv.rows, error, discarded)
            self.tracker = None
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.file_handler is not None:
            remove_handler(self.file_handler)
            self.file_handler = None

    def __enter__(self) -> "EpochWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
