"""BaseTrainer: the epoch loop, monitoring, early stopping, checkpoint save and resume."""

import logging
import math
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

{% if cookiecutter.tensorboard == "yes" %}from logger import MetricsCSV, TensorboardWriter, add_file_handler, remove_handler{% else %}from logger import MetricsCSV, add_file_handler, remove_handler{% endif %}
from parse_config import ConfigParser
from utils import distributed
from utils.checkpoint import FORMAT_VERSION, CheckpointSaver, load_weights, unwrap_model
from utils.errors import InputError, TrainingInterrupted
from utils.seed import rng_state, set_rng_state

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
        if isinstance(lr_scheduler, ReduceLROnPlateau) and self.monitor_mode == "off":
            raise InputError("config: 'lr_scheduler.type' ReduceLROnPlateau steps on the monitored metric; "
                             "set 'trainer.monitor', e.g. 'min val_loss'")
        self.monitor_best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved_count = 0
        self.start_epoch = 1
        self.start_batch = 0  # batches of start_epoch trained before an interruption
        self.resumed_epoch_metrics: dict[str, Any] | None = None  # their running metrics
        self.batches_done = 0  # of the current epoch; the subclass keeps it up to date
        self.global_step = 0
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM during train()

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
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

    def step_due(self, batches_done: int, batches_per_epoch: int) -> bool:
        """Whether the optimizer steps after the `batches_done`-th batch of an epoch: every
        `accumulate_grad_batches` batches, and after the last batch of the epoch."""
        return batches_done % self.accumulate == 0 or batches_done == batches_per_epoch

    def should_stop(self) -> bool:
        """Whether a signal asks to stop, agreed by every DDP rank (a signal may reach only some)."""
        if distributed.active():
            agreed = distributed.max_across_ranks(self.stop_signal or 0, self.device)
            self.stop_signal = agreed or None
        return self.stop_signal is not None

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

        SIGINT or SIGTERM stops training after the current batch: `latest.pth` is written with
        the position inside the epoch and TrainingInterrupted is raised. Under DDP only rank 0
        writes (run directory, train.log, metrics.csv, TensorBoard, checkpoints); every rank
        takes the same decisions."""
        run_dir = self._make_run_dir()
        options = self.config["trainer"]
        file_handler = add_file_handler(run_dir / "train.log", options["verbosity"]) if self.is_main else None
        csv = MetricsCSV(run_dir / "metrics.csv", start_epoch=self.start_epoch) if self.is_main else None
{%- if cookiecutter.tensorboard == "yes" %}
        writer = TensorboardWriter(run_dir, enabled=options["tensorboard"] and self.is_main,
                                   start_epoch=self.start_epoch)
{%- endif %}
        saver = CheckpointSaver(run_dir, options["save_period"], options["keep_last"]) if self.is_main else None
        if self.config.resuming:
            logger.info("Resuming from '%s' at epoch %d with %d of its batches already trained, in %s",
                        self.config.resume_path, self.start_epoch, self.start_batch, run_dir)
        else:
            logger.info("Run directory: %s", run_dir)
        if distributed.active():
            logger.info("DDP: %d processes, %s", distributed.world_size(), self.device.type)
        latest = run_dir / "latest.pth"
        log: dict[str, float] = {}
        try:
            with self._stop_on_signals():
                for epoch in range(self.start_epoch, self.epochs + 1):
                    lr = self.optimizer.param_groups[0]["lr"]
                    metrics = self._train_epoch(epoch)
                    if metrics is None:  # a signal, in the middle of the epoch
                        self._save(saver, self.state(epoch - 1, self.batches_done), epoch, latest_only=True)
                        self._stop(latest, f"in epoch {epoch} after {self.batches_done} batches")
                    log = {"epoch": epoch, **metrics, "lr": lr}
                    self._step_scheduler(log)
                    summary = "  ".join(f"{key} {value:.6g}" for key, value in log.items() if key != "epoch")
                    logger.info("epoch %d: %s", epoch, summary)
                    if csv is not None:
                        csv.write(log)
{%- if cookiecutter.tensorboard == "yes" %}
                    writer.write_epoch(epoch, log)
{%- endif %}
                    is_best = self._update_monitor(log)
                    self._save(saver, self.state(epoch), epoch, is_best=is_best)
                    if self.early_stop and self.not_improved_count >= self.early_stop:
                        logger.info("%s did not improve for %d epochs: stopping early.",
                                    self.monitor_metric, self.early_stop)
                        break
                    if epoch < self.epochs and self.should_stop():
                        self._stop(latest, f"at the end of epoch {epoch}")
        finally:
{%- if cookiecutter.tensorboard == "yes" %}
            writer.close()
{%- endif %}
            if file_handler is not None:
                remove_handler(file_handler)
        return log

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

    def _save(self, saver: CheckpointSaver | None, state: dict[str, Any], epoch: int, is_best: bool = False,
              latest_only: bool = False) -> None:
        """Rank 0 writes; under DDP the state carries every rank's RNG, and all ranks wait
        until the files are written."""
        if distributed.active():
            state["rng_per_rank"] = distributed.gather(state["rng"])
        if saver is not None:
            if latest_only:
                saver.save_latest(state)
            else:
                saver.save(state, epoch, is_best)
        if distributed.active():
            distributed.barrier()

    def _stop(self, checkpoint: Path, where: str) -> NoReturn:
        assert self.stop_signal is not None
        if self.is_main:
            logger.warning("Stopped by %s %s; saved %s", signal.Signals(self.stop_signal).name, where, checkpoint)
        raise TrainingInterrupted(self.stop_signal, str(checkpoint))

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM only set `stop_signal` (the loop stops after the
        batch in hand); a second one stops at once. Signals work in the main thread only."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signal_number: int, frame: FrameType | None) -> None:
            if self.stop_signal is not None:  # asked twice: stop now
                raise SystemExit(128 + signal_number)
            self.stop_signal = signal_number

        previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, old_handler in previous.items():
                signal.signal(number, old_handler)

    def _step_scheduler(self, log: dict[str, float]) -> None:
        if isinstance(self.lr_scheduler, ReduceLROnPlateau):
            self.lr_scheduler.step(log[self.monitor_metric])
        elif self.lr_scheduler is not None:
            self.lr_scheduler.step()

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
            "config": self.config.config,
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Load a checkpoint: weights only when fine-tuning (`-c` with `-r`), else everything,
        so that training continues from the epoch after the one saved."""
        path = self.config.resume_path
        load_weights(self.model, checkpoint, self.config["arch"]["type"], path)
        if self.config.fine_tune:
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
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None and checkpoint.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
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
