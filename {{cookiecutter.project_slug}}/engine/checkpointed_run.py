"""The part of a trainer that keeps a run's state safe: the agreement to stop or save at an
optimizer step, the NaN check, checkpoints (what is saved and when), the run directory, and
restoring a checkpoint under the rules of engine/resume.py. BaseTrainer builds on it."""

import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch

from engine import distributed
from engine.checkpoint import (
    Progress,
    WeightsMismatch,
    load_checkpoint,
    load_weights,
    restore_training_state,
    training_state,
)
from engine.device import on_device
from engine.fit_check import class_changes, named_classes
from engine.lr_schedule import check_step_budget
from engine.metric_tracker import MetricTracker
from engine.resume import apply_changes, capture_hyperparameters, check_resumable, has_ended
from engine.signals import stop_request
from logger.metrics_csv import MetricsCSV, epoch_ranges
from utils.errors import DiskFull, InputError, TrainingDiverged, TrainingInterrupted, first_line

logger = logging.getLogger("trainer")

# Under DDP the ranks agree whether to stop (a signal may reach only some of them) about this
# often, and at least every MAX_STEPS_APART optimizer steps: the steps between need no collective
# operation and no read from the device (a single process reads its own signal at every step).
AGREE_EVERY_SECONDS = 0.25
MAX_STEPS_APART = 20
NO_BATCH = 2**62  # no NaN loss among the recent batches: larger than any batch number


