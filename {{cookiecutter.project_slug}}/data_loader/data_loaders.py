"""Data loaders, named by the `data_loader` block of config.json."""

import contextlib
import io
import logging
import math
import shutil
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from base import BaseDataLoader
from utils.errors import InputError

logger = logging.getLogger(__name__)

MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class MnistDataLoader(BaseDataLoader):
    """MNIST (60,000 training / 10,000 test images of 28x28 digits) from `data_dir/MNIST/raw`,
    downloaded there on first use. `training=False` loads the test split (for test.py)."""

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        shuffle: bool = True,
        validation_split: float | int = 0.0,
        num_workers: int = 0,
        training: bool = True,
        download: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        dataset = load_mnist(self.data_dir, training, download)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers)


def load_mnist(root: Path, train: bool, download: bool) -> TensorDataset:
    """One MNIST split as a TensorDataset of normalised images (N, 1, 28, 28) and labels (N,).

    The images are decoded and normalised once here, instead of per sample through PIL and
    transforms at every epoch, which is most of the cost of loading MNIST the usual way.
    """
    if root.exists() and not root.is_dir():
        raise InputError(f"config: 'data_loader.args.data_dir' is '{root}', which is a file, not a folder")
    raw = root / "MNIST" / "raw"
    needed = [name for names in MNIST_FILES.values() for name in names]
    missing = [name for name in needed if not (raw / name).is_file()]
    if missing:
        problem = _download(root) if download else "download is off (a dry run downloads nothing)"
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
    images = images.float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    return TensorDataset(images, labels.long())


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes (the format of the MNIST files) as a uint8 tensor.

    Read directly rather than through torchvision, whose import alone takes seconds; torchvision
    is only imported to download.
    """
    data = path.read_bytes()
    header = 4 + 4 * ndim
    magic = int.from_bytes(data[:4], "big")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) < header or magic != 0x0800 + ndim or len(data) != header + math.prod(shape):
        raise InputError(f"MNIST file '{path}' is damaged or not an uncompressed {ndim}-d IDX file of bytes")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _download(root: Path) -> str:
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
