"""The MNIST files: finding them in `data_dir/MNIST/raw`, downloading them there when missing,
and reading their IDX format. Not a data loader: `MnistDataLoader` in data_loaders.py uses it."""

import contextlib
import io
import logging
import math
import shutil
from pathlib import Path

import torch

from utils.errors import InputError

logger = logging.getLogger(__name__)

# The image and label files of each split, keyed by `train`.
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_mnist(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One MNIST split from `root/MNIST/raw`: images (N, 28, 28) and labels (N,), both uint8.

    Missing files are downloaded first when `download` is set; files still missing, damaged
    files and a `root` that is a file are InputErrors, each one line naming the path.
    """
    if root.exists() and not root.is_dir():
        raise InputError(f"config: 'data_loader.args.data_dir' is '{root}', which is a file, not a folder")
    raw = root / "MNIST" / "raw"
    needed = [name for names in MNIST_FILES.values() for name in names]
    missing = [name for name in needed if not (raw / name).is_file()]
    if missing:
        problem = download_mnist(root) if download else "download is off (a dry run downloads nothing)"
        missing = [name for name in needed if not (raw / name).is_file()]
        if missing:
            raise InputError(
                f"MNIST not found in '{raw}': missing {', '.join(missing)} ({problem}); "
                "put the four uncompressed MNIST files there, or run once with network access"
            )
    images_file, labels_file = MNIST_FILES[train]
    images, labels = read_idx(raw / images_file, ndim=3), read_idx(raw / labels_file, ndim=1)
    if len(images) != len(labels):
        raise InputError(f"MNIST files in '{raw}': {len(images)} images in {images_file} but {len(labels)} labels")
    return images, labels


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes (the format of the MNIST files) as a uint8 tensor.

    Read directly rather than through torchvision, whose import alone takes seconds; torchvision
    is only imported to download.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"MNIST file '{path}' cannot be read ({exc.strerror or exc})") from None
    header = 4 + 4 * ndim
    magic = int.from_bytes(data[:4], "big")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) < header or magic != 0x0800 + ndim or len(data) != header + math.prod(shape):
        raise InputError(f"MNIST file '{path}' is damaged or not an uncompressed {ndim}-d IDX file of bytes")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def download_mnist(root: Path) -> str:
    """Download MNIST into `root`; returns why it failed ('' on success). A failed download
    removes the folders and partial files it made, so a failed run leaves nothing behind."""
    logger.info("Downloading MNIST into %s ...", root)
    existed = _existing_paths(root)
    from torchvision import datasets  # slow to import, and only needed here

    chatter = io.StringIO()  # torchvision prints every mirror it tries
    try:
        with contextlib.redirect_stdout(chatter):
            datasets.MNIST(str(root), train=True, download=True)
    except Exception as exc:  # no network, a proxy, a full disk: all end the same way for the user
        for path in sorted(_existing_paths(root) - existed, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        reason = " ".join(str(exc).split())
        # torchvision lists every mirror it tried; the last error says enough
        return f"download failed: {reason.rpartition('got: ')[2][:200]}"
    return ""


def _existing_paths(root: Path) -> set[Path]:
    """`root` and those of its parents that exist, and everything below `root`."""
    chain = {path for path in (root, *root.parents) if path.exists()}
    return chain | (set(root.rglob("*")) if root.is_dir() else set())