class CheckpointedRun:
    """Methods of BaseTrainer that save, restore and guard the run; they read the trainer's
    attributes (`config`, `progress`, `monitor`, `stepper`, the model, optimizer and loaders)."""

    def poll(self, agree: bool = False) -> tuple[bool, bool]:
        """At an optimizer-step boundary: (stop now, save the position now), the same on every
        DDP rank. A save every N steps needs no agreement; a signal (which may reach only some
        ranks) and a save every N minutes (their clocks differ) are agreed by one all-reduce
        when `self.agreement` says so, or now with `agree` (every rank must pass it alike)."""
        step = self.progress.global_step
        steps_due = self.saving.steps_due(step)
        if distributed.active() and not agree and not self.agreement.due(step):
            return False, steps_due
        signal_number, time_due, slowest_ms = distributed.max_across_ranks(
            [stop_request.signal_number or 0, int(self.saving.time_due()), int(self.agreement.elapsed() * 1000)],
            self.device)
        self.agreement.agreed(step, slowest_ms / 1000)
        self.stop_signal = signal_number or None
        return self.stop_signal is not None, steps_due or bool(time_due)

    def check_finite(self, epoch: int, weights: bool = False) -> None:
        """Raise TrainingDiverged if a loss of this epoch was NaN or infinite (and, with
        `weights`, if a weight is), before anything holding such weights is written. Called at
        least every RECENT_BATCHES batches (engine/metric_tracker.py), at the same batches on every DDP
        rank; reads the device once (twice with `weights`). The batch named is the earliest of
        any rank; its data are fetched again and checked, to tell bad data from divergence."""
        first = self.train_metrics.first_nonfinite("loss")
        own = NO_BATCH if first is None else self.tracked_from + first + 1
        bad_weights = 0
        if weights:
            bad_weights = int(torch.stack([~torch.isfinite(p).all() for p in self.raw_model.parameters()]).any())
        earliest, bad_weights = distributed.max_across_ranks([-own, bad_weights], self.device)
        at = -earliest
        if at == NO_BATCH and not bad_weights:
            return
        bad_samples = self._nonfinite_samples(epoch, at) if own == at != NO_BATCH else None
        found = [samples for samples in distributed.gather(bad_samples) if samples]
        raise TrainingDiverged(epoch, at if at != NO_BATCH else self.progress.batches_done, self.batches_in_epoch,
                               self.last_checkpoint, found[0] if found else None)

    def _nonfinite_samples(self, epoch: int, batch: int) -> list[int] | None:
        """The dataset indices of the samples of this process's `batch`-th batch (from 1) of
        `epoch` whose data hold NaN or infinite values, the batch fetched again from the data
        loader and put on the device as it was trained; None when the loader cannot fetch it."""
        loader = self.data_loader
        if not hasattr(loader, "epoch_batch"):
            return None
        try:
            fetched, indices = loader.epoch_batch(batch - 1)
            trained = next(on_device([fetched], loader, self.device, epoch, batch - 1))
            bad = nonfinite_rows(trained, len(indices))
        except Exception as exc:  # noqa: BLE001  (a look back on the way to an error: that error is the one to report)
            logger.warning("Could not check the data of batch %d again: %s", batch, first_line(exc))
            return None
        return sorted(indices[row] for row in bad)

    def _save(self, epoch: int, is_best: bool = False, latest_only: bool = False,
              row_files: dict[Path, bytes] | None = None) -> None:
        """Save the state after `epoch` (or, `latest_only`, the position inside it), with the
        epoch's `row_files` (metrics.csv), all or nothing. Rank 0 writes, every rank waits and
        learns whether it could: a full disk is a DiskFull on every rank, with the run folder
        as the last save left it. Nothing is written while a loss or weight is not finite."""
        self.check_finite(epoch, weights=True)
        done = self.progress.batches_done if latest_only else 0
        self.progress.epoch = epoch - 1 if latest_only else epoch
        self.progress.batches_done = done
        self.progress.samples_done = self._samples_done(done)
        self.progress.monitor_best = self.monitor.best
        self.progress.not_improved_count = self.monitor.not_improved_count
        self.progress.epoch_metrics = self._epoch_metrics_state() if done else None
        self.progress.epoch_lr = self.progress.epoch_lr if done else None
        state = training_state(self.progress, self.raw_model, self.optimizer, self.lr_scheduler,
                               self.stepper.scaler, self.config.config, self.data_loader, self.config.run_uid)
        failure = None
        if self._saver is not None:
            try:
                self._saver.save_latest(state) if latest_only else self._saver.save(state, epoch, is_best, row_files)
                self.last_checkpoint = str(self._saver.run_dir / "latest.pth")
            except DiskFull as exc:
                latest = self._saver.run_dir / "latest.pth"
                failure = exc.resumable_from(str(latest) if latest.is_file() else None).args
        failure = distributed.broadcast(failure)  # also the barrier: the others wait for rank 0's files
        if failure is not None:
            raise DiskFull(*failure)
        self.saving.saved(self.progress.global_step)
        if not latest_only:
            self.saved_epoch = epoch

    def _samples_done(self, batches_done: int) -> int | None:
        """The samples of this epoch's order trained after `batches_done` batches of each
        process (None when the data loader cannot tell)."""
        if not batches_done:
            return 0
        samples_after = getattr(self.data_loader, "samples_after", None)
        return samples_after(batches_done) if samples_after is not None else None

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

    def _epoch_metrics_state(self) -> dict[str, Any]:
        """The running training metrics: every DDP rank's own, so that each can go on exactly."""
        own = self.train_metrics.state()
        return {"per_rank": distributed.gather(own)} if distributed.active() else own

    def _resume_position(self, progress: Progress, path: Path) -> tuple[int, int | None]:
        """Where the resumed epoch starts: the batches of it already trained, counted on this
        run's number of processes, and the samples of its order already trained (None: skip
        batches instead). A data loader that counts samples (BaseDataLoader's) resumes from
        them on any number of processes; another one only on the saved number. Refuses, in one
        line, what cannot go on with every sample of the epoch trained once."""
        saved, now = self.saved_world_size, distributed.world_size()
        changed = f"the run trained on {processes(saved)} and this one has {now}"
        if saved != now and self.scheduler_interval == "step":
            scheduler = self.config["lr_scheduler"]["type"]
            raise InputError(
                f"checkpoint '{path}': {changed}: lr_scheduler {scheduler} steps at every optimizer step, and an "
                f"epoch takes another number of optimizer steps on {processes(now)}, so the schedule would no "
                f"longer fit the run; resume on {processes(saved)}, or start a new run from these weights: "
                "--fine-tune -r CHECKPOINT"
            )
        if not progress.batches_done:
            return 0, None
        if hasattr(self.data_loader, "batches_before") and progress.samples_done is not None:
            return self.data_loader.batches_before(progress.samples_done), progress.samples_done
        if saved != now:
            raise InputError(
                f"checkpoint '{path}': {changed}, and it stopped inside epoch {progress.epoch + 1}, whose rest the "
                f"data loader {type(self.data_loader).__name__} cannot share out among other processes (only a "
                f"BaseDataLoader can), so samples would be trained twice or never; resume on {processes(saved)}, "
                "or from a checkpoint written at the end of an epoch"
            )
        return progress.batches_done, None

    def _stop(self, checkpoint: Path, where: str) -> NoReturn:
        assert self.stop_signal is not None
        if self.is_main:
            logger.warning("Stopped by %s %s; saved %s", signal.Signals(self.stop_signal).name, where, checkpoint)
        raise TrainingInterrupted(self.stop_signal, str(checkpoint))

    def _make_run_dir(self) -> Path:
        """Rank 0 makes (and locks) the run directory and tells the other ranks its path, or its error."""
        outcome: tuple[str, Any] = ("", "")
        if self.is_main:
            try:
                if self.config.resuming:  # refuse a metrics.csv the run cannot continue before writing anything
                    csv_path = self.config.resume_path.parent / "metrics.csv"
                    missing = MetricsCSV(csv_path, self.start_epoch).missing
                    if missing:
                        logger.warning("%s has no row for %s %s, which the checkpoint has trained; the run goes on "
                                       "without them (metrics.csv and report.py will not show them)", csv_path,
                                       "epoch" if len(missing) == 1 else "epochs", epoch_ranges(missing))
                outcome = ("made", str(self.config.make_run_dir()))
            except InputError as exc:
                outcome = ("error", str(exc))
            except DiskFull as exc:
                outcome = ("full", exc.args)
        kind, details = distributed.broadcast(outcome)
        if kind == "error":
            raise InputError(details)
        if kind == "full":
            raise DiskFull(*details)
        self.config.run_dir = Path(details)
        return Path(details)

    def _log_start(self, run_dir: Path) -> None:
        if self.config.branched_from is not None:
            logger.info("'%s' is older than the newest state of its run, %s, which is left as it is: "
                        "branching into %s", self.config.resume_path, self.config.branched_from, run_dir)
        if self.config.resuming:
            changed = self.saved_world_size != distributed.world_size()
            done = f"{self.start_batch} of its batches already trained"
            if changed and self.start_samples:
                done = (f"{self.progress.batches_done} of its batches already trained on "
                        f"{processes(self.saved_world_size)} (its first {self.start_samples} samples)")
            logger.info("Resuming from '%s' at epoch %d with %s, in %s", self.config.resume_path, self.start_epoch,
                        done, run_dir)
            if self.config.took_in_run:
                logger.info("%s held no run: the run goes on in it, so its metrics.csv starts at epoch %d (the "
                            "earlier rows are in the folder the checkpoint came from)", run_dir, self.start_epoch)
            if self.resumed_with:
                logger.info("Resuming with new values: %s", self.resumed_with)
            if changed:
                logger.info(self._world_size_note())
        else:
            logger.info("Run directory: %s", run_dir)
        if self.start_note:
            logger.info(self.start_note)
        if distributed.active():
            logger.info("DDP: %d processes, %s", distributed.world_size(), self.device.type)

    def _world_size_note(self) -> str:
        """What a resume on another number of processes changes, for the log."""
        now, saved = distributed.world_size(), self.saved_world_size
        rest = (f"the rest of epoch {self.start_epoch} is resharded over {processes(now)}, each sample trained "
                "once; " if self.start_samples else "")
        batches = self.stepper.accumulate * now  # per optimizer step, over all processes
        return (f"Resumed on {processes(now)}; the run had {saved}: {rest}an optimizer step now averages the "
                f"gradients of {batches} batch{'es' if batches > 1 else ''} (it averaged "
                f"{self.stepper.accumulate * saved}), so the result is not bitwise that of a run on {processes(saved)}")

    def _report_failure(self, exc: Exception, run_dir: Path) -> bool:
        """Log an error that ends training; True when the run folder is to be removed: a new run
        that failed before writing any checkpoint leaves nothing behind. A resumed run's folder, a
        folder this process did not create, and a run stopped by a signal, are always kept."""
        if isinstance(exc, TrainingInterrupted) or not self.is_main:
            return False
        remove = self.config.made_run_dir and not self.config.resuming and self.last_checkpoint is None
        reason = str(exc) if isinstance(exc, TrainingDiverged | DiskFull) else f"{type(exc).__name__}: {exc}"
        logger.error("Training failed: %s%s", reason,
                     f"; removing the run directory {run_dir}, which holds no checkpoint" if remove else "")
        return remove

    def restore(self) -> None:
        """Load the config's checkpoint (`-r`): its weights alone when fine-tuning, else the whole
        state, with the config's changes applied or refused (engine/resume.py)."""
        path = self.config.resume_path
        if path is None:
            return
        checkpoint = load_checkpoint(path)
        arch = self.config["arch"]["type"]
        if self.config.fine_tune:
            self._load_fine_tuned(checkpoint, arch, path)
            return
        changes = self.config.changes_from(checkpoint["config"])
        check_resumable(checkpoint, self.config.config, changes, path)
        self._check_same_classes(checkpoint, path)
        load_weights(self.raw_model, checkpoint, arch, path)
        fresh = capture_hyperparameters(self.optimizer, self.lr_scheduler)  # built from the new config
        progress = restore_training_state(checkpoint, self.optimizer, self.lr_scheduler, self.stepper.scaler,
                                          self.data_loader)
        apply_changes(changes, self.optimizer, self.lr_scheduler, fresh, path)
        self.resumed_with = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
        if progress.epoch >= self.epochs:  # nothing left to train
            where = (f"stopped inside epoch {progress.epoch + 1}, after" if progress.batches_done
                     else f"already reached epoch {progress.epoch} of")
            least = f", N at least {progress.epoch + 1}" if progress.batches_done else ""
            raise InputError(f"checkpoint '{path}': the run {where} trainer.epochs {self.epochs}; "
                             f"to train longer, resume with -o trainer.epochs=N{least}")
        ended = has_ended(checkpoint, self.config.config)
        if ended is not None:  # early stopping ended it: another epoch would end it again, at once
            early_stop = self.config["trainer"]["early_stop"]
            raise InputError(f"checkpoint '{path}': the run has finished: {ended}; to train longer, resume with "
                             f"-o trainer.early_stop=N, N above {early_stop} (or 0: no early stopping)")
        self.progress, self.saved_epoch = progress, progress.epoch
        self.start_epoch, self.saved_world_size = progress.epoch + 1, checkpoint["world_size"]
        self.start_batch, self.start_samples = self._resume_position(progress, path)
        if self.scheduler_interval == "step":  # after the check of the number of processes, which says more
            check_step_budget(self.lr_scheduler, -(-self._batches_per_epoch() // self.stepper.accumulate),
                              self.epochs, resuming=True)
        if progress.monitor_best is not None:
            self.monitor.best = progress.monitor_best
        self.monitor.not_improved_count = progress.not_improved_count

    def _check_same_classes(self, checkpoint: dict[str, Any], path: Path) -> None:
        """A resume goes on with the classes it trained on (data that moved is the same data):
        refuse, in one line, a data loader whose class names differ from the checkpoint's."""
        saved, now = named_classes(checkpoint["classes"]), named_classes(getattr(self.data_loader, "classes", None))
        if saved is not None and now is not None and saved != now:
            raise InputError(f"checkpoint '{path}': resuming cannot change the classes ({class_changes(saved, now)}): "
                             "it would no longer be the same run; to train on these classes, start a new run from "
                             "these weights: --fine-tune -r CHECKPOINT")

    def _load_fine_tuned(self, checkpoint: dict[str, Any], arch: str, path: Path) -> None:
        """The checkpoint's weights alone, all of them or (`--partial`) those whose names and
        shapes fit; what was left out is said in the run's log."""
        partial = self.config.partial
        try:
            fit = load_weights(self.raw_model, checkpoint, arch, path, partial=partial)
        except WeightsMismatch as exc:
            if not exc.fit.matching:
                raise
            raise InputError(f"{exc}; to start from the {len(exc.fit.matching)} of its {exc.fit.in_checkpoint} "
                             "tensors that fit (the others as initialised), add --partial") from None
        self.start_note = f"Fine-tuning from the weights of '{path}' (epoch {checkpoint['epoch']})"
        saved, now = named_classes(checkpoint["classes"]), named_classes(getattr(self.data_loader, "classes", None))
        if saved is not None and now is not None and saved != now and self.is_main:  # every tensor may still fit
            logger.warning("The data's classes are not the checkpoint's: %s; fine-tuning teaches those outputs the "
                           "data's classes", class_changes(saved, now))
        if partial:
            left_out = f"; left out: {fit.difference()}" if not fit.exact else ""
            self.start_note += (f": --partial loaded {len(fit.matching)} of its {fit.in_checkpoint} tensors (the "
                                f"model has {fit.in_model}){left_out}")




class SaveSchedule:
    """When `trainer.save_every_steps` / `save_every_minutes` call for a mid-epoch save."""

    def __init__(self, every_steps: int | None, every_minutes: float | None) -> None:
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes is not None else None
        self.saved(0)

    def saved(self, global_step: int) -> None:
        self.last_time, self.last_step = time.monotonic(), global_step

    def steps_due(self, global_step: int) -> bool:
        return self.every_steps is not None and global_step - self.last_step >= self.every_steps

    def time_due(self) -> bool:
        return self.every_seconds is not None and time.monotonic() - self.last_time >= self.every_seconds


class AgreementSchedule:
    """When DDP ranks next agree on a stop: every so many optimizer steps, that number taken from
    how long the last steps took on the slowest rank, so that a signal is acted on within about
    AGREE_EVERY_SECONDS (plus one step) whether a step takes a millisecond or a minute. The
    inputs are agreed values, so every rank computes the same schedule."""

    def __init__(self) -> None:
        self.next_step = 0
        self.last_step: int | None = None  # of the last agreement
        self.last_time = time.monotonic()

    def due(self, global_step: int) -> bool:
        return global_step >= self.next_step

    def elapsed(self) -> float:
        """Seconds since this rank's last agreement."""
        return time.monotonic() - self.last_time

    def agreed(self, global_step: int, slowest_seconds: float) -> None:
        """An agreement at `global_step`, `slowest_seconds` after the previous one on the slowest rank."""
        every = 1  # the first time: no step time measured yet
        if self.last_step is not None and global_step > self.last_step:
            per_step = slowest_seconds / (global_step - self.last_step)
            every = MAX_STEPS_APART if per_step <= 0 else int(AGREE_EVERY_SECONDS / per_step)
        self.next_step = global_step + min(max(every, 1), MAX_STEPS_APART)
        self.last_step, self.last_time = global_step, time.monotonic()


def nonfinite_rows(batch: Any, count: int) -> list[int]:
    """The positions (0 to `count` - 1) of the samples of `batch` (tensors, possibly in tuples,
    lists and dicts, each with a first dimension of `count` samples) whose floating-point
    values include a NaN or an infinity. A tensor of another shape counts against every sample."""
    bad = torch.zeros(count, dtype=torch.bool)
    for tensor in tensors_in(batch):
        if not tensor.is_floating_point():
            continue
        if tensor.dim() >= 1 and tensor.shape[0] == count:
            bad |= (~torch.isfinite(tensor.detach().reshape(count, -1))).any(dim=1).cpu()
        elif not torch.isfinite(tensor).all():
            bad[:] = True
    return bad.nonzero().flatten().tolist()


def tensors_in(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor in `batch`, also inside tuples, lists and dicts."""
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for value in batch.values():
            yield from tensors_in(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            yield from tensors_in(value)


def processes(count: int) -> str:
    """'1 process', '2 processes'."""
    return f"{count} process" if count == 1 else f"{count} processes"
