"""TensorBoard scalars, one point per epoch."""

import logging
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger("trainer")


class TensorboardWriter:
    """Writes every logged value of an epoch as a scalar: `train/<key>`, `val/<key>` (for
    `val_<key>`) and `lr`. Disabled, it does nothing and never imports tensorboard.

    TensorBoard mirrors metrics.csv, which is the record: when its events cannot be written (a
    full disk), it says so once, in one log line, and writes no more points this run, rather
    than stopping training or printing a traceback."""

    def __init__(self, log_dir: Path, enabled: bool, start_epoch: int = 1) -> None:
        """A resumed run (`start_epoch` > 1) writes on into the same log_dir; points of epochs
        from `start_epoch` on, written before an interruption, are purged (TensorBoard hides
        them), so no epoch appears twice."""
        self.writer: Any = None
        self.log_dir = log_dir
        if enabled:
            # Imported here: tensorboard costs start-up time and a run without it needs none.
            from torch.utils.tensorboard import SummaryWriter

            _quiet_writer_thread()
            purge_step = start_epoch if start_epoch > 1 else None
            try:
                self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
            except OSError as exc:
                self._give_up(exc, start_epoch)

    @staticmethod
    def tag(key: str) -> str:
        if key == "lr":
            return key
        if key.startswith("val_"):
            return f"val/{key[4:]}"
        return f"train/{key}"

    def write_epoch(self, epoch: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        try:
            for key, value in values.items():
                if key != "epoch":
                    self.writer.add_scalar(self.tag(key), value, epoch)
            self.writer.flush()
        except OSError as exc:
            self._give_up(exc, epoch)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass  # said when the write failed
            self.writer = None

    def _give_up(self, exc: OSError, epoch: int) -> None:
        logger.warning("TensorBoard: cannot write its events in %s (%s); it shows no point from epoch %d on in "
                       "this run (metrics.csv has every epoch)", self.log_dir, exc.strerror or exc, epoch)
        self.close()


def _quiet_writer_thread() -> None:
    """TensorBoard writes events in a thread of its own, which keeps a write's OSError for the
    writer's next call (where `write_epoch` catches it) and also re-raises it, so Python prints
    the thread's traceback: that second report of the same error is left out."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook
