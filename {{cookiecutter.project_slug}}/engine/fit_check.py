"""Checks made while building, before a run directory exists, that the model, the data loader,
the loss and the metrics fit each other: one sample goes through the model (or, where the batch
or the output is structured, through the trainer's own `valid_step`), and the loss and every
metric are called on the output. Mistakes that would otherwise surface as a traceback in the
first batch (or, on a GPU, as a device-side assert) are one InputError line that names the loss
or metric and what it received."""

import inspect
import logging
import random
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.device import move_to, on_device
from utils.errors import InputError, first_line, listed

logger = logging.getLogger(__name__)

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
CPU = torch.device("cpu")

# valid_step(batch, criterion) -> (loss, output, target): one validation step with that loss.
Step = Callable[[Any, Callable[..., torch.Tensor]], tuple[Any, Any, Any]]


def accepts(cls: Callable[..., Any], parameter: str) -> bool:
    """Whether `cls` (a class or function) has a parameter named `parameter`."""
    try:
        return parameter in inspect.signature(cls).parameters
    except ValueError:  # no inspectable signature (some builtins)
        return False


def check_trainer_fits_data(trainer: Any) -> None:
    """`check_model_fits_data` for `trainer`'s model, data, loss and metrics, with its own
    `valid_step` (its `criterion` swapped for the checked loss meanwhile) for a structured batch
    or model output, so that a trainer which unpacks them passes as it trains."""

    def step(batch: Any, criterion: Callable[..., torch.Tensor]) -> tuple[Any, Any, Any]:
        own, trainer.criterion = trainer.criterion, criterion
        try:
            return trainer.valid_step(batch)
        finally:
            trainer.criterion = own

    check_model_fits_data(trainer.raw_model, trainer.data_loader, trainer.criterion, trainer.metric_fns,
                          trainer.device, step)


def check_model_fits_data(
    model: nn.Module,
    data_loader: Any,
    criterion: Callable[..., torch.Tensor],
    metric_fns: list[Callable[..., torch.Tensor]],
    device: torch.device,
    valid_step: Step | None = None,
) -> None:
    """Run the first training sample of `data_loader` through `model`, and call the loss and every
    metric on the output and the target: an InputError names one that fails on them, or that
    fails on the largest label of the data where it takes label 0 (the model outputs too few
    classes). A batch that is not a `(data, target)` pair of tensors, or a model output that is
    not a tensor, goes through `valid_step` (the trainer's own, which unpacks them) instead,
    and the metrics get what it returns; without `valid_step` such a sample is not checked, nor
    is a loader without `sample_batch` (BaseDataLoader's).

    The model runs in eval mode, uncompiled, without gradients; its modes and every global RNG
    are restored, so that a run checked here is bitwise the run it would be unchecked."""
    with rng_preserved(device):  # a random transform of the sample, or the model, may draw from them
        batch = sample_on_device(data_loader, device)
        if batch is None:
            return
        largest = data_loader.max_label() if hasattr(data_loader, "max_label") else None
        loss = CheckedCall(criterion, "loss", largest)
        with probing(model):
            with failing_on(batch, f"the model {type(model).__name__}"):
                output = model(batch[0]) if is_pair(batch) else None
            if isinstance(output, torch.Tensor):
                target = batch[1]
                if output.dim() >= 2:  # named classes (image folders) against the outputs, before the labels
                    check_class_count(getattr(data_loader, "classes", None), output.size(1))
                loss(output, target)
            elif valid_step is not None:
                with failing_on(batch, "the trainer's valid_step"):
                    _, output, target = valid_step(batch, loss)
            else:
                return
            for fn in metric_fns:
                CheckedCall(fn, "metric", largest)(output, target)


