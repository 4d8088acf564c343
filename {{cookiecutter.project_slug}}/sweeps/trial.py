"""One trial: an ordinary run of the project's trainer (its own run folder, config.json,
metrics.csv, checkpoints, TensorBoard), built by train.py's `build_trainer`, that reports the
monitored metric to Optuna after every epoch through the trainer's `on_epoch_start` /
`on_epoch_end` hooks and stops, when the pruner says so, through `stop_requested`."""

import copy
import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from cli import with_overrides
from config_schema import normalized, validate
from engine import distributed
from engine.checkpoint import load_checkpoint
from engine.resume import check_changes, config_changes
from parse_config import ConfigParser
from sweeps.spec import with_values
from sweeps.study import RETRY_OF, RUN_DIR, StudyError, storage_errors
from train import build_trainer
from trainer import Trainer
from utils.errors import InputError

logger = logging.getLogger("sweep")


def new_trial_config(base: dict[str, Any], values: dict[str, Any], folder: Path, number: int) -> ConfigParser:
    """The config of a new trial: `base` (the config file with `-o` applied) with the trial's
    values, run in `<folder>/trial-<number>` (`-2`, ... if that is taken)."""
    config = with_values(base, values)
    runs = Path(config["trainer"]["save_dir"]) / config["name"]
    run_id, suffix = f"{folder.name}/trial-{number:04d}", 1
    while (runs / run_id).exists():  # left by an earlier study of the same name
        suffix += 1
        run_id = f"{folder.name}/trial-{number:04d}-{suffix}"
    return ConfigParser(config, run_id=run_id)


def resumed_trial_config(checkpoint: Path, overrides: list[str], swept: set[str]) -> ConfigParser:
    """The config that resumes an interrupted trial from `checkpoint`: the run's own, with each
    `-o` override that a resume accepts (the others, and the swept keys, are left as they were)."""
    saved = load_checkpoint(checkpoint)["config"]
    config = copy.deepcopy(saved)
    for override in overrides:
        if override.partition("=")[0].strip() in swept:
            continue
        candidate = with_overrides(copy.deepcopy(config), [override])
        try:
            resolved = validate(candidate)
            scheduler = resolved["lr_scheduler"]["type"] if resolved["lr_scheduler"] else None
            check_changes(config_changes(normalized(saved), resolved), scheduler, checkpoint)
        except InputError as exc:
            logger.info("Not applied on resume: -o %s (%s)", override, exc)
            continue
        config = candidate
    return ConfigParser(config, resume_path=checkpoint)


def attach(trainer: Trainer, hook: str, extra: Callable[..., None]) -> None:
    """Call `extra` after the trainer's own `hook` (a subclass's override included)."""
    own = getattr(trainer, hook)

    def both(*args: Any) -> None:
        own(*args)
        extra(*args)

    setattr(trainer, hook, both)


class TrialReporter:
    """Tells the trial where its run is and how each epoch went; asks the pruner. Under
    torchrun only rank 0 holds the trial (`trial` is None elsewhere): its answers, and a failure of
    the study's database, are broadcast, so that every rank stops after the same epoch and in the
    same way."""

    def __init__(self, trial: optuna.Trial | None, trainer: Trainer, url: str) -> None:
        self.trial, self.trainer, self.url = trial, trainer, url
        self.pruned = False
        self._first = True
        attach(trainer, "on_epoch_start", self.epoch_start)
        attach(trainer, "on_epoch_end", self.epoch_end)

    def epoch_start(self, epoch: int) -> None:
        if not self._first:
            return
        self._first = False
        self._on_rank0(lambda trial: self._begin(trial, epoch))

    def _begin(self, trial: optuna.Trial, epoch: int) -> None:
        run_dir = self.trainer.config.run_dir
        trial.set_user_attr(RUN_DIR, str(Path(run_dir).resolve()))  # absolute: any process may resume it
        for row in earlier_rows(run_dir, epoch):  # a resumed trial: what the interrupted one had reported
            trial.report(row[self.trainer.monitor.metric], row["epoch"])

    def epoch_end(self, epoch: int, log: dict[str, float]) -> None:
        def report(trial: optuna.Trial) -> bool:
            trial.report(log[self.trainer.monitor.metric], epoch)
            return epoch < self.trainer.epochs and trial.should_prune()

        if self._on_rank0(report):
            self.pruned = True
            self.trainer.stop_requested = "the study's pruner stopped this trial"

    def _on_rank0(self, call: Callable[[optuna.Trial], Any]) -> Any:
        """`call(trial)` on rank 0, its result on every rank; a database error there is raised on
        every rank."""
        result: Any = None
        error: str | None = None
        if self.trial is not None:
            try:
                with storage_errors(self.url):
                    result = call(self.trial)
            except StudyError as exc:
                error = str(exc)
        error, result = distributed.broadcast((error, result))
        if error is not None:
            raise StudyError(error)
        return result


def earlier_rows(run_dir: Path | None, before_epoch: int) -> list[dict[str, float]]:
    """The rows of the run's metrics.csv before `before_epoch`, as numbers (empty cells left out)."""
    path = Path(run_dir or ".") / "metrics.csv"
    if run_dir is None or before_epoch <= 1 or not path.is_file():
        return []
    with path.open(newline="") as file:
        rows = [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(file)]
    return [{**row, "epoch": int(row["epoch"])} for row in rows if row["epoch"] < before_epoch]


def run_trial(config: ConfigParser, trial: optuna.Trial | None, url: str) -> tuple[float, bool]:
    """Train the trial's run (reporting to the study at `url`); returns (its best monitored
    value, whether the pruner stopped it).
    A resumed run that had already finished is not trained again: its checkpoint has the value."""
    if config.resuming:
        checkpoint = load_checkpoint(config.resume_path)
        if checkpoint["epoch"] >= config["trainer"]["epochs"] and not checkpoint["batches_done"]:
            if trial is not None:
                trial.set_user_attr(RUN_DIR, str(config.resume_path.resolve().parent))
            return checkpoint["monitor_best"], False
    trainer = build_trainer(config)
    if trial is not None:  # for the run's experiment tracker: which study and trial it is
        trainer.run_tags.update({"sweep.study": trial.study.study_name, "sweep.trial": str(trial.number)})
        if trial.user_attrs.get(RETRY_OF) is not None:
            trainer.run_tags["sweep.retry_of"] = str(trial.user_attrs[RETRY_OF])
    reporter = TrialReporter(trial, trainer, url)
    trainer.train()
    return trainer.monitor.best, reporter.pruned
