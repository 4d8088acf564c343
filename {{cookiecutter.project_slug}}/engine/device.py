"""The one place that decides the device and the distributed rank of a process, and how the
model and the batches get there."""

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from engine import distributed
from utils.errors import InputError, first_line

logger = logging.getLogger(__name__)


def setup_device(n_gpu: int, deterministic: bool = False) -> tuple[torch.device, list[int]]:
    """The device this process computes on, and the GPU ids for DataParallel (empty unless
    `n_gpu` > 1 in a single process). Under torchrun: joins the process group, one device per
    process; otherwise `n_gpu` GPUs, or the CPU. train.py and test.py both start here.
    `deterministic`: see `set_deterministic`."""
    set_deterministic(deterministic)
    ddp_device = distributed.init_distributed()  # None unless launched by torchrun
    if ddp_device is not None:
        return ddp_device, []
    return prepare_device(n_gpu)


def prepare_device(n_gpu: int) -> tuple[torch.device, list[int]]:
    """Return the device to train on and the GPU ids for DataParallel.

    `n_gpu` is the number of GPUs asked for in the config. Asking for more than exist
    warns and uses what exists; asking for none, or having none, gives the CPU.
    """
    available = torch.cuda.device_count()
    if n_gpu > 0 and available == 0:
        logger.warning("n_gpu is %d but no CUDA GPU is available: running on the CPU.", n_gpu)
        n_gpu = 0
    elif n_gpu > available:
        logger.warning("n_gpu is %d but only %d GPU(s) are available: using %d.", n_gpu, available, available)
        n_gpu = available
    device = torch.device("cuda:0" if n_gpu > 0 else "cpu")
    return device, list(range(n_gpu))


def wrap_model(model: nn.Module, device: torch.device, device_ids: list[int]) -> nn.Module:
    """`model` as training runs it: in DistributedDataParallel under torchrun, in DataParallel
    for several GPUs in one process, else as it is."""
    if distributed.active():
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if len(device_ids) > 1:  # torchrun is the faster way
        return nn.DataParallel(model, device_ids=device_ids)
    return model


def move_to(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (also inside tuples, lists and dicts) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to(value, device) for value in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def on_device(batches: Iterable[Any], loader: Any, device: torch.device, epoch: int, first: int = 0) -> Iterator[Any]:
    """`batches` (of `loader`, the first being its batch number `first` of `epoch`) on `device`,
    through the loader's `device_transform` if it has one. Each batch's copy to the device is
    started (asynchronously from pinned memory) before the previous batch is handed on, so that
    it overlaps that batch's computation."""
    transform = getattr(loader, "device_transform", None)
    ready = None
    for index, batch in enumerate(batches, start=first):
        moved = move_to(batch, device)
        if ready is not None:
            yield ready
        ready = moved if transform is None else transform(moved, epoch, index)
    if ready is not None:
        yield ready


def keep_on_device(loader: Any, device: torch.device) -> None:
    """Let `loader` serve its batches from the device when it can (BaseDataLoader's in-memory
    datasets: see engine/batches.py); other loaders are left as they are."""
    if hasattr(loader, "keep_on"):
        loader.keep_on(device)


def set_deterministic(enabled: bool) -> None:
    """`trainer.deterministic`: only deterministic algorithms (an operation that has none
    raises), cuDNN's deterministic convolutions without benchmarking, and cuBLAS's
    deterministic workspace, so that a resumed GPU run can equal a straight one bitwise.
    Off: PyTorch's defaults (on the CPU, runs are reproducible either way)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: set before
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False


def compile_model(model: nn.Module, device: torch.device) -> None:
    """`trainer.compile`: compile `model`'s forward with torch.compile, in place, so that its
    parameter names (and so the checkpoints) stay those of the plain model. An InputError
    names what is missing where this platform cannot compile."""
    reason = cannot_compile(device)
    if reason is not None:
        raise InputError(f"config: 'trainer.compile': torch.compile cannot run here: {reason}; "
                         "set trainer.compile to false")
    model.compile()


def cannot_compile(device: torch.device) -> str | None:
    """Why torch.compile's default backend cannot compile for `device` here; None if it can."""
    import torch._dynamo  # only when asked for: importing the compiler takes a while

    if not torch._dynamo.is_dynamo_supported():
        return "this Python or platform is not supported by TorchDynamo"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton, which it needs on a GPU, is not installed"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001  (its own error class differs between versions)
        return f"no C++ compiler for the CPU ({first_line(exc)})"
    return None
