"""BaseTrainer: the epoch loop, monitoring, early stopping, checkpoint save and resume."""

import logging
import math
import shutil
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

{% if cookiecutter.tensorboard == "yes" %}from logger import MetricsCSV, TensorboardWriter, add_file_handler, remove_handler{% else %}from logger import MetricsCSV, add_file_handler, remove_handler{% endif %}
from parse_config import ConfigParser
from utils import distributed
from utils.checkpoint import FORMAT_VERSION, CheckpointSaver, load_weights, unwrap_model
from utils.errors import InputError, TrainingDiverged, TrainingInterrupted
from utils.lr_schedule import scheduler_interval, step_scheduler
from utils.resume import apply_changes, capture_hyperparameters, check_changes, config_changes
from utils.seed import rng_state, set_rng_state
from utils.signals import stop_request

logger = logging.getLogger("trainer")


class BaseTrainer(ABC):
    """Runs epochs `start_epoch..epochs`; after each one logs the metrics, writes metrics.csv
    and TensorBoard, updates the monitored best value and early-stop count, and saves
    checkpoints. Subclasses write `_train_epoch`, which returns the epoch's metrics."""

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[..., torch.Tensor],
        metric_fns: list[Callable[..., torch.Tensor]],
        optimizer: torch.optim.Optimizer,
        config: ConfigParser,
        device: torch.device,
        device_ids: list[int],
        lr_scheduler: Any = None,
    ) -> None:
        self.config = config
        options = config["trainer"]
        self.device = device
        if distributed.active():  # under torchrun: one process per device
            ids = [device.index] if device.type == "cuda" else None
            self.model: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        elif len(device_ids) > 1:  # n_gpu > 1 in one process (torchrun is the faster way)
            self.model = nn.DataParallel(model, device_ids=device_ids)
        else:
            self.model = model
        self.is_main = distributed.is_main()  # the one process that logs and writes files
        self.criterion = criterion
        self.metric_fns = metric_fns
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.epochs: int = options["epochs"]
        self.early_stop: int = options["early_stop"]
        self.clip_grad_norm: float | None = options["clip_grad_norm"]
        self.accumulate: int = options["accumulate_grad_batches"]

        self.precision: str = options["precision"]
        if self.precision == "fp16" and device.type != "cuda":
            raise InputError("config: 'trainer.precision' is 'fp16', which needs a CUDA GPU; use 'bf16' or 'fp32'")
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

        self.monitor_mode, self.monitor_metric = ("off", "")
        if options["monitor"] != "off":
            self.monitor_mode, self.monitor_metric = options["monitor"].split()
        self.scheduler_interval = scheduler_interval(config.config)  # 'epoch', 'step' or None
        self.monitor_best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved_count = 0
        self.start_epoch = 1
        self.start_batch = 0  # batches of start_epoch trained before an interruption
        self.resumed_epoch_metrics: dict[str, Any] | None = None  # their running metrics
        self.batches_done = 0  # of the current epoch; the subclass keeps it up to date
        self.global_step = 0
        self.steps_in_process = 0  # optimizer steps taken by this process (not before a resume)
        self.stop_signal: int | None = None  # SIGINT/SIGTERM that stops training, agreed by every rank
        self.save_every_steps: int | None = options["save_every_steps"]
        self.save_every_seconds: float | None = (
            options["save_every_minutes"] * 60 if options["save_every_minutes"] is not None else None)
        self._last_save = (time.monotonic(), 0)  # when, and at which global step, latest.pth was written
        self._saver: CheckpointSaver | None = None
        self.last_checkpoint: str | None = None  # what this run last wrote: the one to go back to
        self._nonfinite_at = torch.full((), -1, dtype=torch.long, device=device)  # first batch with a bad loss
        self.batches_in_epoch = 0
        self.resumed_with = ""  # the config changes a resume applied, for the log

    def check_monitor(self, logged_keys: list[str]) -> None:
        """Refuse a monitored metric that the trainer will never log."""
        if self.monitor_mode != "off" and self.monitor_metric not in logged_keys:
            raise InputError(
                f"config: 'trainer.monitor' watches '{self.monitor_metric}', which is not logged; "
                f"choose one of {', '.join(logged_keys)}"
            )

    def autocast(self) -> AbstractContextManager:
        """The mixed-precision context of `trainer.precision` (a no-op for fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward_and_step(self, loss: torch.Tensor, step: bool = True) -> None:
        """Backward pass of one batch's loss (divided by `trainer.accumulate_grad_batches`, so
        that the accumulated gradient is the mean over the batches), then, when `step`, the
        optimizer step: gradient clipping (after unscaling), step, zero the gradients. Under DDP
        the gradients are only averaged across ranks on the backward pass before a step."""
        if self.accumulate > 1:
            loss = loss / self.accumulate
        no_sync = getattr(self.model, "no_sync", None)  # DistributedDataParallel's
        with no_sync() if no_sync is not None and not step else nullcontext():
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        if not step:
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        stepped = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale  # a lowered scale means inf/NaN gradients: step skipped
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if stepped:
            self.steps_in_process += 1
            if self.scheduler_interval == "step":
                step_scheduler(self.lr_scheduler)

    def track_loss(self, loss: torch.Tensor, batch: int) -> None:
        """Note (on the device, without waiting for it) the first batch of the epoch whose loss
        is NaN or infinite; `check_finite` reads it."""
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite_at = torch.where(bad & (self._nonfinite_at < 0), batch, self._nonfinite_at)

    def check_finite(self, epoch: int, weights: bool = False) -> None:
        """Stop with TrainingDiverged if a loss of this epoch was NaN or infinite (and, with
        `weights`, if a weight is), before anything holding such weights is written. One read
        of the device; every DDP rank calls it at the same batches."""
        flags = [self._nonfinite_at.to(torch.long)]
        if weights:
            flags.append(torch.stack([~torch.isfinite(p).all() for p in self.model.parameters()]).any().long())
        at, *weights_bad = distributed.max_across_ranks(torch.stack(flags).tolist(), self.device)
        if at >= 0 or any(weights_bad):
            raise TrainingDiverged(epoch, at if at >= 0 else self.batches_done, self.batches_in_epoch,
                                   self.last_checkpoint)

    def step_due(self, batches_done: int, batches_per_epoch: int) -> bool:
        """Whether the optimizer steps after the `batches_done`-th batch of an epoch: every
        `accumulate_grad_batches` batches, and after the last batch of the epoch."""
        return batches_done % self.accumulate == 0 or batches_done == batches_per_epoch

    def poll(self) -> tuple[bool, bool]:
        """At an optimizer-step boundary: (stop now, save the position now), agreed by every DDP
        rank (a signal may reach only some of them, and their clocks differ)."""
        signal_number = stop_request.signal_number or 0
        when, step = self._last_save
        save_due = bool(
            (self.save_every_steps is not None and self.global_step - step >= self.save_every_steps)
            or (self.save_every_seconds is not None and time.monotonic() - when >= self.save_every_seconds)
        )
        signal_number, save_due = distributed.max_across_ranks([signal_number, int(save_due)], self.device)
        self.stop_signal = signal_number or None
        return self.stop_signal is not None, bool(save_due)

    def should_stop(self) -> bool:
        """Whether a signal asks to stop (agreed by every DDP rank)."""
        return self.poll()[0]

    def begin_epoch(self, batches: int) -> None:
        """Called by `_train_epoch` before its first batch; `batches`: the epoch's number of them."""
        self.batches_in_epoch = batches
        self._nonfinite_at = torch.full((), -1, dtype=torch.long, device=self.device)

    def save_position(self, epoch: int) -> None:
        """Write `latest.pth` at the current position inside `epoch` (trainer.save_every_*), so
        that a process killed without warning loses only the batches since."""
        self._save(self.state(epoch - 1, self.batches_done), epoch, latest_only=True)

    @abstractmethod
    def _train_epoch(self, epoch: int) -> dict[str, float] | None:
        """Train (and validate) one epoch; return its metrics (`loss`, ..., `val_loss`, ...).

        Start at batch `self.start_batch` when `epoch` is `self.start_epoch`, keep
        `self.batches_done` up to date, and return None as soon as `self.stop_signal` is set
        after a batch: the trainer then saves `latest.pth` at that position."""

    def _epoch_metrics_state(self) -> dict[str, Any] | None:
        """The running metrics of an unfinished epoch, saved with an interruption (subclasses)."""
        return None

    def train(self) -> dict[str, float]:
        """Train to the last epoch (or early stop) and return the metrics of the last epoch.

        SIGINT or SIGTERM stops training at the next optimizer step: `latest.pth` is written
        with the position inside the epoch and TrainingInterrupted is raised. A NaN or infinite
        loss raises TrainingDiverged before any checkpoint holds its weights. Under DDP only
        rank 0 writes (run directory, train.log, metrics.csv, TensorBoard, checkpoints); every
        rank takes the same decisions."""
        with stop_request.listening():
            if stop_request.signal_number is not None:  # arrived while the run was being built
                raise TrainingInterrupted(stop_request.signal_number, None)
            run_dir = self._make_run_dir()
            options = self.config["trainer"]
            file_handler = add_file_handler(run_dir / "train.log", options["verbosity"]) if self.is_main else None
            csv = MetricsCSV(run_dir / "metrics.csv", start_epoch=self.start_epoch) if self.is_main else None
{%- if cookiecutter.tensorboard == "yes" %}
            writer = TensorboardWriter(run_dir, enabled=options["tensorboard"] and self.is_main,
                                       start_epoch=self.start_epoch)
{%- endif %}
            if self.is_main:
                self._saver = CheckpointSaver(run_dir, options["save_period"], options["keep_last"])
            self._log_start(run_dir)
            failed = False
            log: dict[str, float] = {}
            try:
                for epoch in range(self.start_epoch, self.epochs + 1):
                    log = self._run_epoch(epoch, run_dir)
                    if csv is not None:
                        csv.write(log)
{%- if cookiecutter.tensorboard == "yes" %}
                    writer.write_epoch(epoch, log)
{%- endif %}
                    is_best = self._update_monitor(log)
                    self._save(self.state(epoch), epoch, is_best=is_best)
                    if self.early_stop and self.not_improved_count >= self.early_stop:
                        logger.info("%s did not improve for %d epochs: stopping early.",
                                    self.monitor_metric, self.early_stop)
                        break
                    if epoch < self.epochs and self.should_stop():
                        self._stop(run_dir / "latest.pth", f"at the end of epoch {epoch}")
            except Exception as exc:
                failed = self._report_failure(exc, run_dir)
                raise
            finally:
{%- if cookiecutter.tensorboard == "yes" %}
                writer.close()
{%- endif %}
                if file_handler is not None:
                    remove_handler(file_handler)
                if failed:
                    shutil.rmtree(run_dir, ignore_errors=True)
        return log

    def _run_epoch(self, epoch: int, run_dir: Path) -> dict[str, float]:
        """Train and validate `epoch`; its log row (`epoch`, metrics, `lr`), the scheduler stepped."""
        lr = self.optimizer.param_groups[0]["lr"]
        metrics = self._train_epoch(epoch)
        if metrics is None:  # a signal, in the middle of the epoch
            self._save(self.state(epoch - 1, self.batches_done), epoch, latest_only=True)
            self._stop(run_dir / "latest.pth", f"in epoch {epoch} after {self.batches_done} batches")
        log = {"epoch": epoch, **metrics, "lr": lr}
        if self.scheduler_interval == "epoch":
            # steps_in_process 0: this epoch's optimizer steps were all taken before a resume
            step_scheduler(self.lr_scheduler, log, self.monitor_metric, stepped_here=self.steps_in_process > 0)
        summary = "  ".join(f"{key} {value:.6g}" for key, value in log.items() if key != "epoch")
        logger.info("epoch %d: %s", epoch, summary)
        return log

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

    def _save(self, state: dict[str, Any], epoch: int, is_best: bool = False, latest_only: bool = False) -> None:
        """Rank 0 writes; under DDP the state carries every rank's RNG, and all ranks wait
        until the files are written. Nothing is written while a loss of the epoch or the
        weights are not finite."""
        self.check_finite(epoch, weights=True)
        if distributed.active():
            state["rng_per_rank"] = distributed.gather(state["rng"])
        if self._saver is not None:
            if latest_only:
                self._saver.save_latest(state)
            else:
                self._saver.save(state, epoch, is_best)
            self.last_checkpoint = str(self._saver.run_dir / "latest.pth")
        self._last_save = (time.monotonic(), self.global_step)
        if distributed.active():
            distributed.barrier()

    def _stop(self, checkpoint: Path, where: str) -> NoReturn:
        assert self.stop_signal is not None
        if self.is_main:
            logger.warning("Stopped by %s %s; saved %s", signal.Signals(self.stop_signal).name, where, checkpoint)
        raise TrainingInterrupted(self.stop_signal, str(checkpoint))

    def _update_monitor(self, log: dict[str, float]) -> bool:
        """Whether this epoch improved the monitored metric; counts epochs without improvement."""
        if self.monitor_mode == "off":
            return False
        value = log[self.monitor_metric]
        improved = value < self.monitor_best if self.monitor_mode == "min" else value > self.monitor_best
        if improved:
            self.monitor_best = value
            self.not_improved_count = 0
        else:
            self.not_improved_count += 1
        return improved

    def state(self, epoch: int, batches_done: int = 0) -> dict[str, Any]:
        """Everything the next batch depends on, as plain data (loads with weights_only=True).
        `epoch` is the last finished epoch; `batches_done` > 0 marks an interruption after that
        many batches of the next one, whose running metrics are saved too."""
        loader = getattr(self, "data_loader", None)
        return {
            "format_version": FORMAT_VERSION,
            "arch": type(unwrap_model(self.model)).__name__,
            "epoch": epoch,
            "batches_done": batches_done,
            "epoch_metrics": self._epoch_metrics_state() if batches_done else None,
            "global_step": self.global_step,
            "tensorboard_step": epoch,  # TensorBoard points are per epoch: the last one written
            "state_dict": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "monitor_best": self.monitor_best,
            "not_improved_count": self.not_improved_count,
            "rng": rng_state(),
            "data_loader_seed": getattr(loader, "seed", None),
            "classes": getattr(self.data_loader, "classes", None),
            "config": self.config.config,
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Load a checkpoint: weights only when fine-tuning (`-c` with `-r`), else everything,
        so that training continues from the epoch after the one saved."""
        path = self.config.resume_path
        if self.config.fine_tune:
            load_weights(self.model, checkpoint, self.config["arch"]["type"], path)
            logger.info("Fine-tuning from the weights of '%s'", path)
            return
        if checkpoint.get("optimizer") is None:  # e.g. converted by convert_checkpoint.py: weights only
            raise InputError(f"checkpoint '{path}': holds weights only (no optimizer state), so it cannot be "
                             f"resumed; fine-tune from it with -c config.json -r {path}")
        saved_optimizer = checkpoint["config"]["optimizer"]["type"]
        if saved_optimizer != self.config["optimizer"]["type"]:
            raise InputError(
                f"checkpoint '{path}': saved with optimizer '{saved_optimizer}', the config asks for "
                f"'{self.config['optimizer']['type']}'; resume with the same optimizer, or fine-tune with -c and -r"
            )
        changes = config_changes(checkpoint["config"], self.config.config)
        scheduler_type = self.config["lr_scheduler"]["type"] if self.config["lr_scheduler"] else None
        check_changes(changes, scheduler_type, path)
        load_weights(self.model, checkpoint, self.config["arch"]["type"], path)
        fresh = capture_hyperparameters(self.optimizer, self.lr_scheduler)  # built from the new config
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None and checkpoint.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        applied = apply_changes(changes, self.optimizer, self.lr_scheduler, fresh, path)
        # logged when training starts, so that train.log has it too
        self.resumed_with = ", ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in applied)
        batches_done = checkpoint.get("batches_done", 0)
        if checkpoint["epoch"] >= self.epochs and not batches_done:
            raise InputError(
                f"checkpoint '{path}': the run already reached epoch {checkpoint['epoch']} of "
                f"trainer.epochs {self.epochs}; to train longer, resume with -o trainer.epochs=N"
            )
        self.start_epoch = checkpoint["epoch"] + 1
        self.start_batch = batches_done
        self.resumed_epoch_metrics = checkpoint.get("epoch_metrics")
        self.global_step = checkpoint.get("global_step", 0)
        self.monitor_best = checkpoint.get("monitor_best", self.monitor_best)
        self.not_improved_count = checkpoint.get("not_improved_count", 0)
        loader = getattr(self, "data_loader", None)
        if hasattr(loader, "seed") and checkpoint.get("data_loader_seed") is not None:
            loader.seed = checkpoint["data_loader_seed"]
        per_rank = checkpoint.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == distributed.world_size():
            set_rng_state(per_rank[distributed.rank()])
        elif "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])
