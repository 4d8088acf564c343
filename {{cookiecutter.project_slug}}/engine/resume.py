"""What a resumed run may change: the config keys whose new values are applied on top of the
restored state, and the refusal of every other difference.

A resumed run restores the optimizer and scheduler from the checkpoint, and their saved
hyper-parameters would otherwise win over what the user asked for, while the run's config.json
recorded the request: a run's files must never record a value the run did not use.
"""

from pathlib import Path
from typing import Any

import torch

from utils.errors import InputError

# Keys read afresh from the config: changing them on resume just works.
TAKEN_AS_GIVEN = {
    "trainer.epochs", "trainer.early_stop", "trainer.save_period", "trainer.keep_last", "trainer.verbosity",
    "trainer.save_every_minutes", "trainer.save_every_steps", "trainer.tensorboard",
    "n_gpu", "data_loader.args.num_workers",  # where it runs and how fast it loads, not what it computes
    # where the files are, not what they are: the same data moved (staged to a node's disk, a new mount
    # point), the image cache elsewhere; the save_dir of this config's later runs (a resume stays in its folder)
    "data_loader.args.data_dir", "data_loader.args.cache_dir", "trainer.save_dir",
    "trainer.compile", "trainer.deterministic",
    "metrics",  # what is measured, not what is trained: a new metric becomes a new metrics.csv column
    # where a tracker mirrors the epochs (a project generated with it)
    "trainer.mlflow.enabled", "trainer.mlflow.tracking_uri", "trainer.mlflow.experiment",
    "trainer.mlflow.log_checkpoints",
}
# Schedulers that fix their whole schedule when built: their arguments cannot change mid-run.
FIXED_SCHEDULES = ("OneCycleLR", "CyclicLR", "CosineAnnealingWarmRestarts", "SequentialLR", "ChainedScheduler")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf (lists are leaves; an empty object has none)."""
    leaves: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            leaves.update(flatten(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, new value) for every key whose value differs. Give both with
    their defaults filled in (config_schema.normalized), so that a default is not a change:
    ConfigParser.changes_from does so for a run's config."""
    old, new = flatten(saved), flatten(current)
    missing = object()
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key, missing) != new.get(key, missing)}


def check_changes(changes: dict[str, tuple[Any, Any]], scheduler_type: str | None, path: Path | None) -> None:
    """Refuse, in one line, a change that a resumed run cannot honour."""
    for key, (old, new) in changes.items():
        if key in TAKEN_AS_GIVEN or key.startswith("optimizer.args."):
            continue
        if key.startswith("lr_scheduler.args.") and scheduler_type not in FIXED_SCHEDULES:
            continue
        if key.startswith("lr_scheduler.args."):
            why = f"{scheduler_type} fixes its whole schedule when it is built"
        elif key == "optimizer.type":
            why = "the saved optimizer state belongs to the saved optimizer"
        elif key == "data_loader.args.batch_size":
            why = "the saved position and the schedule are counted in batches of the saved size"
        else:
            why = "it would no longer be the same run"
        raise InputError(
            f"checkpoint '{path}': resuming cannot change '{key}' ({old!r} -> {new!r}): {why}; "
            "to train with it, start a new run from these weights: --fine-tune -r CHECKPOINT [-c CONFIG]"
        )


def check_resumable(checkpoint: dict[str, Any], config: dict[str, Any], changes: dict[str, tuple[Any, Any]],
                    path: Path | None) -> None:
    """Refuse, in one line, a checkpoint that cannot be resumed under `config` (a validated
    config whose `changes` from the checkpoint's are given): one without a training state, one
    of another optimizer, or a change `check_changes` refuses. Reads nothing but the two."""
    if checkpoint["optimizer"] is None:  # e.g. converted by convert_checkpoint.py: weights only
        raise InputError(f"checkpoint '{path}': holds weights only (no optimizer state), so it cannot be "
                         f"resumed; fine-tune from it with --fine-tune -r {path}")
    saved_optimizer = checkpoint["config"]["optimizer"]["type"]
    if saved_optimizer != config["optimizer"]["type"]:
        raise InputError(
            f"checkpoint '{path}': saved with optimizer '{saved_optimizer}', the config asks for "
            f"'{config['optimizer']['type']}'; resume with the same optimizer, or fine-tune with --fine-tune"
        )
    check_changes(changes, config["lr_scheduler"]["type"] if config["lr_scheduler"] else None, path)


def capture_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[list[dict], dict]:
    """The freshly built optimizer's param-group settings and scheduler state (built from the
    new config), taken before the checkpoint's state is loaded over them."""
    groups = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    state = dict(scheduler.state_dict()) if scheduler is not None else {}
    return groups, state


def apply_changes(changes: dict[str, tuple[Any, Any]], optimizer: torch.optim.Optimizer, scheduler: Any,
                  fresh: tuple[list[dict], dict], path: Path | None) -> list[str]:
    """Put the new `optimizer.args.*` and `lr_scheduler.args.*` values into the restored
    optimizer and scheduler; returns the keys applied. A new lr also becomes the scheduler's
    base lr, so the schedule continues from it."""
    groups, scheduler_state = fresh
    applied = []
    for key in changes:
        name = key.rpartition(".")[2]
        if key.startswith("optimizer.args."):
            for group, new in zip(optimizer.param_groups, groups, strict=True):
                group[name] = new[name]
                if name == "lr" and "initial_lr" in group:
                    group["initial_lr"] = new[name]
            if name == "lr" and scheduler is not None and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [group["lr"] for group in optimizer.param_groups]
            applied.append(key)
        elif key.startswith("lr_scheduler.args.") and scheduler is not None:
            if name not in scheduler_state:
                raise InputError(
                    f"checkpoint '{path}': resuming cannot change '{key}': {type(scheduler).__name__} keeps no "
                    "setting of that name to update; start a new run from these weights: --fine-tune -r CHECKPOINT"
                )
            setattr(scheduler, name, scheduler_state[name])
            if hasattr(scheduler, "_init_is_better"):  # ReduceLROnPlateau derives its comparison from these
                scheduler._init_is_better(scheduler.mode, scheduler.threshold, scheduler.threshold_mode)
            applied.append(key)
    return applied


def has_ended(checkpoint: dict[str, Any], config: dict[str, Any]) -> str | None:
    """Why the run whose newest state is `checkpoint` has nothing left to train under `config`
    (the config it would be resumed with): it reached `trainer.epochs`, or early stopping ended
    it. None when it goes on, also after a stop inside an epoch, which that epoch finishes."""
    options, epoch = config["trainer"], checkpoint["epoch"]
    if checkpoint["batches_done"]:
        return None
    if epoch >= options["epochs"]:
        return f"it reached epoch {epoch} of trainer.epochs {options['epochs']}"
    early_stop, monitor = options["early_stop"], options["monitor"]
    if monitor != "off" and early_stop and checkpoint["not_improved_count"] >= early_stop:
        return (f"it stopped early after epoch {epoch}: trainer.early_stop is {early_stop} and "
                f"'{monitor.split()[1]}' last improved in epoch {epoch - checkpoint['not_improved_count']}")
    return None
