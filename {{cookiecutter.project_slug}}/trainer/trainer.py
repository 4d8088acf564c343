"""Trainer: what one training epoch and one validation epoch do."""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from base import BaseTrainer
from parse_config import ConfigParser
from utils import distributed
from utils.checkpoint import unwrap_model
from utils.lr_schedule import check_step_budget
from utils.tracker import MetricTracker

# The progress bar shows the running loss; reading it synchronises with the device, so it is
# refreshed every this many batches rather than every batch.
BAR_REFRESH_BATCHES = 20


class Trainer(BaseTrainer):
    """Trains on `data_loader` and, when given, evaluates on `valid_data_loader` every epoch."""

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[..., torch.Tensor],
        metric_fns: list[Callable[..., torch.Tensor]],
        optimizer: torch.optim.Optimizer,
        config: ConfigParser,
        device: torch.device,
        device_ids: list[int],
        data_loader: DataLoader,
        valid_data_loader: DataLoader | None = None,
        lr_scheduler: Any = None,
    ) -> None:
        super().__init__(model, criterion, metric_fns, optimizer, config, device, device_ids, lr_scheduler)
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader
        self.show_progress = config["trainer"]["verbosity"] >= 1 and self.is_main
        names = ["loss", *(fn.__name__ for fn in metric_fns)]
        self.train_metrics = MetricTracker(*names)
        self.valid_metrics = MetricTracker(*names)
        logged = names + ([f"val_{name}" for name in names] if valid_data_loader is not None else []) + ["lr"]
        self.check_monitor(logged)
        if self.scheduler_interval == "step":
            batches = (data_loader.batches_per_epoch() if hasattr(data_loader, "batches_per_epoch")
                       else len(data_loader))
            check_step_budget(lr_scheduler, math.ceil(batches / self.accumulate), self.epochs)
        if config.checkpoint is not None:
            self.restore(config.checkpoint)

    def _to_device(self, data: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return data.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)

    def _progress(self, loader: DataLoader, description: str, done: int = 0) -> tqdm:
        """A progress bar over `loader`, which serves what is left after `done` batches."""
        return tqdm(loader, desc=description, leave=False, disable=not self.show_progress,
                    dynamic_ncols=True, mininterval=0.5, initial=done, total=done + len(loader))

    def _update(self, tracker: MetricTracker, loss: torch.Tensor, output: torch.Tensor,
                target: torch.Tensor) -> None:
        n = target.size(0)
        tracker.update("loss", loss, n)
        with torch.no_grad():
            for fn in self.metric_fns:
                tracker.update(fn.__name__, fn(output, target), n)

    def _train_batch(self, data: torch.Tensor, target: torch.Tensor, step: bool = True) -> None:
        data, target = self._to_device(data, target)
        with self.autocast():
            output = self.model(data)  # (B, num_classes) log-probabilities
            loss = self.criterion(output, target)
        self.track_loss(loss, self.batches_done + 1)
        self.backward_and_step(loss, step)
        self._update(self.train_metrics, loss, output, target)

    def _valid_batch(self, data: torch.Tensor, target: torch.Tensor) -> None:
        data, target = self._to_device(data, target)
        with self.autocast():
            output = unwrap_model(self.model)(data)  # not through DDP: no collective in validation
            loss = self.criterion(output, target)
        self._update(self.valid_metrics, loss, output, target)

    def _train_epoch(self, epoch: int) -> dict[str, float] | None:
        skip = self.start_batch if epoch == self.start_epoch else 0
        if hasattr(self.data_loader, "set_epoch"):
            self.data_loader.set_epoch(epoch, skip)
        total = skip + len(self.data_loader)
        self.model.train()
        self.train_metrics.reset()
        resumed = self._resumed_metrics() if skip else None
        if resumed is not None:
            self.train_metrics.load_state(resumed, self.device)
        self.batches_done = skip
        self.begin_epoch(total)
        description = f"epoch {epoch}/{self.epochs} train"
        with self._progress(self.data_loader, description, skip) as bar:
            for data, target in bar:
                step = self.step_due(self.batches_done + 1, total)
                self._train_batch(data, target, step)
                self.batches_done += 1
                if step:  # stops and mid-epoch saves happen between optimizer steps only
                    stop, save = self.poll()
                    if stop:
                        return None
                    if save:
                        self.save_position(epoch)
                if self.batches_done % BAR_REFRESH_BATCHES == 0:
                    self.check_finite(epoch)  # reads the device once every few batches, like the bar
                if self.show_progress and self.batches_done % BAR_REFRESH_BATCHES == 1:
                    bar.set_postfix(loss=f"{self.train_metrics.average('loss'):.4f}", refresh=False)
        self.train_metrics.sum_across_ranks(self.device)
        log = self.train_metrics.result()
        if self.valid_data_loader is not None:
            valid = self._valid_epoch(epoch)
            if valid is None:
                return None
            log.update({f"val_{key}": value for key, value in valid.items()})
        return log

    @torch.no_grad()
    def _valid_epoch(self, epoch: int) -> dict[str, float] | None:
        assert self.valid_data_loader is not None
        self.model.eval()
        self.valid_metrics.reset()
        with self._progress(self.valid_data_loader, f"epoch {epoch}/{self.epochs} valid") as bar:
            for data, target in bar:
                self._valid_batch(data, target)
                # ranks may hold different numbers of validation batches: no collective here
                if not distributed.active() and self.should_stop():  # validation is redone on resume
                    return None
        self.valid_metrics.sum_across_ranks(self.device)
        return self.valid_metrics.result()

    def _epoch_metrics_state(self) -> dict[str, Any]:
        """The running training metrics: every DDP rank's own, so that each can go on exactly."""
        own = self.train_metrics.state()
        return {"per_rank": distributed.gather(own)} if distributed.active() else own

    def _resumed_metrics(self) -> dict[str, Any] | None:
        """This process's share of the saved running metrics: its own when the number of processes
        is unchanged; otherwise all of them, on rank 0 alone."""
        saved = self.resumed_epoch_metrics
        if saved is None:
            return None
        states = saved["per_rank"] if "per_rank" in saved else [saved]
        if len(states) == distributed.world_size():
            return states[distributed.rank()]
        return MetricTracker.merged(states) if self.is_main else None

    def dry_run(self) -> dict[str, float]:
        """One training batch and one validation batch, to prove that everything fits together;
        returns their metrics. Writes nothing."""
        self.model.train()
        self.train_metrics.reset()
        self._train_batch(*next(iter(self.data_loader)))
        log = self.train_metrics.result()
        if self.valid_data_loader is not None:
            self.model.eval()
            self.valid_metrics.reset()
            with torch.no_grad():
                self._valid_batch(*next(iter(self.valid_data_loader)))
            log.update({f"val_{key}": value for key, value in self.valid_metrics.result().items()})
        return log
