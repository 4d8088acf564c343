"""Your own images, one folder per class: `data_dir/train/<class>/*.png` to train on,
`data_dir/val/<class>/*.png` to validate on, and `data_dir/test/<class>/*.png` (or, without
it, `val`) for test.py. Any image format PIL reads works; class names are the folder names."""

from pathlib import Path

from torchvision import datasets, transforms

from base import BaseDataLoader
from utils.errors import InputError

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class ImageFolderDataLoader(BaseDataLoader):
    """Images resized to `image_size` x `image_size` RGB. Training images are also shifted by up
    to an eighth of their size (random crop of a padded image); validation and test images are
    not. Without a `val` folder, `validation_split` of the training images validates instead."""

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        image_size: int = 32,
        shuffle: bool = True,
        validation_split: float | int = 0.0,
        num_workers: int = 0,
        training: bool = True,
    ) -> None:
        root = Path(data_dir)
        evaluation = transforms.Compose([
            transforms.Resize((image_size, image_size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD),
        ])
        if training:
            augmented = transforms.Compose([
                transforms.Resize((image_size, image_size)),
                transforms.RandomCrop(image_size, padding=max(image_size // 8, 1)),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ])
            train = image_folder(root / "train", augmented)
            valid = image_folder(root / "val", evaluation) if (root / "val").is_dir() else None
            super().__init__(train, batch_size, shuffle, validation_split, num_workers, valid_dataset=valid)
        else:
            split = root / "test" if (root / "test").is_dir() else root / "val"
            super().__init__(image_folder(split, evaluation), batch_size, shuffle, validation_split, num_workers)
        self.classes: list[str] = self.dataset.classes  # type: ignore[attr-defined]


def image_folder(path: Path, transform: transforms.Compose) -> datasets.ImageFolder:
    """torchvision's ImageFolder over `path`; a missing or empty folder is an InputError."""
    if not path.is_dir():
        raise InputError(
            f"config: 'data_loader.args.data_dir': no folder '{path}'; expected images in {path}/<class>/"
        )
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, ValueError) as exc:  # no class folders, or no images in them
        raise InputError(f"config: 'data_loader.args.data_dir': {path}: {exc}") from None
