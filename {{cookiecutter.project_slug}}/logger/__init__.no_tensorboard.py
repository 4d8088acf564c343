from logger.logger import add_file_handler, remove_handler, setup_logging
from logger.metrics_csv import MetricsCSV

__all__ = ["MetricsCSV", "add_file_handler", "remove_handler", "setup_logging"]
