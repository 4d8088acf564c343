"""The MNIST data loader, named by the `data_loader` block of config.json.

To add a dataset, copy this file to `data_loader/<your_data>.py`, rename the class, build your
`Dataset` in `__init__` and name the class in config.json's `data_loader.type`; any module of
data_loader/ is searched for it (see docs/extending.md). Say what your evaluation does to an
input in `preprocessing()` (and your class names in `self.classes`): checkpoints keep both, for
predict.py and export.py (docs/use-the-model.md).
"""

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from base import BaseDataLoader
from base.preprocessing import Preprocessing
from data_loader.mnist_files import read_idx, read_mnist
from utils.errors import InputError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# Grey 28x28 digits, normalised by the mean and std of MNIST's training pixels.
PREPROCESSING = Preprocessing(channels=1, resize_size=28, mean=(MNIST_MEAN,), std=(MNIST_STD,))
IMAGES_IDX_SUFFIX = "-idx3-ubyte"  # an IDX file of images, as MNIST's train-images-idx3-ubyte


class MnistDataLoader(BaseDataLoader):
    """MNIST (60,000 training / 10,000 test images of 28x28 digits) from `data_dir/MNIST/raw`,
    downloaded there on first use. `training=False` loads the test split (for test.py).
    Class `i` is the digit `i`: `classes` are "0" up to the largest label of the split."""

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
        images, labels = read_mnist(self.data_dir, training, download)  # uint8 (N, 28, 28), (N,)
        self.classes = [str(label) for label in range(int(labels.max()) + 1 if len(labels) else 0)]
        # Normalised once here rather than per sample through PIL and transforms at every epoch,
        # which is most of the cost of loading MNIST the usual way. A TensorDataset is also
        # fetched a whole batch at a time.
        dataset = TensorDataset(PREPROCESSING.normalise(images.unsqueeze(1)), labels.long())  # (N, 1, 28, 28)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers)

    def preprocessing(self) -> dict[str, Any]:
        return PREPROCESSING.to_dict()

    @classmethod
    def read_inputs(cls, path: Path, preprocessing: dict[str, Any]) -> torch.Tensor | None:
        """An IDX file of images (`*-idx3-ubyte`, as MNIST's own) gives all its images, turned
        into inputs as this loader turns its files; any other image file is one digit, converted
        to grey and resized to 28x28 as the preprocessing says (white digits on black, as MNIST's)."""
        if not path.name.endswith(IMAGES_IDX_SUFFIX):
            return super().read_inputs(path, preprocessing)
        described = Preprocessing.from_dict(preprocessing, f"data loader {cls.__name__}")
        if described.channels != 1:
            raise InputError(f"IDX file '{path}': holds grey images, but the model takes {described.channels} channels")
        return described.prepare(read_idx(path, ndim=3).unsqueeze(1))  # (N, 1, 28, 28)
