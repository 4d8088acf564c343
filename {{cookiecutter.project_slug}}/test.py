"""Evaluate a checkpoint on the test split: python test.py -r CHECKPOINT [-c config.json]"""

import exit_status  # first: a Ctrl-C while torch is imported (seconds), or later, is one line, not a traceback

# isort: split
import logging
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader

import data_loader as module_data
import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
from cli import command_line_parser, config_from_args
from engine.checkpoint import load_checkpoint, load_weights
from engine.device import setup_device
from engine.fit_check import accepts, check_trainer_fits_data
from logger import setup_logging
from parse_config import ConfigParser, lookup
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
    data_loader = build_test_loader(config, checkpoint)
    model = config.init_obj("arch", module_arch, torch.nn.Module)
    load_weights(model, checkpoint, config["arch"]["type"], config.resume_path)
    model.to(device).eval()
    criterion = config.init_ftn("loss", module_loss)
    metric_fns = config.init_ftn("metrics", module_metric)
    trainer = Trainer(model, criterion, metric_fns, None, config=config, device=device, device_ids=[],
                      data_loader=data_loader)
    check_trainer_fits_data(trainer)
    return trainer.evaluate(data_loader)


def build_test_loader(config: ConfigParser, checkpoint: dict[str, Any]) -> DataLoader:
    """The config's data loader over the test split (`training=False`), unshuffled, without a
    validation split where the loader has those arguments, and labelled with the checkpoint's
    classes where both the checkpoint and the loader have them."""
    name = config["data_loader"]["type"]
    loader_class = lookup(module_data, name, "data_loader.type", DataLoader)
    if not accepts(loader_class, "training"):
        raise InputError(
            f"data loader '{name}' has no 'training' argument, which test.py needs to load the test split; "
            f"add training: bool = True to {name}.__init__ (see docs/extending.md)"
        )
    options: dict[str, Any] = {"training": False}
    for parameter, value in (("shuffle", False), ("validation_split", 0.0)):
        if accepts(loader_class, parameter):
            options[parameter] = value
    if checkpoint.get("classes") is not None and accepts(loader_class, "classes"):
        options["classes"] = checkpoint["classes"]
    return config.init_obj("data_loader", module_data, DataLoader, **options)


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
