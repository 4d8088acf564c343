"""A checkpoint's model, ready to use: built from the checkpoint's config, its weights loaded, in
eval mode, with its class names and the preprocessing of its inputs (docs/use-the-model.md);
and the config's data loader over the test split, for test.py and for export.py's check."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import data_loader as module_data
import model.model as module_arch
from engine.checkpoint import load_checkpoint, load_weights
from engine.fit_check import accepts
from parse_config import ConfigParser, lookup
from utils.errors import InputError

USE_DOCS = "docs/use-the-model.md"


@dataclass
class TrainedModel:
    """What a checkpoint holds for use: `model` (in eval mode, on its device) with the class
    names in label order (None: the labels' numbers name them), the `preprocessing` of its
    inputs (a data loader's `preprocessing()`), and `loader_class`, the data loader that trained
    it, whose `read_inputs` turns a file into inputs."""

    path: Path
    arch: str
    model: nn.Module
    classes: list[str] | None
    preprocessing: dict[str, Any]
    loader_class: type
    checkpoint: dict[str, Any]

    def class_names(self, count: int) -> list[str]:
        """The names of the model's `count` outputs (`class_names`)."""
        return class_names(self.classes, count)


def class_names(classes: list[str] | None, count: int) -> list[str]:
    """The names of a model's `count` outputs: `classes` (a checkpoint's), and the label numbers
    of any output beyond them."""
    known = classes or []
    return [known[index] if index < len(known) else str(index) for index in range(count)]


def load_trained_model(config: ConfigParser, device: torch.device, tool: str) -> TrainedModel:
    """The model of `config.resume_path` (a checkpoint of this project, whose config `config`
    is, with any overrides) on `device`. A checkpoint without preprocessing (of a data loader
    that does not state it) is an InputError saying what `tool` needs."""
    path = config.resume_path
    if path is None:
        raise InputError(f"no checkpoint: give the checkpoint that {tool} uses with -r")
    checkpoint = load_checkpoint(path)
    loader_name = config["data_loader"]["type"]
    loader_class = lookup(module_data, loader_name, "data_loader.type", DataLoader)
    if checkpoint["preprocessing"] is None:
        raise InputError(
            f"checkpoint '{path}': records no preprocessing of its inputs (its data loader {loader_name} has no "
            f"preprocessing(), or wrote the checkpoint before format 5), which {tool} needs; for a model of "
            f"images add preprocessing() to {loader_name} and train again; {tool} serves models of images only "
            f"({USE_DOCS})"
        )
    model = config.init_obj("arch", module_arch, nn.Module)
    load_weights(model, checkpoint, config["arch"]["type"], path)
    model.to(device).eval()
    return TrainedModel(path, config["arch"]["type"], model, checkpoint["classes"], checkpoint["preprocessing"],
                        loader_class, checkpoint)


def evaluation_loader(config: ConfigParser, checkpoint: dict[str, Any], **options: Any) -> DataLoader:
    """The config's data loader over the test split (`training=False`), unshuffled, without a
    validation split where the loader has those arguments, and labelled with the checkpoint's
    classes where both the checkpoint and the loader have them. `options` (e.g. `download`)
    are passed to a loader that takes them."""
    name = config["data_loader"]["type"]
    loader_class = lookup(module_data, name, "data_loader.type", DataLoader)
    if not accepts(loader_class, "training"):
        raise InputError(
            f"data loader '{name}' has no 'training' argument, which test.py needs to load the test split; "
            f"add training: bool = True to {name}.__init__ (see docs/extending.md)"
        )
    wanted: dict[str, Any] = {"training": False, "shuffle": False, "validation_split": 0.0, **options}
    if checkpoint.get("classes") is not None:
        wanted["classes"] = checkpoint["classes"]
    given = {key: value for key, value in wanted.items() if key == "training" or accepts(loader_class, key)}
    return config.init_obj("data_loader", module_data, DataLoader, **given)
