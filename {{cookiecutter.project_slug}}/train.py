"""Train a model: python train.py -c config.json [-r CHECKPOINT [--fine-tune [--partial]]] [-o KEY=VALUE ...]
[--dry-run]"""

import exit_status  # first: a Ctrl-C while torch is imported (seconds) is then one line, not a traceback

# isort: split
import argparse
import contextlib
import json
import logging
import os
import sys
from datetime import datetime
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

import data_loader as module_data
import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
from base import BaseDataLoader
from base.base_model import count_parameters
from cli import command_line_parser, config_from_args, folder_name
from engine import distributed
from engine.backbone import check_lr_factor_kept, parameter_groups, scale_backbone_lr
from engine.device import setup_device
from engine.fit_check import accepts, check_trainer_fits_data
from engine.lr_schedule import resolve_plateau_mode
from engine.signals import stop_request
from logger import setup_logging
from parse_config import ConfigParser, lookup
from trainer import Trainer
from utils import InputError, TrainingInterrupted, seed_everything
from utils.errors import exit_status_of

logger = logging.getLogger("train")

# The arguments a dry run gives a data loader that takes them, so that it writes nothing.
DRY_RUN_OPTIONS = {"download": False, "write_cache": False}

# victoresque's shortcut options, as config keys they set.
SHORTCUTS = {"lr": "optimizer.args.lr", "bs": "data_loader.args.batch_size"}


def build_trainer(config: ConfigParser, dry_run: bool = False) -> Trainer:
    """Build the data loaders, model, loss, metrics, optimizer, scheduler and trainer that the
    config describes, restored from `-r` when given, connected to its experiment tracker (not
    for a dry run). Every input mistake surfaces here as an InputError; nothing is written."""
    setup_logging(config["trainer"]["verbosity"] if distributed.is_main() else 0)  # other ranks: warnings only
    # after the logging setup: its warnings go to stdout
    device, device_ids = setup_device(config["n_gpu"], config["trainer"]["deterministic"])
    seed = config["trainer"]["seed"]
    if seed is not None:
        seed_everything(seed)  # the same on every rank: the same initial model
    data_loader = build_data_loader(config, dry_run)
    valid_data_loader = data_loader.split_validation() if hasattr(data_loader, "split_validation") else None
    model = config.init_obj("arch", module_arch, torch.nn.Module)
    pretrained = start_from_pretrained(config, model, dry_run)
    model = model.to(device)
    logger.debug(model)
    if isinstance(data_loader, BaseDataLoader):
        data_loader.adapt_to_model(model)  # e.g. the normalisation of pretrained weights
    criterion = config.init_ftn("loss", module_loss)
    metric_fns = config.init_ftn("metrics", module_metric)
    optimizer, lr_scheduler = build_optimizer(config, model)
    if seed is not None and distributed.active():
        seed_everything(seed + distributed.rank())  # a different dropout mask on every rank
    trainer = Trainer(model, criterion, metric_fns, optimizer, config=config, device=device, device_ids=device_ids,
                      data_loader=data_loader, valid_data_loader=valid_data_loader, lr_scheduler=lr_scheduler)
    check_trainer_fits_data(trainer)  # before any run folder exists
    trainer.restore()
    trainer.start_note = "; ".join(note for note in (pretrained, trainer.start_note) if note)
    if not dry_run:
        trainer.connect_tracker()  # last: the slowest check (seconds), and it writes nothing either
    return trainer


def start_from_pretrained(config: ConfigParser, model: torch.nn.Module, dry_run: bool = False) -> str:
    """Load the pretrained weights of a model that has them (`load_pretrained`: TorchvisionClassifier's
    `weights`) when the run starts from them; a resume, or a fine-tune that takes every tensor
    from a checkpoint, takes its weights from the checkpoint and needs no weights file. A dry run
    downloads nothing. Under torchrun rank 0 downloads a missing file while the others wait.
    Returns what was loaded, for the run's log."""
    load = getattr(model, "load_pretrained", None)
    if load is None or config.resuming or (config.fine_tune and not config.partial):
        return ""
    note, failure = "", None
    if distributed.is_main():
        try:
            note = load(download=not dry_run)
        except InputError as exc:
            failure = str(exc)
    failure = distributed.broadcast(failure)
    if failure is not None:
        raise InputError(failure)
    return note if distributed.is_main() else load(download=not dry_run)


