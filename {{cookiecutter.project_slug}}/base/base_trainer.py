"""BaseTrainer: the loop every trainer of this project shares.

The base owns the loop (epochs, batches, skipping what a resume already trained, optimizer-step
boundaries, stop checks, mid-epoch saves, progress bars, metric sums, checkpoints, the epoch
output); a trainer says what one batch does in `train_step` and `valid_step`, and may act at
`on_epoch_start` and `on_epoch_end`. A step that only computes `(loss, output, target)` keeps
exact resume, SIGTERM safety, DDP, mixed precision and accumulation without knowing of them.
"""

import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from logger.epoch_writer import EpochWriter
from logger.metrics_csv import MetricsCSV
from parse_config import ConfigParser
from utils import distributed
from utils.checkpoint import (
    CheckpointSaver,
    Progress,
    load_checkpoint,
    load_weights,
    restore_training_state,
    training_state,
)
from utils.device import move_to, wrap_model
from utils.errors import InputError, TrainingDiverged, TrainingInterrupted
from utils.lr_schedule import check_step_budget, scheduler_interval, step_scheduler
from utils.monitor import Monitor
from utils.optimizer_step import OptimizerStep
from utils.resume import apply_changes, capture_hyperparameters, check_changes, config_changes
from utils.signals import stop_request
from utils.tracker import MetricTracker

logger = logging.getLogger("trainer")

# Reading the running loss (for the bar) or the NaN flag synchronises with the device: done
# every this many batches, not every batch.
CHECK_EVERY_BATCHES = 20

Batch = Any  # what the data loader yields: (data, target), a dict, ... (on the device)
StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (loss, output, target)


