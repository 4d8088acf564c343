"""Checks made while building, before a run directory exists, that the model and the data
loader fit each other and the config: mistakes that would otherwise surface as an IndexError
or a RuntimeError in the first batch (or, on a GPU, as a device-side assert)."""

import inspect
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.device import on_device
from utils.errors import InputError, listed

logger = logging.getLogger(__name__)

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def accepts(cls: Callable[..., Any], parameter: str) -> bool:
    """Whether `cls` (a class or function) has a parameter named `parameter`."""
    try:
        return parameter in inspect.signature(cls).parameters
    except ValueError:  # no inspectable signature (some builtins)
        return False


def check_model_fits_data(
    model: nn.Module,
    data_loader: Any,
    criterion: Callable[..., torch.Tensor],
    metric_fns: list[Callable[..., torch.Tensor]],
    device: torch.device,
) -> None:
    """Run one sample of `data_loader` through `model` and raise an InputError when the model
    outputs fewer classes than the labels need, or when the loss or a metric refuses the
    output (a ValueError from it). Loaders without `sample_batch` (BaseDataLoader's), and
    batches other than a (data, target) pair of tensors, are not checked.

    The model runs in eval mode without gradients; its modes and every global RNG are restored,
    so that a run checked here is bitwise the run it would be unchecked."""
    with rng_preserved(device):  # a random transform of the sample, or the model, may draw from them
        sample = sample_on_device(data_loader, device)
        if sample is None:
            return
        data, target = sample
        output = forward_in_eval_mode(model, data)
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            return
        check_class_count(getattr(data_loader, "classes", None), output.size(1))
        max_label = data_loader.max_label() if hasattr(data_loader, "max_label") else None
        if max_label is None and target.numel() and target.dtype in INTEGER_DTYPES:
            max_label = int(target.max())  # only this sample's label is known
        if max_label is not None and max_label >= output.size(1):
            # checked before calling the loss: out-of-range labels are an IndexError on the CPU
            # and an unrecoverable device-side assert on a GPU
            raise InputError(f"config: labels go up to {max_label} but the model outputs {output.size(1)} "
                             "classes (arch.args.num_classes?)")
        with torch.no_grad():
            for kind, fn in [("loss", criterion), *(("metric", fn) for fn in metric_fns)]:
                try:
                    fn(output, target)
                except ValueError as exc:  # the function's own judgement of the model's output
                    name = getattr(fn, "__name__", type(fn).__name__)
                    raise InputError(f"config: {kind} '{name}': {exc}") from None


def check_class_count(classes: Any, outputs: int) -> None:
    """The classes a loader names (e.g. the class folders of train/) against the model's
    outputs: fewer outputs is an InputError. More is a warning, not an error: a head sized for
    classes still to come (or kept from a checkpoint) trains correctly, the extra outputs only
    learn never to win; but it is more often a forgotten `arch.args.num_classes`."""
    if not isinstance(classes, list) or not classes or not all(isinstance(name, str) for name in classes):
        return
    if outputs < len(classes):
        raise InputError(f"config: the data has {len(classes)} classes ({listed(classes)}) but the model outputs "
                         f"{outputs}; set 'arch.args.num_classes' to {len(classes)}")
    if outputs > len(classes):
        logger.warning("The model outputs %d classes but the data has %d (%s): outputs %d to %d are never a target; "
                       "fine for a head kept for classes to come, else set 'arch.args.num_classes' to %d", outputs,
                       len(classes), listed(classes), len(classes), outputs - 1, len(classes))


def sample_on_device(data_loader: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The loader's one-sample batch on `device`, as a step receives it (through the loader's
    `device_transform`, e.g. uint8 images to normalised floats); None when the loader has no
    `sample_batch` or its batches are not a (data, target) pair of tensors."""
    sample_batch = getattr(data_loader, "sample_batch", None)
    if sample_batch is None:
        return None
    batch = next(on_device([sample_batch()], data_loader, device, epoch=1))
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(p, torch.Tensor) for p in batch)):
        return None
    return batch[0], batch[1]


def forward_in_eval_mode(model: nn.Module, data: torch.Tensor) -> Any:
    """`model(data)` in eval mode (no dropout, no batch-norm statistics updated) without
    gradients; every submodule's training flag is restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(data)
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def rng_preserved(device: torch.device) -> Iterator[None]:
    """Restore the python, numpy and torch RNGs (CPU, and `device` when it is a GPU) on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = []
    if device.type == "cuda":  # only this device: touching the others would start a context on each
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
