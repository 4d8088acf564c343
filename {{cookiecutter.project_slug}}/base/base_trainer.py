"""BaseTrainer: the loop every trainer of this project shares.

The base owns the loop (epochs, batches, skipping what a resume already trained, optimizer-step
boundaries, stop checks, mid-epoch saves, progress bars, metric sums, checkpoints, the epoch
output); a trainer says what one batch does in `train_step` and `valid_step`, and may act at
`on_epoch_start` and `on_epoch_end`. A step that only computes `(loss, output, target)` keeps
exact resume, SIGTERM safety, DDP, mixed precision and accumulation without knowing of them.
"""

import logging
import shutil
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine import distributed
from engine.backbone import BackboneFreeze
from engine.checkpoint import (
    CheckpointSaver,
    Progress,
)
from engine.checkpointed_run import AgreementSchedule, CheckpointedRun, SaveSchedule
from engine.device import compile_model, keep_on_device, on_device, wrap_model
from engine.lr_schedule import check_step_budget, scheduler_interval, step_scheduler
from engine.metric_tracker import RECENT_BATCHES, MetricTracker
from engine.monitor import Monitor
from engine.optimizer_step import OptimizerStep
from engine.run_files import outcome, record_end
from engine.signals import stop_request
from logger.epoch_writer import EpochWriter, connect_tracker
from parse_config import ConfigParser
from utils.errors import InputError, TrainingInterrupted, first_line

logger = logging.getLogger("trainer")

# Reading the running loss (for the bar) or the recent losses (the NaN check) synchronises with
# the device: done every this many batches, not every batch (the tracker keeps that many).
CHECK_EVERY_BATCHES = RECENT_BATCHES

Batch = Any  # what the data loader yields: (data, target), a dict, ... (on the device)
StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (loss, output, target)
Observer = Callable[[Any, Any], None]  # observe(output, target) of each evaluated batch