@contextmanager
def failing_on(batch: Any, what: str) -> Iterator[None]:
    """Turn an exception in the block (the model, or a valid_step, on the first sample) into one
    InputError line naming `what`, the sample and where in the project's code it failed."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        pair = is_pair(batch)
        shown = f"data {describe(batch[0], True)}, target {describe(batch[1], True)}" if pair else describe(batch, True)
        hint = "" if pair else ("; a batch that is not a (data, target) pair of tensors needs a train_step and "
                                "valid_step of your own (docs/extending.md: Write your own trainer)")
        raise InputError(f"{what} failed on the data's first sample ({shown}){in_project(exc)}: "
                         f"{type(exc).__name__}: {first_line(exc)}{hint}") from None


def in_project(exc: BaseException) -> str:
    """` at model/model.py:42`: the innermost line of this project's code in `exc`'s traceback."""
    root = Path(__file__).resolve().parents[1]
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if (path.is_relative_to(root) and path.parent != Path(__file__).resolve().parent  # not the engine's
                and "site-packages" not in path.parts):
            return f" at {path.relative_to(root)}:{frame.lineno}"
    return ""


def check_class_count(classes: Any, outputs: int) -> None:
    """The classes a loader names (e.g. the class folders of train/) against the model's
    outputs: fewer outputs is an InputError. More is a warning, not an error: a head sized for
    classes still to come (or kept from a checkpoint) trains correctly, the extra outputs only
    learn never to win; but it is more often a forgotten `arch.args.num_classes`."""
    if named_classes(classes) is None:
        return
    if outputs < len(classes):
        raise InputError(f"config: the data has {len(classes)} classes ({listed(classes)}) but the model outputs "
                         f"{outputs}; set 'arch.args.num_classes' to {len(classes)}")
    if len(classes) == 1:  # accuracy 1 and loss 0 from the first batch: the run looks perfect
        logger.warning("The data has one class (%s): every sample has the same label, so there is nothing to "
                       "learn; give the data a folder per class", classes[0])
    elif outputs > len(classes):
        unused = (f"output {outputs - 1} is" if outputs - len(classes) == 1
                  else f"outputs {len(classes)} to {outputs - 1} are")
        logger.warning("The model outputs %d classes but the data has %d (%s): %s never a target; fine for a head "
                       "kept for classes to come, else set 'arch.args.num_classes' to %d", outputs, len(classes),
                       listed(classes), unused, len(classes))


def class_changes(before: list[str], after: list[str]) -> str:
    """What differs between two lists of class names in label order (a checkpoint's and the
    data's), for one line: the classes one of them lacks, and the outputs whose class changes,
    e.g. `not in the data: 3; outputs that now mean another class: 3 ('3' -> '4'), ...`."""
    gone = [name for name in before if name not in after]
    added = [name for name in after if name not in before]
    shared = min(len(before), len(after))  # the outputs both name a class for
    moved = [f"{label} ({before[label]!r} -> {after[label]!r})" for label in range(shared)
             if before[label] != after[label]]
    parts = [f"not in the data: {listed(gone, 5)}" if gone else "",
             f"new in the data: {listed(added, 5)}" if added else "",
             f"outputs that now mean another class: {listed(moved, 3)}" if moved else ""]
    return "; ".join(part for part in parts if part)


def named_classes(value: Any) -> list[str] | None:
    """`value` when it is a list of class names (a data loader's or a checkpoint's `classes`), else None."""
    return value if isinstance(value, list) and value and all(isinstance(name, str) for name in value) else None


class CheckedCall:
    """A loss or metric that, called, first checks on CPU copies of its arguments whether it
    fails on the largest label (where it does not on label 0), then runs as is; either failure is
    an InputError naming it and what it received."""

    def __init__(self, fn: Callable[..., Any], kind: str, largest_label: int | None) -> None:
        self.fn, self.kind, self.largest_label = fn, kind, largest_label
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, output: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        self.check_labels(output, target)
        try:
            return self.fn(output, target, *args, **kwargs)
        except ValueError as exc:  # the function's own judgement of what it got
            raise InputError(f"config: {self.kind} '{self.__name__}': {exc}") from None
        except Exception as exc:
            hint = ("; a trainer whose model returns several outputs unpacks them in train_step/valid_step "
                    "(docs/extending.md: Write your own trainer)" if isinstance(output, (tuple, list, dict)) else "")
            raise InputError(
                f"config: {self.kind} '{self.__name__}' failed on the model's output ({describe(output)}) and target "
                f"{describe(target, dtype=True)}: {type(exc).__name__}: {first_line(exc)}{hint}"
            ) from None

    def check_labels(self, output: Any, target: Any) -> None:
        """On the CPU, where an out-of-range label is an exception rather than a device-side
        assert: a function that takes label 0 but not the largest label needs more classes."""
        if not (isinstance(target, torch.Tensor) and target.dtype in INTEGER_DTYPES and target.numel()):
            return  # not class labels
        label = max(int(target.max()), self.largest_label or 0)
        output, target = move_to(output, CPU), target.to(CPU)
        if label == 0 or fails(self.fn, output, torch.zeros_like(target)) is not None:
            return  # nothing to compare, or it fails on any label (reported by the call itself)
        error = fails(self.fn, output, torch.full_like(target, label))
        if error is None:
            return
        if isinstance(output, torch.Tensor) and output.dim() >= 2:
            raise InputError(f"config: labels go up to {label} but the model outputs {output.size(1)} classes, too "
                             f"few for {self.kind} '{self.__name__}' (arch.args.num_classes?)")
        raise InputError(f"config: labels go up to {label}, which {self.kind} '{self.__name__}' does not take with "
                         f"the model's output ({describe(output)}): {type(error).__name__}: {first_line(error)} "
                         "(arch.args.num_classes?)")


def fails(fn: Callable[..., Any], output: Any, target: torch.Tensor) -> Exception | None:
    """The exception `fn(output, target)` raises, or None."""
    try:
        fn(output, target)
    except Exception as exc:  # noqa: BLE001  (any failure is the answer)
        return exc
    return None


def describe(value: Any, dtype: bool = False) -> str:
    """What a value is, for a message: `Tensor(1, 10)`, `Tensor(1,) int64`, `tuple of 2: ...`."""
    if isinstance(value, torch.Tensor):
        shape = ", ".join(map(str, value.shape)) + ("," if value.dim() == 1 else "")
        return f"Tensor({shape})" + (f" {str(value.dtype).removeprefix('torch.')}" if dtype else "")
    if isinstance(value, dict):
        return f"dict of {len(value)}: " + ", ".join(f"{key} {describe(item, dtype)}" for key, item in value.items())
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}: " + ", ".join(describe(item, dtype) for item in value)
    return type(value).__name__


def is_pair(batch: Any) -> bool:
    return isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(p, torch.Tensor) for p in batch)


def sample_on_device(data_loader: Any, device: torch.device) -> Any:
    """The loader's one-sample batch on `device`, as a step receives it (through the loader's
    `device_transform`, e.g. uint8 images to normalised floats); None when the loader has no
    `sample_batch` or no samples."""
    sample_batch = getattr(data_loader, "sample_batch", None)
    sample = sample_batch() if sample_batch is not None else None
    if sample is None:
        return None
    return next(on_device([sample], data_loader, device, epoch=1))


@contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode (no dropout, no batch-norm statistics updated), without gradients and
    without its compiled forward (`trainer.compile`: a one-sample batch must not compile a graph
    of its own); every submodule's training flag and the compiled forward come back afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    compiled = getattr(model, "_compiled_call_impl", None)  # where nn.Module.compile() keeps it
    model.eval()
    if compiled is not None:
        model._compiled_call_impl = None
    try:
        with torch.no_grad():
            yield
    finally:
        if compiled is not None:
            model._compiled_call_impl = compiled
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