class BaseTrainer:
    """Trains `model` on `data_loader` and validates on `valid_data_loader` (if any) every epoch,
    as the config's `trainer` options say. Subclasses write `train_step` and `valid_step`."""

    def __init__(self, model: nn.Module, criterion: Callable[..., torch.Tensor],
                 metric_fns: list[Callable[..., torch.Tensor]], optimizer: torch.optim.Optimizer | None,
                 config: ConfigParser, device: torch.device, device_ids: list[int], data_loader: DataLoader,
                 valid_data_loader: DataLoader | None = None, lr_scheduler: Any = None) -> None:
        options = config["trainer"]
        self.config, self.device, self.epochs = config, device, options["epochs"]
        self.raw_model = model  # the module itself: validate and save through this one
        self.model = wrap_model(model, device, device_ids)  # train through this one (DDP, DataParallel)
        self.criterion, self.metric_fns = criterion, metric_fns
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.data_loader, self.valid_data_loader = data_loader, valid_data_loader
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
        if self.scheduler_interval == "step" and optimizer is not None:
            check_step_budget(lr_scheduler, -(-self._batches_per_epoch() // self.stepper.accumulate), self.epochs,
                              resuming=config.resuming)
        self.progress = Progress()  # epoch/batches_done: where training stands
        self.start_epoch, self.start_batch = 1, 0
        self.saving = SaveSchedule(options["save_every_steps"], options["save_every_minutes"])
        self.stop_signal: int | None = None  # SIGINT/SIGTERM that stops training, agreed by every rank
        self.stop_requested = False  # set by on_epoch_end (e.g. a pruned trial): stop after this epoch
        self.last_checkpoint: str | None = None  # what this run last wrote: the one to go back to
        self.resumed_with = ""  # the config changes a resume applied, for the log
        self.start_note = ""  # what a fine-tuned run starts from, for the log
        self._saver: CheckpointSaver | None = None
        self._nonfinite_at = torch.full((), -1, dtype=torch.long, device=device)  # first batch with a bad loss

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
        and saved. Set `self.stop_requested = True` to end the run after this epoch."""

    # ------------------------------------------------------------------ the run
    def train(self) -> dict[str, float]:
        """Train to the last epoch (or an early stop) and return the last epoch's row.

        SIGINT or SIGTERM stops at the next optimizer step: `latest.pth` is written with the
        position and TrainingInterrupted is raised. A NaN or infinite loss raises
        TrainingDiverged before any checkpoint holds its weights. Under DDP only rank 0 writes
        files; every rank takes the same decisions."""
        with stop_request.listening():
            if stop_request.signal_number is not None:  # arrived while the run was being built
                raise TrainingInterrupted(stop_request.signal_number, None)
            run_dir = self._make_run_dir()
            options = self.config["trainer"]
            writer = EpochWriter(run_dir, enabled=self.is_main, tensorboard=options["tensorboard"],
                                 start_epoch=self.start_epoch, verbosity=options["verbosity"])
            if self.is_main:
                self._saver = CheckpointSaver(run_dir, options["save_period"], options["keep_last"])
            self._log_start(run_dir)
            failed = False
            try:
                return self._epochs(run_dir, writer)
            except Exception as exc:
                failed = self._report_failure(exc, run_dir)
                raise
            finally:
                writer.close()
                if failed:
                    shutil.rmtree(run_dir, ignore_errors=True)

    def _epochs(self, run_dir: Path, writer: EpochWriter) -> dict[str, float]:
        log: dict[str, float] = {}
        for epoch in range(self.start_epoch, self.epochs + 1):
            log = self._run_epoch(epoch, run_dir)
            writer.write(epoch, log)
            is_best = self.monitor.update(log)
            self._save(epoch, is_best=is_best)
            self.on_epoch_end(epoch, log)
            if self.monitor.should_stop_early():
                logger.info("%s did not improve for %d epochs: stopping early.", self.monitor.metric,
                            self.monitor.early_stop)
                break
            if self.stop_requested:
                logger.info("Stopping after epoch %d, as asked by on_epoch_end.", epoch)
                break
            if epoch < self.epochs and self.poll()[0]:
                self._stop(run_dir / "latest.pth", f"at the end of epoch {epoch}")
        return log

    def _run_epoch(self, epoch: int, run_dir: Path) -> dict[str, float]:
        """Train and validate `epoch`; its row (`epoch`, metrics, `lr`), the scheduler stepped."""
        lr = self.optimizer.param_groups[0]["lr"]
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
        skip = self.start_batch if epoch == self.start_epoch else 0
        if hasattr(self.data_loader, "set_epoch"):
            self.data_loader.set_epoch(epoch, skip)
        total = skip + len(self.data_loader)
        self._begin_epoch(skip, total)
        self.model.train()
        with self._bar(self.data_loader, f"epoch {epoch}/{self.epochs} train", skip) as bar:
            for batch in bar:
                step = self.stepper.is_due(self.progress.batches_done + 1, total)
                self._train_batch(move_to(batch, self.device), step)
                self.progress.batches_done += 1
                if step and self._at_step_boundary(epoch):
                    return None
                if self.progress.batches_done % CHECK_EVERY_BATCHES == 0:
                    self.check_finite(epoch)
                if self.show_progress and self.progress.batches_done % CHECK_EVERY_BATCHES == 1:
                    bar.set_postfix(loss=f"{self.train_metrics.average('loss'):.4f}", refresh=False)
        self.train_metrics.sum_across_ranks(self.device)
        return self.train_metrics.result()

    def _train_batch(self, batch: Batch, step: bool) -> None:
        with self.stepper.autocast():
            loss, output, target = self.train_step(batch)
        self._track_loss(loss)
        self.stepper.backward(loss, step)
        if step:
            self.progress.global_step += 1
        self._update_metrics(self.train_metrics, loss, output, target)

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
                             stoppable=not distributed.active())

    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Loss and every metric over `loader` through `valid_step` (sample-weighted averages):
        what test.py reports. Writes nothing."""
        result = self._measure(loader, "test", stoppable=False)
        assert result is not None
        return result

    @torch.no_grad()
    def _measure(self, loader: DataLoader, description: str, stoppable: bool) -> dict[str, float] | None:
        """Run `valid_step` over `loader` and average its metrics; None when `stoppable` and a
        signal arrived (the batches are then measured again on resume)."""
        self.raw_model.eval()
        self.valid_metrics.reset()
        with self._bar(loader, description) as bar:
            for batch in bar:
                with self.stepper.autocast():
                    loss, output, target = self.valid_step(move_to(batch, self.device))
                self._update_metrics(self.valid_metrics, loss, output, target)
                if stoppable and stop_request.signal_number is not None:
                    self.stop_signal = stop_request.signal_number
                    return None
        self.valid_metrics.sum_across_ranks(self.device)
        return self.valid_metrics.result()

    def _update_metrics(self, tracker: MetricTracker, loss: torch.Tensor, output: torch.Tensor,
                        target: torch.Tensor) -> None:
        n = target.size(0)
        tracker.update("loss", loss, n)
        with torch.no_grad():
            for fn in self.metric_fns:
                tracker.update(fn.__name__, fn(output, target), n)

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
        self._nonfinite_at = torch.full((), -1, dtype=torch.long, device=self.device)

    def _resumed_metrics(self) -> dict[str, Any] | None:
        """This process's share of the saved running metrics: its own when the number of
        processes is unchanged; otherwise all of them, on rank 0 alone."""
        saved = self.progress.epoch_metrics
        if saved is None:
            return None
        states = saved["per_rank"] if "per_rank" in saved else [saved]
        if len(states) == distributed.world_size():
            return states[distributed.rank()]
        return MetricTracker.merged(states) if self.is_main else None

    def dry_run(self) -> dict[str, float]:
        """One training batch (with its optimizer step) and one validation batch, to prove that
        everything fits together; returns their metrics. Writes nothing."""
        self.model.train()
        self.train_metrics.reset()
        self._train_batch(move_to(next(iter(self.data_loader)), self.device), step=True)
        log = self.train_metrics.result()
        if self.valid_data_loader is not None:
            self.raw_model.eval()
            self.valid_metrics.reset()
            with torch.no_grad(), self.stepper.autocast():
                loss, output, target = self.valid_step(move_to(next(iter(self.valid_data_loader)), self.device))
            self._update_metrics(self.valid_metrics, loss, output, target)
            log.update({f"val_{key}": value for key, value in self.valid_metrics.result().items()})
        return log

    # ------------------------------------------------------------------ stops, NaN, saves
    def poll(self) -> tuple[bool, bool]:
        """At an optimizer-step boundary: (stop now, save the position now), agreed by every DDP
        rank (a signal may reach only some of them, and their clocks differ)."""
        signal_number = stop_request.signal_number or 0
        save_due = self.saving.due(self.progress.global_step)
        signal_number, save_due = distributed.max_across_ranks([signal_number, int(save_due)], self.device)
        self.stop_signal = signal_number or None
        return self.stop_signal is not None, bool(save_due)

    def _track_loss(self, loss: torch.Tensor) -> None:
        """Note (on the device, without waiting for it) the first batch of the epoch whose loss
        is NaN or infinite; `check_finite` reads it."""
        bad = ~torch.isfinite(loss.detach())
        batch = self.progress.batches_done + 1
        self._nonfinite_at = torch.where(bad & (self._nonfinite_at < 0), batch, self._nonfinite_at)

    def check_finite(self, epoch: int, weights: bool = False) -> None:
        """Raise TrainingDiverged if a loss of this epoch was NaN or infinite (and, with
        `weights`, if a weight is), before anything holding such weights is written. One read
        of the device; every DDP rank calls it at the same batches."""
        flags = [self._nonfinite_at.to(torch.long)]
        if weights:
            flags.append(torch.stack([~torch.isfinite(p).all() for p in self.raw_model.parameters()]).any().long())
        at, *weights_bad = distributed.max_across_ranks(torch.stack(flags).tolist(), self.device)
        if at >= 0 or any(weights_bad):
            raise TrainingDiverged(epoch, at if at >= 0 else self.progress.batches_done, self.batches_in_epoch,
                                   self.last_checkpoint)

    def _save(self, epoch: int, is_best: bool = False, latest_only: bool = False) -> None:
        """Save the state after `epoch` (or, `latest_only`, the position inside it). Rank 0
        writes, every rank waits; nothing is written while a loss or weight is not finite."""
        self.check_finite(epoch, weights=True)
        done = self.progress.batches_done if latest_only else 0
        self.progress.epoch = epoch - 1 if latest_only else epoch
        self.progress.batches_done = done
        self.progress.monitor_best = self.monitor.best
        self.progress.not_improved_count = self.monitor.not_improved_count
        self.progress.epoch_metrics = self._epoch_metrics_state() if done else None
        state = training_state(self.progress, self.raw_model, self.optimizer, self.lr_scheduler,
                               self.stepper.scaler, self.config.config, self.data_loader)
        if self._saver is not None:
            self._saver.save_latest(state) if latest_only else self._saver.save(state, epoch, is_best)
            self.last_checkpoint = str(self._saver.run_dir / "latest.pth")
        self.saving.saved(self.progress.global_step)
        distributed.barrier()

    def _epoch_metrics_state(self) -> dict[str, Any]:
        """The running training metrics: every DDP rank's own, so that each can go on exactly."""
        own = self.train_metrics.state()
        return {"per_rank": distributed.gather(own)} if distributed.active() else own

    def _stop(self, checkpoint: Path, where: str) -> NoReturn:
        assert self.stop_signal is not None
        if self.is_main:
            logger.warning("Stopped by %s %s; saved %s", signal.Signals(self.stop_signal).name, where, checkpoint)
        raise TrainingInterrupted(self.stop_signal, str(checkpoint))

    # ------------------------------------------------------------------ run folder and resume
    def _make_run_dir(self) -> Path:
        """Rank 0 makes the run directory and tells the other ranks its path, or its error."""
        outcome = ("", "")
        if self.is_main:
            try:
                if self.config.resuming:  # refuse a metrics.csv the run cannot continue before writing anything
                    MetricsCSV(self.config.resume_path.parent / "metrics.csv", self.start_epoch)
                outcome = ("made", str(self.config.make_run_dir()))
            except InputError as exc:
                outcome = ("error", str(exc))
        kind, text = distributed.broadcast(outcome)
        if kind == "error":
            raise InputError(text)
        self.config.run_dir = Path(text)
        return Path(text)

    def _log_start(self, run_dir: Path) -> None:
        if self.config.branched_from is not None:
            logger.info("'%s' is older than the newest state of its run, %s, which is left as it is: "
                        "branching into %s", self.config.resume_path, self.config.branched_from, run_dir)
        if self.config.resuming:
            logger.info("Resuming from '%s' at epoch %d with %d of its batches already trained, in %s",
                        self.config.resume_path, self.start_epoch, self.start_batch, run_dir)
            if self.resumed_with:
                logger.info("Resuming with new values: %s", self.resumed_with)
        else:
            logger.info("Run directory: %s", run_dir)
        if self.start_note:
            logger.info(self.start_note)
        if distributed.active():
            logger.info("DDP: %d processes, %s", distributed.world_size(), self.device.type)

    def _report_failure(self, exc: Exception, run_dir: Path) -> bool:
        """Log an error that ends training; True when the run folder is to be removed: a new run
        that failed before writing any checkpoint leaves nothing behind. A resumed run's folder,
        and a run stopped by a signal, are always kept."""
        if isinstance(exc, TrainingInterrupted) or not self.is_main:
            return False
        remove = not self.config.resuming and self.last_checkpoint is None
        reason = str(exc) if isinstance(exc, TrainingDiverged) else f"{type(exc).__name__}: {exc}"
        logger.error("Training failed: %s%s", reason,
                     f"; removing the run directory {run_dir}, which holds no checkpoint" if remove else "")
        return remove

    def restore(self) -> None:
        """Load the config's checkpoint (`-r`): its weights alone when fine-tuning, else the whole
        state, with the config's changes applied or refused (utils/resume.py)."""
        path = self.config.resume_path
        if path is None:
            return
        checkpoint = load_checkpoint(path)
        arch = self.config["arch"]["type"]
        if self.config.fine_tune:
            load_weights(self.raw_model, checkpoint, arch, path)
            self.start_note = f"Fine-tuning from the weights of '{path}' (epoch {checkpoint['epoch']})"
            return
        if checkpoint["optimizer"] is None:  # e.g. converted by convert_checkpoint.py: weights only
            raise InputError(f"checkpoint '{path}': holds weights only (no optimizer state), so it cannot be "
                             f"resumed; fine-tune from it with --fine-tune -r {path}")
        saved_optimizer = checkpoint["config"]["optimizer"]["type"]
        if saved_optimizer != self.config["optimizer"]["type"]:
            raise InputError(
                f"checkpoint '{path}': saved with optimizer '{saved_optimizer}', the config asks for "
                f"'{self.config['optimizer']['type']}'; resume with the same optimizer, or fine-tune with --fine-tune"
            )
        changes = config_changes(checkpoint["config"], self.config.config)
        scheduler_type = self.config["lr_scheduler"]["type"] if self.config["lr_scheduler"] else None
        check_changes(changes, scheduler_type, path)
        load_weights(self.raw_model, checkpoint, arch, path)
        fresh = capture_hyperparameters(self.optimizer, self.lr_scheduler)  # built from the new config
        progress = restore_training_state(checkpoint, self.optimizer, self.lr_scheduler, self.stepper.scaler,
                                          self.data_loader)
        apply_changes(changes, self.optimizer, self.lr_scheduler, fresh, path)
        self.resumed_with = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
        if progress.epoch >= self.epochs and not progress.batches_done:
            raise InputError(
                f"checkpoint '{path}': the run already reached epoch {progress.epoch} of "
                f"trainer.epochs {self.epochs}; to train longer, resume with -o trainer.epochs=N"
            )
        self.progress = progress
        self.start_epoch, self.start_batch = progress.epoch + 1, progress.batches_done
        if progress.monitor_best is not None:
            self.monitor.best = progress.monitor_best
        self.monitor.not_improved_count = progress.not_improved_count


class SaveSchedule:
    """When `trainer.save_every_steps` / `save_every_minutes` call for a mid-epoch save."""

    def __init__(self, every_steps: int | None, every_minutes: float | None) -> None:
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes is not None else None
        self.saved(0)

    def saved(self, global_step: int) -> None:
        self.last_time, self.last_step = time.monotonic(), global_step

    def due(self, global_step: int) -> bool:
        return bool((self.every_steps is not None and global_step - self.last_step >= self.every_steps)
                    or (self.every_seconds is not None and time.monotonic() - self.last_time >= self.every_seconds))
