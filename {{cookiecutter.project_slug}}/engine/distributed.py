"""Distributed data parallel (DDP) under torchrun: one process per device, NCCL on CUDA and
gloo on the CPU. Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE 1) every
function here is a no-op and the run is a plain single process."""

import os
from typing import Any

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed() -> torch.device | None:
    """Join the process group torchrun set up, and return this process's device (None when
    not launched by torchrun). CUDA: the GPU of LOCAL_RANK; otherwise the CPU, with gloo."""
    if not launched_by_torchrun():
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in the one process that logs and writes files (rank 0, or the only process).

    Before the process group exists (a config error is found while parsing, before
    `init_distributed`) torchrun's RANK decides, so such an error is printed once, not once per
    process. `rank()` keeps answering 0 then, to stay consistent with `world_size()`."""
    if not active() and launched_by_torchrun():
        return int(os.environ.get("RANK", "0")) == 0
    return rank() == 0


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    if active():
        dist.barrier()


def max_across_ranks(values: list[int], device: torch.device) -> list[int]:
    """The largest of each of `values` over all ranks, on every rank, in one collective (e.g. a
    signal number that reached only some of them: 0 where none did)."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all ranks (in place)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
