"""Train a model: python train.py -c config.json [-r CHECKPOINT] [-o KEY=VALUE ...] [--dry-run]"""

import json
import logging
import os
import sys
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

import data_loader as module_data
import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
from logger import setup_logging
from parse_config import ConfigParser, command_line_parser, folder_name, lookup
from trainer import Trainer
from utils import InputError, TrainingInterrupted, distributed, prepare_device, seed_everything
from utils.errors import TrainingDiverged
from utils.fit_check import accepts, check_model_fits_data
from utils.lr_schedule import resolve_plateau_mode
from utils.signals import stop_request

logger = logging.getLogger("train")

# The file launch.py asks rank 0 to report a stop in (see report_stop).
STOP_REPORT_ENV = "TRAIN_STOP_REPORT"

# victoresque's shortcut options, as config keys they set.
SHORTCUTS = {"lr": "optimizer.args.lr", "bs": "data_loader.args.batch_size"}


def build_trainer(config: ConfigParser, dry_run: bool = False) -> Trainer:
    """Build the data loaders, model, loss, metrics, optimizer, scheduler and trainer that the
    config describes. Every input mistake surfaces here as an InputError; nothing is written."""
    ddp_device = distributed.init_distributed()  # None unless launched by torchrun
    setup_logging(config["trainer"]["verbosity"] if distributed.is_main() else 0)  # other ranks: warnings only
    seed = config["trainer"]["seed"]
    if seed is not None:
        seed_everything(seed)  # the same on every rank: the same initial model
    device, device_ids = (ddp_device, []) if ddp_device is not None else prepare_device(config["n_gpu"])

    loader_options = {}
    if dry_run and accepts(lookup(module_data, config["data_loader"]["type"], "data_loader.type", DataLoader),
                           "download"):
        loader_options["download"] = False  # a dry run writes nothing, datasets included
    data_loader = config.init_obj("data_loader", module_data, DataLoader, **loader_options)
    valid_data_loader = data_loader.split_validation() if hasattr(data_loader, "split_validation") else None

    model = config.init_obj("arch", module_arch, torch.nn.Module).to(device)
    logger.debug(model)
    criterion = config.init_ftn("loss", module_loss)
    metric_fns = config.init_ftn("metrics", module_metric)
    check_model_fits_data(model, data_loader, criterion, metric_fns, device)  # before any run folder exists

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = config.init_obj("optimizer", torch.optim, torch.optim.Optimizer, parameters)
    lr_scheduler = None
    resolve_plateau_mode(config.config)
    if config["lr_scheduler"] is not None:
        lr_scheduler = config.init_obj("lr_scheduler", torch.optim.lr_scheduler, LRScheduler, optimizer)

    if seed is not None and distributed.active():
        seed_everything(seed + distributed.rank())  # a different dropout mask on every rank
    return Trainer(
        model, criterion, metric_fns, optimizer,
        config=config, device=device, device_ids=device_ids,
        data_loader=data_loader, valid_data_loader=valid_data_loader, lr_scheduler=lr_scheduler,
    )


def train(config: ConfigParser) -> dict[str, float]:
    """Train as the config says; returns the last epoch's metrics."""
    return build_trainer(config).train()


def dry_run(config: ConfigParser) -> dict[str, float]:
    """Build everything, run one training and one validation batch and print the resolved
    config and the parameter count. Creates no run directory, log, checkpoint or dataset."""
    trainer = build_trainer(config, dry_run=True)
    losses = trainer.dry_run()
    print(json.dumps(config.config, indent=4))
    parameters = list(trainer.model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    print(f"model {config['arch']['type']}: {total:,} parameters ({trainable:,} trainable)")
    batches = "  ".join(f"{key} {value:.4f}" for key, value in losses.items())
    print(f"dry run passed on {trainer.device}: one training and one validation batch ({batches}); nothing written")
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = command_line_parser("Train a model from a config file, or resume from a checkpoint.")
    parser.add_argument("--lr", type=float, help="learning rate (sets optimizer.args.lr)")
    parser.add_argument("--bs", type=int, help="batch size (sets data_loader.args.batch_size)")
    parser.add_argument("--run-id", type=folder_name, help="name of the run directory (default: the start time)")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="check the config: build everything, run one training and one validation batch, write nothing",
    )
    args = parser.parse_args(argv)
    try:
        with stop_request.listening():  # a signal while the run is being built stops it too
            config = ConfigParser.from_args(args, SHORTCUTS)
            if args.dry_run:
                dry_run(config)
            else:
                train(config)  # a signal after the last optimizer step changes nothing: the run is done
    except InputError as exc:
        if distributed.is_main():  # under torchrun every rank fails alike: one says so
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        if distributed.is_main():
            print(f"error: {exc}", file=sys.stderr)
        return TrainingDiverged.EXIT_STATUS
    except TrainingInterrupted as exc:
        if distributed.is_main():
            print(exc, file=sys.stderr)
            report_stop(exc)
        return 128 + exc.signal_number
    finally:
        distributed.shutdown()
    return 0


def report_stop(exc: TrainingInterrupted) -> None:
    """Tell launch.py (through the file it names in STOP_REPORT_ENV) that training stopped on a
    signal and where its position was saved: torchrun itself exits 1 on a signal, whatever its
    workers did, so the launcher learns it here."""
    report = os.environ.get(STOP_REPORT_ENV)
    if report and exc.checkpoint is not None:
        Path(report).write_text(json.dumps({"signal": exc.signal_number, "checkpoint": exc.checkpoint}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
