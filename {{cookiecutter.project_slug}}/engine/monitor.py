"""The monitored metric of `trainer.monitor`: its best value so far and the epochs without
improvement, which decide `model_best.pth` and early stopping."""

import math

from utils.errors import InputError


class Monitor:
    """`off`, or `min <metric>` / `max <metric>`."""

    def __init__(self, setting: str, early_stop: int = 0) -> None:
        self.mode, self.metric = ("off", "") if setting == "off" else setting.split()
        self.early_stop = early_stop
        self.best = math.inf if self.mode == "min" else -math.inf
        self.not_improved_count = 0

    def check_logged(self, logged_keys: list[str]) -> None:
        """Refuse a monitored metric that the trainer will never log."""
        if self.mode != "off" and self.metric not in logged_keys:
            raise InputError(
                f"config: 'trainer.monitor' watches '{self.metric}', which is not logged; "
                f"choose one of {', '.join(logged_keys)}"
            )

    def update(self, log: dict[str, float]) -> bool:
        """Whether this epoch's `log` improved the monitored metric; counts epochs without."""
        if self.mode == "off":
            return False
        value = log[self.metric]
        improved = value < self.best if self.mode == "min" else value > self.best
        if improved:
            self.best = value
            self.not_improved_count = 0
        else:
            self.not_improved_count += 1
        return improved

    def should_stop_early(self) -> bool:
        return bool(self.early_stop) and self.not_improved_count >= self.early_stop
