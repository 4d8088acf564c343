"""Hyperparameter sweeps on Optuna (sweep.py): sweep.json's checks (spec), the study and its
storage (study), one trial as an ordinary run of the trainer (trial), the loop (runner)."""

from sweeps.runner import Sweep, SweepStopped
from sweeps.spec import SweepSpec, read_sweep

__all__ = ["Sweep", "SweepSpec", "SweepStopped", "read_sweep"]
