"""Evaluate a checkpoint on the test split: python test.py -r CHECKPOINT [-c config.json]"""

import exit_status  # first: a Ctrl-C while torch is imported (seconds), or later, is one line, not a traceback

# isort: split
import logging
import sys

import torch

import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
from cli import command_line_parser, config_from_args
from engine.checkpoint import load_checkpoint, load_weights
from engine.device import setup_device
from engine.fit_check import check_trainer_fits_data
from inference.trained_model import evaluation_loader
from logger import setup_logging
from parse_config import ConfigParser
from trainer import Trainer
from utils import InputError

logger = logging.getLogger("test")


def evaluate(config: ConfigParser) -> dict[str, float]:
    """Loss and every metric of the checkpoint's model on the test split, measured by the
    trainer's own `valid_step` (sample-weighted averages). Writes nothing."""
    if config.resume_path is None:
        raise InputError("no checkpoint: give the checkpoint to evaluate with -r")
    checkpoint = load_checkpoint(config.resume_path)
    setup_logging(config["trainer"]["verbosity"])
    device, _ = setup_device(config["n_gpu"], config["trainer"]["deterministic"])
    data_loader = evaluation_loader(config, checkpoint)
    model = config.init_obj("arch", module_arch, torch.nn.Module)
    load_weights(model, checkpoint, config["arch"]["type"], config.resume_path)
    model.to(device).eval()
    criterion = config.init_ftn("loss", module_loss)
    metric_fns = config.init_ftn("metrics", module_metric)
    trainer = Trainer(model, criterion, metric_fns, None, config=config, device=device, device_ids=[],
                      data_loader=data_loader)
    check_trainer_fits_data(trainer)
    return trainer.evaluate(data_loader)


def main(argv: list[str] | None = None) -> int:
    parser = command_line_parser("Evaluate a checkpoint on the test split.")
    args = parser.parse_args(argv)
    try:
        results = evaluate(config_from_args(args))
    except InputError as exc:
        return exit_status.finish(InputError.EXIT_STATUS, f"error: {exc}")
    for key, value in results.items():
        print(f"{key}: {value:.6f}")
    return exit_status.finish(0, "")


if __name__ == "__main__":
    sys.exit(main())