def build_data_loader(config: ConfigParser, dry_run: bool = False) -> DataLoader:
    """The config's training data loader (a dry run downloads nothing and writes no cache)."""
    loader_class = lookup(module_data, config["data_loader"]["type"], "data_loader.type", DataLoader)
    options = {key: value for key, value in DRY_RUN_OPTIONS.items() if dry_run and accepts(loader_class, key)}
    return config.init_obj("data_loader", module_data, DataLoader, **options)


def build_optimizer(config: ConfigParser, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer over the model's trainable parameters (for the fine-tuning recipe in two
    groups, head and backbone: engine/backbone.py), and the scheduler (or None)."""
    options = config["trainer"]
    lr_factor = options["backbone_lr_factor"]
    parameters = parameter_groups(model, lr_factor, options["freeze_backbone_epochs"])
    optimizer = config.init_obj("optimizer", torch.optim, torch.optim.Optimizer, parameters)
    scale_backbone_lr(optimizer, lr_factor)
    resolve_plateau_mode(config.config)
    if config["lr_scheduler"] is None:
        return optimizer, None
    scheduler = config.init_obj("lr_scheduler", torch.optim.lr_scheduler, LRScheduler, optimizer)
    check_lr_factor_kept(optimizer, lr_factor, scheduler)
    return optimizer, scheduler


def train(config: ConfigParser) -> dict[str, float]:
    """Train as the config says; returns the last epoch's metrics (none for a run that
    `--resume-or-start` found finished)."""
    if finished(config):
        return {}
    return build_trainer(config).train()


def finished(config: ConfigParser) -> bool:
    """Whether `--resume-or-start` found the run ended, saying so: a job script that runs it
    again ends at once, with status 0."""
    if config.finished is not None and distributed.is_main():
        print(config.finished)
    return config.finished is not None


def dry_run(config: ConfigParser) -> dict[str, float]:
    """Build everything, run one training batch and one validation batch (when there is
    validation data) and print (rank 0) the resolved config and the parameter count. Creates no
    run directory, log, checkpoint or dataset."""
    if finished(config):
        return {}
    trainer = build_trainer(config, dry_run=True)
    stop_if_signalled(trainer.device)
    losses = trainer.dry_run()
    stop_if_signalled(trainer.device)
    if distributed.is_main():
        print(json.dumps(config.config, indent=4))
        total, trainable = count_parameters(trainer.raw_model)
        print(f"model {config['arch']['type']}: {total:,} parameters ({trainable:,} trainable)")
        batches = "  ".join(f"{key} {value:.4f}" for key, value in losses.items())
        ran = "one training and one validation batch" if trainer.valid_data_loader is not None else \
            "one training batch (no validation data)"
        print(f"dry run passed on {trainer.device}: {ran} ({batches}); nothing written")
    return losses


def stop_if_signalled(device: torch.device) -> None:
    """A dry run does not listen for signals: in one process a SIGINT or SIGTERM ends it at once.
    Under torchrun the processes keep it (exit_status.early_signal) until here, where they have
    met and all stop together, with nothing written."""
    signal_number = distributed.max_across_ranks([exit_status.early_signal or 0], device)[0]
    if signal_number:
        raise TrainingInterrupted(signal_number, None)


def main(argv: list[str] | None = None) -> int:
    parser = command_line_parser("Train a model from a config file, or resume from a checkpoint.")
    parser.add_argument("--lr", type=float, help="learning rate (sets optimizer.args.lr)")
    parser.add_argument("--bs", type=int, help="batch size (sets data_loader.args.batch_size)")
    parser.add_argument("--run-id", type=folder_name, help="name of the run directory (default: the start time)")
    parser.add_argument(
        "--resume-or-start", action="store_true",
        help="with --run-id: resume that run of the config from its latest.pth, start it if it has none, or exit 0 "
        "if it has finished: the one command a job script runs on every start and requeue",
    )
    parser.add_argument(
        "--fine-tune", action="store_true",
        help="with -r: start a new run from the checkpoint's weights alone (its config, or -c's)",
    )
    parser.add_argument(
        "--partial", action="store_true",
        help="with --fine-tune: load only the checkpoint's tensors whose names and shapes fit the model (e.g. all "
        "but a head for other classes); the run's log lists what was left out",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="check the config: build everything, run one training and one validation batch, write nothing",
    )
    parser.add_argument(
        "--seeds", type=seed_list, metavar="S1,S2,...",
        help="train the config once per seed, one run after another, as runs <run-id>-seed<S>; the same command "
        "again resumes a stopped one and skips finished ones (report.py groups them)",
    )
    args = parser.parse_args(argv)
    # A run listens for SIGINT and SIGTERM: they stop it at the next optimizer step, saved, and
    # change nothing after its last one. A dry run writes nothing: they end it at once (exit_status).
    with contextlib.nullcontext() if args.dry_run else stop_request.listening():
        try:
            if args.seeds:
                train_seeds(args)
            else:
                config = config_from_args(args, SHORTCUTS, training=True)
                dry_run(config) if args.dry_run else train(config)
            status, line = 0, ""
        except TrainingInterrupted as exc:
            status, line = 128 + exc.signal_number, stop_line(exc, args)
        except Exception as exc:
            status = exit_status_of(exc)  # InputError 2, TrainingDiverged 3, ...
            if status is None:
                raise  # a bug: its traceback
            line = f"error: {exc}"
        finally:
            distributed.shutdown()
        return exit_status.finish(status, line, show=distributed.is_main())  # every rank ends alike: one says so


def seed_list(text: str) -> list[int]:
    """`--seeds 1,2,3`: distinct whole numbers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of whole numbers, e.g. 1,2,3") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"'{text}' names a seed twice")
    return seeds


def train_seeds(args: argparse.Namespace) -> None:
    """`--seeds`: the config trained once per seed (`trainer.seed`), one run after another, each
    the run `<run-id>-seed<S>` of `--resume-or-start`: started, resumed where a stop left it, or
    passed over when finished, so the same command carries on after a stop. The first run that
    does not finish ends them all, with its status."""
    for given, option in ((args.resume, "-r"), (args.fine_tune, "--fine-tune"), (args.dry_run, "--dry-run"),
                          (args.resume_or_start, "--resume-or-start")):
        if given:
            raise InputError(f"--seeds trains the config (-c) once per seed; leave out {option}")
    if args.run_id is None and distributed.launched_by_torchrun():  # the processes' clocks would name other runs
        raise InputError("--seeds under torchrun needs --run-id: the runs' names, the same in every process")
    base = args.run_id or datetime.now().strftime("%Y%m%d-%H%M%S")
    for seed in args.seeds:
        one = argparse.Namespace(**{**vars(args), "run_id": f"{base}-seed{seed}", "resume_or_start": True,
                                    "override": [*args.override, f"trainer.seed={seed}"]})
        args.current_run = one.run_id
        train(config_from_args(one, SHORTCUTS, training=True))


def stop_line(exc: TrainingInterrupted, args: argparse.Namespace | None = None) -> str:
    """The line that says how to resume a run stopped by a signal, with the command that ran it
    (launch.py names its own; plain torchrun's options are not known here). A run of `--seeds`
    goes on with the same command."""
    if args is not None and args.seeds and exc.checkpoint is not None:
        return (f"interrupted by signal {exc.signal_number} in run {args.current_run}; run the same command with "
                f"--run-id {args.current_run.rpartition('-seed')[0]} to resume it and train the other seeds")
    launcher = os.environ.get(exit_status.LAUNCH_COMMAND_ENV)
    if exc.checkpoint is not None and launcher:
        return f"interrupted by signal {exc.signal_number}; resume with: {launcher} train.py -r {exc.checkpoint}"
    if exc.checkpoint is not None and distributed.launched_by_torchrun():
        return (f"interrupted by signal {exc.signal_number}; resume with: torchrun [the same options] train.py "
                f"-r {exc.checkpoint}")
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
