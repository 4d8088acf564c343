"""Small helpers that every part of the project may use, one concern a module: `errors` (the
exceptions that end a run with its exit status, one-line messages), `seed` (seeding, and the
RNG states a checkpoint keeps), `staged_files` (files written whole: atomically, several at
once, a full disk reported as such). They import nothing else of the project. What drives a
run (checkpoints, resume, signals, devices, DDP, ...) is in engine/."""

from utils.errors import InputError, TrainingInterrupted
from utils.seed import rng_state, seed_everything, set_rng_state

__all__ = ["InputError", "TrainingInterrupted", "rng_state", "seed_everything", "set_rng_state"]
