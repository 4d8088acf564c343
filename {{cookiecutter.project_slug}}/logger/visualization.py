"""TensorBoard scalars, one point per epoch."""

from pathlib import Path
from typing import Any


class TensorboardWriter:
    """Writes every logged value of an epoch as a scalar: `train/<key>`, `val/<key>` (for
    `val_<key>`) and `lr`. Disabled, it does nothing and never imports tensorboard."""

    def __init__(self, log_dir: Path, enabled: bool, start_epoch: int = 1) -> None:
        """A resumed run (`start_epoch` > 1) writes on into the same log_dir; points of epochs
        from `start_epoch` on, written before an interruption, are purged (TensorBoard hides
        them), so no epoch appears twice."""
        self.writer: Any = None
        if enabled:
            # Imported here: tensorboard costs start-up time and a run without it needs none.
            from torch.utils.tensorboard import SummaryWriter

            purge_step = start_epoch if start_epoch > 1 else None
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

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
        for key, value in values.items():
            if key != "epoch":
                self.writer.add_scalar(self.tag(key), value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
