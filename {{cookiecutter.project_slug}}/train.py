"""Train a model: python train.py -c config.json [-r CHECKPOINT] [-o KEY=VALUE ...]"""

import logging
import sys

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader

import data_loader as module_data
import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
from logger import setup_logging
from parse_config import ConfigParser, command_line_parser
from trainer import Trainer
from utils import InputError, prepare_device, seed_everything

logger = logging.getLogger("train")

# victoresque's shortcut options, as config keys they set.
SHORTCUTS = {"lr": "optimizer.args.lr", "bs": "data_loader.args.batch_size"}


def train(config: ConfigParser) -> dict[str, float]:
    """Build everything the config describes, train, and return the last epoch's metrics.

    Every input mistake surfaces as an InputError before the run directory is created.
    """
    setup_logging(config["trainer"]["verbosity"])
    if config["trainer"]["seed"] is not None:
        seed_everything(config["trainer"]["seed"])
    device, device_ids = prepare_device(config["n_gpu"])

    data_loader = config.init_obj("data_loader", module_data, DataLoader)
    valid_data_loader = data_loader.split_validation() if hasattr(data_loader, "split_validation") else None

    model = config.init_obj("arch", module_arch, torch.nn.Module).to(device)
    logger.debug(model)
    criterion = config.init_ftn("loss", module_loss)
    metric_fns = config.init_ftn("metrics", module_metric)

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = config.init_obj("optimizer", torch.optim, torch.optim.Optimizer, parameters)
    lr_scheduler = None
    if config["lr_scheduler"] is not None:
        scheduler_base = (LRScheduler, ReduceLROnPlateau)
        lr_scheduler = config.init_obj("lr_scheduler", torch.optim.lr_scheduler, scheduler_base, optimizer)

    trainer = Trainer(
        model, criterion, metric_fns, optimizer,
        config=config, device=device, device_ids=device_ids,
        data_loader=data_loader, valid_data_loader=valid_data_loader, lr_scheduler=lr_scheduler,
    )
    return trainer.train()


def main(argv: list[str] | None = None) -> int:
    parser = command_line_parser("Train a model from a config file, or resume from a checkpoint.")
    parser.add_argument("--lr", type=float, help="learning rate (sets optimizer.args.lr)")
    parser.add_argument("--bs", type=int, help="batch size (sets data_loader.args.batch_size)")
    parser.add_argument("--run-id", help="name of the run directory (default: the start time)")
    args = parser.parse_args(argv)
    try:
        train(ConfigParser.from_args(args, SHORTCUTS))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
