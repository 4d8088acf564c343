from utils.checkpoint import CheckpointSaver, load_checkpoint, unwrap_model
from utils.device import prepare_device, setup_device
from utils.errors import InputError, TrainingInterrupted
from utils.seed import rng_state, seed_everything, set_rng_state
from utils.tracker import MetricTracker

__all__ = [
    "CheckpointSaver",
    "InputError",
    "MetricTracker",
    "TrainingInterrupted",
    "load_checkpoint",
    "prepare_device",
    "setup_device",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "unwrap_model",
]