class BaseTrainer(CheckpointedRun):
    """Trains `model` on `data_loader` and validates on `valid_data_loader` (if any) every epoch,
    as the config's `trainer` options say. Subclasses write `train_step` and `valid_step`."""

    def __init__(self, model: nn.Module, criterion: Callable[..., torch.Tensor],
                 metric_fns: list[Callable[..., torch.Tensor]], optimizer: torch.optim.Optimizer | None,
                 config: ConfigParser, device: torch.device, device_ids: list[int], data_loader: DataLoader,
                 valid_data_loader: DataLoader | None = None, lr_scheduler: Any = None) -> None:
        options = config["trainer"]
        self.config, self.device, self.epochs = config, device, options["epochs"]
        self.raw_model = model  # the module itself: validate and save through this one
        self.backbone_freeze = BackboneFreeze(model, options["freeze_backbone_epochs"])  # built trainable
        if options["compile"]:
            compile_model(model, device)  # in place: raw_model and the wrapper below run compiled
        self.device_ids = device_ids
        self.model = wrap_model(model, device, device_ids)  # train through this one (DDP, DataParallel)
        self.criterion, self.metric_fns = criterion, metric_fns
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.data_loader, self.valid_data_loader = data_loader, valid_data_loader
        for loader in (data_loader, valid_data_loader):
            keep_on_device(loader, device)
        self.is_main = distributed.is_main()  # the one process that logs and writes files
        self.show_progress = options["verbosity"] >= 1 and self.is_main
        self.scheduler_interval = scheduler_interval(config.config)  # 'epoch', 'step' or None
        self.stepper = OptimizerStep(self.model, optimizer, options, device, lr_scheduler, self.scheduler_interval)
        self.monitor = Monitor(options["monitor"], options["early_stop"])
        names = ["loss", *(fn.__name__ for fn in metric_fns)]
        self.train_metrics, self.valid_metrics = MetricTracker(*names), MetricTracker(*names)
        validated = [f"val_{name}" for name in names] if valid_data_loader is not None else []
        if optimizer is not None:  # a trainer that only evaluates (test.py) monitors nothing
            self.monitor.check_logged([*names, *validated, "lr"])
        if self.scheduler_interval == "step" and optimizer is not None and not config.resuming:  # resuming: restore()
            check_step_budget(lr_scheduler, -(-self._batches_per_epoch() // self.stepper.accumulate), self.epochs)
        self.progress = Progress()  # epoch/batches_done: where training stands
        self.start_epoch, self.start_batch = 1, 0
        self.start_samples: int | None = None  # of the start epoch's order, already trained (a resume)
        self.saved_world_size = distributed.world_size()  # the number of processes of the resumed run
        self.saving = SaveSchedule(options["save_every_steps"], options["save_every_minutes"])
        self.agreement = AgreementSchedule()  # when DDP ranks agree on a stop
        self.stop_signal: int | None = None  # SIGINT/SIGTERM that stops training, agreed by every rank
        # set by on_epoch_end (e.g. a pruned trial): stop after this epoch; a text is the reason logged
        self.stop_requested: bool | str = False
        self.last_checkpoint: str | None = None  # what this run last wrote: the one to go back to
        self.saved_epoch = 0  # the last epoch whose end was saved (its row and checkpoints)
        self.resumed_with = ""  # the config changes a resume applied, for the log
        self.start_note = ""  # what a fine-tuned run starts from, for the log
        self._saver: CheckpointSaver | None = None
        self.tracker: Any = None  # rank 0's experiment tracker, when `connect_tracker` found one to use
        self.run_tags: dict[str, str] = {}  # labels of this run for the tracker (a sweep's study and trial)
        self.tracked_from = 0  # the batch of the epoch after which train_metrics started counting
        self.last_step_at = 0  # the batch of the epoch after which the optimizer last stepped

    # ------------------------------------------------------------------ what a trainer writes
    def train_step(self, batch: Batch) -> StepResult:
        """One training batch, as the loader yields it and already on the device: return
        `(loss, output, target)`. Runs under autocast; backward and the optimizer step follow."""
        raise NotImplementedError

    def valid_step(self, batch: Batch) -> StepResult:
        """One validation batch (no gradients): return `(loss, output, target)`. Forward through
        `self.raw_model`, not `self.model`: under DDP, processes validate different numbers of
        batches, and DDP's forward would wait for the others."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch's first batch (also for a resumed epoch)."""

    def on_epoch_end(self, epoch: int, log: dict[str, float]) -> None:
        """Called with each finished epoch's row (`epoch`, metrics, `lr`), after it is written
        and saved. Set `self.stop_requested = True` (or to the reason, for the log) to end the run
        after this epoch."""

    # ------------------------------------------------------------------ the run
    def connect_tracker(self) -> None:
        """Connect rank 0 to the experiment tracker the config asks for, if any, before any run
        folder exists: a store that does not answer is an InputError on every rank."""
        error = None
        if self.is_main:
            try:
                self.tracker = connect_tracker(self.config.config)
            except InputError as exc:
                error = str(exc)
        error = distributed.broadcast(error)
        if error is not None:
            raise InputError(error)

    def train(self) -> dict[str, float]:
        """Train to the last epoch (or an early stop) and return the last epoch's row.

        SIGINT or SIGTERM stops at the next optimizer step: `latest.pth` is written with the
        position and TrainingInterrupted is raised. A NaN or infinite loss raises
        TrainingDiverged before any checkpoint holds its weights. Under DDP only rank 0 writes
        files; every rank takes the same decisions."""
        with stop_request.listening():
            # A signal that came while the run was being built, to any process: every one stops
            # (a process that stopped alone would leave the others waiting for it).
            signal_number = distributed.max_across_ranks([stop_request.signal_number or 0], self.device)[0]
            if signal_number:
                raise TrainingInterrupted(signal_number, None)
            run_dir = self._make_run_dir()  # rank 0 holds its lock from here until the run ends
            ended: BaseException | None = None
            try:
                return self._train_in(run_dir)
            except BaseException as exc:
                ended = exc
                raise
            finally:
                try:
                    if self.is_main:  # how the run ended, in its run_info.json entry (report.py reads it)
                        record_end(run_dir, *outcome(ended), epoch=self.saved_epoch)
                finally:
                    self.config.release_run_dir()

    def _train_in(self, run_dir: Path) -> dict[str, float]:
        options = self.config["trainer"]
        writer = EpochWriter(run_dir, enabled=self.is_main, tensorboard=options["tensorboard"],
                             start_epoch=self.start_epoch, verbosity=options["verbosity"], tracker=self.tracker)
        if self.is_main:
            self._saver = CheckpointSaver(run_dir, options["save_period"], options["keep_last"])
        self._log_start(run_dir)
        failed, error = False, None
        try:
            writer.track(self._tracker_tags(), branched_from=self.config.branched_from)
            return self._epochs(run_dir, writer)
        except BaseException as exc:
            error = exc
            failed = isinstance(exc, Exception) and self._report_failure(exc, run_dir)
            raise
        finally:
            writer.close(error, discarded=failed)
            if failed:
                shutil.rmtree(run_dir, ignore_errors=True)

    def _tracker_tags(self) -> dict[str, str]:
        """`run_tags`, and for a branch the epoch of the checkpoint it started from."""
        branch = {"branched_from_epoch": str(self.start_epoch - 1)} if self.config.branched_from else {}
        return {**branch, **self.run_tags}

    def _epochs(self, run_dir: Path, writer: EpochWriter) -> dict[str, float]:
        log: dict[str, float] = {}
        for epoch in range(self.start_epoch, self.epochs + 1):
            log = self._run_epoch(epoch, run_dir)
            row_files = writer.write(epoch, log)
            is_best = self.monitor.update(log)
            self._save(epoch, is_best=is_best, row_files=row_files)  # metrics.csv and checkpoints: all or none
            writer.saved(epoch, log)
            self.on_epoch_end(epoch, log)
            if self.monitor.should_stop_early():
                logger.info("%s did not improve for %d epochs: stopping early.", self.monitor.metric,
                            self.monitor.early_stop)
                break
            if self.stop_requested:
                why = self.stop_requested if isinstance(self.stop_requested, str) else "as on_epoch_end asked"
                logger.info("Stopping after epoch %d: %s.", epoch, why)
                break
            if epoch < self.epochs and self.poll(agree=True)[0]:
                self._stop(run_dir / "latest.pth", f"at the end of epoch {epoch}")
        return log

    def _run_epoch(self, epoch: int, run_dir: Path) -> dict[str, float]:
        """Train and validate `epoch`; its row (`epoch`, metrics, `lr`), the scheduler stepped."""
        if self.progress.epoch_lr is None:  # a new epoch, not one resumed in its middle
            self.progress.epoch_lr = self.optimizer.param_groups[0]["lr"]
        lr = self.progress.epoch_lr
        self.on_epoch_start(epoch)
        metrics = self._train_epoch(epoch)
        if metrics is not None and self.valid_data_loader is not None:
            valid = self._valid_epoch(epoch)
            metrics = None if valid is None else {**metrics, **{f"val_{key}": value for key, value in valid.items()}}
        if metrics is None:  # a signal, in the middle of the epoch
            self._save(epoch, latest_only=True)
            self._stop(run_dir / "latest.pth", f"in epoch {epoch} after {self.progress.batches_done} batches")
        log = {"epoch": epoch, **metrics, "lr": lr}
        if self.scheduler_interval == "epoch":
            # no step taken here: this epoch's optimizer steps were all taken before a resume
            step_scheduler(self.lr_scheduler, log, self.monitor.metric, stepped_here=self.stepper.steps_taken > 0)
        return log

    def _train_epoch(self, epoch: int) -> dict[str, float] | None:
        """The training half of `epoch`; its metrics, or None when a signal stopped it."""
        skip = self._set_epoch(epoch)
        total = skip + len(self.data_loader)
        self._begin_epoch(skip, total)
        self._train_mode(epoch)
        with self._bar(self.data_loader, f"epoch {epoch}/{self.epochs} train", skip) as bar:
            for batch in on_device(bar, self.data_loader, self.device, epoch, skip):
                # accumulation counted from where this process began the epoch: a resume on another
                # number of processes may begin between two steps of the saved run's count
                step = self.stepper.is_due(self.progress.batches_done + 1 - skip, total - skip)
                try:
                    self._train_batch(batch, step)
                except Exception as exc:  # at a step boundary, a failure caused by a signal is a stop
                    if self.progress.batches_done == self.last_step_at and self._failed_by_signal(exc, True):
                        return None
                    raise
                self.progress.batches_done += 1
                if step:
                    self.last_step_at = self.progress.batches_done
                if step and self._at_step_boundary(epoch):
                    return None
                if self.progress.batches_done % CHECK_EVERY_BATCHES == 0:
                    self.check_finite(epoch)
                if self.show_progress and self.progress.batches_done % CHECK_EVERY_BATCHES == 1:
                    bar.set_postfix(loss=f"{self.train_metrics.average('loss'):.4f}", refresh=False)
        self.train_metrics.sum_across_ranks(self.device)
        return self.train_metrics.result()

    def _set_epoch(self, epoch: int) -> int:
        """Point the data loader at `epoch`, at the resumed position for the first epoch of a
        resumed run; returns the batches of it already trained (the first one served is that
        number, from 0)."""
        loader = self.data_loader
        if epoch == self.start_epoch and self.start_samples is not None:
            loader.set_epoch(epoch, samples_done=self.start_samples)  # type: ignore[attr-defined]
            return loader.first_batch()  # type: ignore[attr-defined]
        skip = self.start_batch if epoch == self.start_epoch else 0
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch, skip)
        return skip

    def _train_mode(self, epoch: int) -> None:
        """The model in training mode for `epoch`, its backbone frozen or not as
        `trainer.freeze_backbone_epochs` says (engine/backbone.py)."""
        if self.backbone_freeze.set_epoch(epoch):
            if self.is_main:
                logger.info(self._freeze_words(epoch))
            if distributed.active():  # DDP reduces the gradients of the parameters that required them when built
                self.model = self.stepper.model = wrap_model(self.raw_model, self.device, self.device_ids)
        self.model.train()
        self.backbone_freeze.keep_statistics()

    def _freeze_words(self, epoch: int) -> str:
        """What the backbone does from `epoch` on, for the log."""
        last = self.backbone_freeze.epochs
        if not self.backbone_freeze.frozen:
            return f"Epoch {epoch}: the backbone trains too from here on (trainer.freeze_backbone_epochs {last})"
        words = (f"Epoch{'s' if last > epoch else ''} {epoch}{f'-{last}' if last > epoch else ''}: the backbone is "
                 f"frozen, only the head trains (trainer.freeze_backbone_epochs {last})")
        if getattr(self.raw_model, "weights", "") is None and not self.config.fine_tune:
            words += ("; its weights are random (arch.args.weights is null), so the head learns on features that "
                      "mean nothing: set trainer.freeze_backbone_epochs to 0 to train from scratch")
        return words

    def _train_batch(self, batch: Batch, step: bool) -> None:
        with self.stepper.autocast():
            loss, output, target = self.train_step(batch)
        self.stepper.backward(loss, step)
        if step:
            self.progress.global_step += 1
        self._update_metrics(self.train_metrics, loss, output, target)

    def _failed_by_signal(self, exc: Exception, stoppable: bool) -> bool:
        """Whether a step's failure is a stop: SIGINT or SIGTERM to the whole process group also
        reaches the processes a step may start (the C++ compiler of `trainer.compile`), so the step
        can fail while a stop is pending. True (the position before that batch is then saved) in a
        single process, when `stoppable` and a signal is pending."""
        if not stoppable or distributed.active() or stop_request.signal_number is None:
            return False
        self.stop_signal = stop_request.signal_number
        logger.warning("A step failed while stopping (%s: %s); stopping at the batch before it",
                       type(exc).__name__, first_line(exc))
        return True

    def _at_step_boundary(self, epoch: int) -> bool:
        """After an optimizer step: True to stop (a signal); saves the position when due."""
        stop, save = self.poll()
        if not stop and save:
            self._save(epoch, latest_only=True)
        return stop

    def _valid_epoch(self, epoch: int) -> dict[str, float] | None:
        """The validation half of `epoch`; None when a signal stopped it (single process only:
        under DDP processes hold different numbers of batches, so no agreement is possible)."""
        assert self.valid_data_loader is not None
        return self._measure(self.valid_data_loader, f"epoch {epoch}/{self.epochs} valid",
                             stoppable=not distributed.active(), epoch=epoch)

    def evaluate(self, loader: DataLoader, observe: Observer | None = None) -> dict[str, float]:
        """Loss and every metric over `loader` through `valid_step` (sample-weighted averages):
        what test.py reports. `observe(output, target)` is called with each batch's outputs as
        well (test.py --report counts its confusion matrix so). Writes nothing."""
        keep_on_device(loader, self.device)
        result = self._measure(loader, "test", stoppable=False, observe=observe)
        assert result is not None
        return result

    @torch.no_grad()
    def _measure(self, loader: DataLoader, description: str, stoppable: bool, epoch: int = 0,
                 observe: Observer | None = None) -> dict[str, float] | None:
        """Run `valid_step` over `loader` and average its metrics (passing each batch's output and
        target to `observe` too); None when `stoppable` and a signal arrived (the batches are then
        measured again on resume)."""
        self.raw_model.eval()
        self.valid_metrics.reset()
        with self._bar(loader, description) as bar:
            for batch in on_device(bar, loader, self.device, epoch):
                try:
                    with self.stepper.autocast():
                        loss, output, target = self.valid_step(batch)
                except Exception as exc:
                    if self._failed_by_signal(exc, stoppable):
                        return None
                    raise
                self._update_metrics(self.valid_metrics, loss, output, target)
                if observe is not None:
                    observe(output, target)
                if stoppable and stop_request.signal_number is not None:
                    self.stop_signal = stop_request.signal_number
                    return None
        self.valid_metrics.sum_across_ranks(self.device)
        return self.valid_metrics.result()

    def _update_metrics(self, tracker: MetricTracker, loss: torch.Tensor, output: torch.Tensor,
                        target: torch.Tensor) -> None:
        with torch.no_grad():
            tracker.update_batch([loss, *(fn(output, target) for fn in self.metric_fns)], target.size(0))

    def _bar(self, loader: DataLoader, description: str, done: int = 0) -> tqdm:
        """A progress bar over `loader`, which serves what is left after `done` batches."""
        return tqdm(loader, desc=description, leave=False, disable=not self.show_progress,
                    dynamic_ncols=True, mininterval=0.5, initial=done, total=done + len(loader))

    def _batches_per_epoch(self) -> int:
        loader = self.data_loader
        return loader.batches_per_epoch() if hasattr(loader, "batches_per_epoch") else len(loader)

    def _begin_epoch(self, skip: int, total: int) -> None:
        """Reset the epoch's counters; a resumed epoch starts from its saved running metrics."""
        self.progress.batches_done, self.batches_in_epoch = skip, total
        self.train_metrics.reset()
        resumed = self._resumed_metrics() if skip else None
        if resumed is not None:
            self.train_metrics.load_state(resumed, self.device)
        self.tracked_from = skip
        self.last_step_at = skip

    def dry_run(self) -> dict[str, float]:
        """One training batch (with its optimizer step) and one validation batch, to prove that
        everything fits together; returns their metrics. Writes nothing."""
        self._train_mode(self.start_epoch)
        self.train_metrics.reset()
        self._train_batch(next(on_device(islice(self.data_loader, 1), self.data_loader, self.device, 1)), step=True)
        log = self.train_metrics.result()
        if self.valid_data_loader is not None:
            self.raw_model.eval()
            self.valid_metrics.reset()
            with torch.no_grad(), self.stepper.autocast():
                first = islice(self.valid_data_loader, 1)
                loss, output, target = self.valid_step(next(on_device(first, self.valid_data_loader, self.device, 1)))
            self._update_metrics(self.valid_metrics, loss, output, target)
            log.update({f"val_{key}": value for key, value in self.valid_metrics.result().items()})
        return log
