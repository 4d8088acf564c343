"""How the learning-rate scheduler of `lr_scheduler` is stepped: per epoch or per optimizer step,
ReduceLROnPlateau's mode, and the step budget of OneCycleLR."""

import warnings
from typing import Any

from torch.optim.lr_scheduler import ReduceLROnPlateau

from utils.errors import InputError

# Schedulers whose schedule is written in optimizer steps: stepped once per step by default.
PER_STEP_KINDS = ("OneCycleLR", "CyclicLR")


def scheduler_interval(config: dict[str, Any]) -> str | None:
    """'epoch' or 'step' for the config's scheduler (None without one): `lr_scheduler.interval`
    when given, else 'step' for the per-step kinds and 'epoch' for the rest."""
    block = config["lr_scheduler"]
    if block is None:
        return None
    interval = block.get("interval") or ("step" if block["type"] in PER_STEP_KINDS else "epoch")
    if interval == "step" and block["type"] == "ReduceLROnPlateau":
        raise InputError("config: 'lr_scheduler.interval' is 'step', but ReduceLROnPlateau steps on the "
                         "monitored metric of an epoch; use 'epoch'")
    return interval


def resolve_plateau_mode(config: dict[str, Any]) -> None:
    """ReduceLROnPlateau follows `trainer.monitor`: its mode is set from the monitor's (so a
    `max val_accuracy` monitor does not cut the rate while accuracy rises), and a mode that
    contradicts the monitor is refused."""
    block = config["lr_scheduler"]
    if block is None or block["type"] != "ReduceLROnPlateau":
        return
    monitor = config["trainer"]["monitor"]
    if monitor == "off":
        raise InputError("config: 'lr_scheduler.type' ReduceLROnPlateau steps on the monitored metric; "
                         "set 'trainer.monitor', e.g. 'min val_loss'")
    mode = monitor.split()[0]
    given = block["args"].get("mode")
    if given is not None and given != mode:
        raise InputError(f"config: 'lr_scheduler.args.mode' is '{given}' but 'trainer.monitor' is '{monitor}'; "
                         f"ReduceLROnPlateau must follow the monitor: use '{mode}' or leave it out")
    block["args"]["mode"] = mode


def check_step_budget(scheduler: Any, steps_per_epoch: int, epochs: int, resuming: bool = False) -> None:
    """OneCycleLR raises in the middle of training once its `total_steps` are used up: check at
    the start that the run fits, and say the numbers to use."""
    total = getattr(scheduler, "total_steps", None)
    needed = steps_per_epoch * epochs
    if type(scheduler).__name__ != "OneCycleLR" or total is None or total >= needed:
        return
    if resuming:  # its schedule was fixed when the run began: a resume cannot stretch it
        raise InputError(
            f"config: 'lr_scheduler' OneCycleLR of this run has {total} steps, fewer than the {needed} optimizer "
            f"steps of {epochs} epochs ({steps_per_epoch} per epoch), and a resume cannot change its schedule; "
            f"to train longer, start a new run from these weights: --fine-tune -r CHECKPOINT "
            f"-o lr_scheduler.args.total_steps=N"
        )
    raise InputError(
            f"config: 'lr_scheduler' OneCycleLR has {total} steps but the run takes {needed} optimizer steps "
            f"({epochs} x {steps_per_epoch} per epoch); set 'lr_scheduler.args.total_steps' to {needed}, or "
            f"'epochs' {epochs} and 'steps_per_epoch' {steps_per_epoch}"
        )


def step_scheduler(scheduler: Any, metrics: dict[str, float] | None = None, monitor: str = "",
                   stepped_here: bool = True) -> None:
    """Step `scheduler` (on the monitored value for ReduceLROnPlateau). `stepped_here` is False
    when the optimizer steps this schedule follows were taken before a resume, in another
    process: torch would then warn that the scheduler stepped before the optimizer."""
    with warnings.catch_warnings():
        if not stepped_here:
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        if isinstance(scheduler, ReduceLROnPlateau):
            assert metrics is not None
            scheduler.step(metrics[monitor])
        else:
            scheduler.step()
