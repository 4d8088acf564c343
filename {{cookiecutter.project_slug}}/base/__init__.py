"""The base classes you subclass: BaseDataLoader (a DataLoader with a validation split, for the
loaders in data_loader/), BaseModel (for the models in model/) and BaseTrainer (the loop every
trainer shares; trainer/trainer.py says what a batch does). What drives the loop beneath them
(checkpoints, resume, stop signals, devices, DDP) is in engine/."""

from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from base.base_trainer import BaseTrainer

__all__ = ["BaseDataLoader", "BaseModel", "BaseTrainer"]
