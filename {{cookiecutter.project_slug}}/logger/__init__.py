from logger.logger import add_file_handler, remove_handler, setup_logging
from logger.metrics_csv import MetricsCSV
from logger.visualization import TensorboardWriter

__all__ = ["MetricsCSV", "TensorboardWriter", "add_file_handler", "remove_handler", "setup_logging"]
