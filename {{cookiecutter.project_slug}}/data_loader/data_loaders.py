"""Data loaders, named by the `data_loader` block of config.json."""

import contextlib
import io
import logging
import shutil
from pathlib import Path

from torch.utils.data import TensorDataset
from torchvision import datasets

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
    mnist = datasets.MNIST(str(root), train=train, download=False)
    images = mnist.data.float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    return TensorDataset(images, mnist.targets)


def _download(root: Path) -> str:
    """Download MNIST into `root`; returns why it failed ('' on success). A failed download
    removes the folders and partial files it made, so a failed run leaves nothing behind."""
    logger.info("Downloading MNIST into %s ...", root)
    existed = _existing_paths(root)
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
