"""The MNIST data loader, named by the `data_loader` block of config.json.

To add a dataset, copy this file to `data_loader/<your_data>.py`, rename the class, build your
`Dataset` in `__init__` and name the class in config.json's `data_loader.type`; any module of
data_loader/ is searched for it (see docs/extending.md).
"""

from pathlib import Path

from torch.utils.data import TensorDataset

from base import BaseDataLoader
from data_loader.mnist_files import read_mnist

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
        images, labels = read_mnist(self.data_dir, training, download)  # uint8 (N, 28, 28), (N,)
        # Normalised once here rather than per sample through PIL and transforms at every epoch,
        # which is most of the cost of loading MNIST the usual way. A TensorDataset is also
        # fetched a whole batch at a time.
        images = images.float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)  # (N, 1, 28, 28)
        dataset = TensorDataset(images, labels.long())
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers)
