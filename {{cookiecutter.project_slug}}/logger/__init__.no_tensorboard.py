"""A run's output: logging set-up (the console and train.log: logger), the one writer of a
finished epoch (epoch_writer: the log line and metrics.csv), and metrics.csv, one row per epoch
(metrics_csv). This project was made without TensorBoard."""

from logger.logger import add_file_handler, remove_handler, setup_logging
from logger.metrics_csv import MetricsCSV

__all__ = ["MetricsCSV", "add_file_handler", "remove_handler", "setup_logging"]
