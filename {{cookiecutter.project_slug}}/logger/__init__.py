"""A run's output: logging set-up (the console and train.log: logger), the one writer of a
finished epoch (epoch_writer: the log line, metrics.csv and TensorBoard), metrics.csv, one row
per epoch (metrics_csv), and TensorBoard scalars (visualization)."""

from logger.logger import add_file_handler, remove_handler, setup_logging
from logger.metrics_csv import MetricsCSV
from logger.visualization import TensorboardWriter

__all__ = ["MetricsCSV", "TensorboardWriter", "add_file_handler", "remove_handler", "setup_logging"]
