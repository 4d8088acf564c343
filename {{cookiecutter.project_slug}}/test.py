"""Evaluate a checkpoint on the test split: python test.py -r CHECKPOINT [-c config.json] [--report DIR]"""

import exit_status  # first: a Ctrl-C while torch is imported (seconds), or later, is one line, not a traceback

# isort: split
import logging
import sys
from pathlib import Path

import torch

import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
from base import BaseDataLoader
from cli import command_line_parser, config_from_args
from engine import distributed
from engine.checkpoint import load_checkpoint, load_weights
from engine.device import setup_device
from engine.fit_check import check_trainer_fits_data
from inference.trained_model import class_names, evaluation_loader
from logger import setup_logging
from parse_config import ConfigParser
from reports.evaluation import FILES, ConfusionMatrix, check_report_folder, report_files, write_report
from trainer import Trainer
from utils import InputError
from utils.errors import exit_status_of

logger = logging.getLogger("test")


def evaluate(config: ConfigParser, report: Path | None = None) -> dict[str, float]:
    """Loss and every metric of the checkpoint's model on the test split, measured by the
    trainer's own `valid_step` (sample-weighted averages). Writes nothing, or with `report` the
    files of reports/evaluation.py into that folder: per class precision, recall, F1 and support,
    the confusion matrix (CSV and PNG) and the metrics (JSON), counted from the same outputs. The
    folder is checked before evaluating."""
    if config.resume_path is None:
        raise InputError("no checkpoint: give the checkpoint to evaluate with -r")
    if report is not None:
        check_report_folder(report)
    checkpoint = load_checkpoint(config.resume_path)
    setup_logging(config["trainer"]["verbosity"])
    device, _ = setup_device(config["n_gpu"], config["trainer"]["deterministic"])
    data_loader = evaluation_loader(config, checkpoint)
    model = config.init_obj("arch", module_arch, torch.nn.Module)
    load_weights(model, checkpoint, config["arch"]["type"], config.resume_path)
    model.to(device).eval()
    if isinstance(data_loader, BaseDataLoader):
        data_loader.adapt_to_model(model)  # as training did
    criterion = config.init_ftn("loss", module_loss)
    metric_fns = config.init_ftn("metrics", module_metric)
    trainer = Trainer(model, criterion, metric_fns, None, config=config, device=device, device_ids=[],
                      data_loader=data_loader)
    check_trainer_fits_data(trainer)
    matrix = ConfusionMatrix() if report is not None else None
    results = trainer.evaluate(data_loader, observe=matrix.update if matrix is not None else None)
    if report is not None and matrix is not None:
        counts = matrix.result()
        names = class_names(checkpoint["classes"] or getattr(data_loader, "classes", None), len(counts))
        if distributed.is_main():
            write_report(report, report_files(counts, names, results, config.resume_path))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = command_line_parser("Evaluate a checkpoint on the test split.")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="also write per-class precision, recall, F1 and support, the confusion matrix (CSV, PNG) "
                        "and the metrics (JSON) into DIR (made if need be)")
    args = parser.parse_args(argv)
    try:
        results = evaluate(config_from_args(args), args.report)
    except Exception as exc:
        status = exit_status_of(exc)  # InputError 2, a full disk while writing the report 4
        if status is None:
            raise  # a bug: its traceback
        return exit_status.finish(status, f"error: {exc}")
    for key, value in results.items():
        print(f"{key}: {value:.6f}")
    if args.report is not None:
        print(f"wrote {', '.join(FILES)} into {args.report}")
    return exit_status.finish(0, "")


if __name__ == "__main__":
    sys.exit(main())
