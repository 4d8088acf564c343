"""The one place that decides which device the run uses."""

import logging

import torch

logger = logging.getLogger(__name__)


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
