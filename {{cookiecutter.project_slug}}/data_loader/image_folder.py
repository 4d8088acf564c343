"""Your own images, one folder per class: `data_dir/train/<class>/*.png` to train on,
`data_dir/val/<class>/*.png` to validate on, and `data_dir/test/<class>/*.png` (or, without
it, `val`) for test.py. Any image format PIL reads works; class names are the folder names.

The class-to-label mapping is the training one: class `i` is the `i`-th of the sorted class
folders of `train/`. `val/` and `test/` are labelled with it (they may lack classes, but may
not add any), and checkpoints store it, so test.py labels the test images as training did."""

from pathlib import Path

from torchvision import datasets, transforms

from base import BaseDataLoader
from utils.errors import InputError

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class ImageFolderDataLoader(BaseDataLoader):
    """Images resized to `image_size` x `image_size` RGB. Training images are also shifted by up
    to an eighth of their size (random crop of a padded image); validation and test images are
    not. Without a `val` folder, `validation_split` of the training images validates instead.

    `classes`: the class names in label order (test.py passes those of the checkpoint); None
    takes the sorted class folders of `train/`. The mapping used is `self.classes`."""

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        image_size: int = 32,
        shuffle: bool = True,
        validation_split: float | int = 0.0,
        num_workers: int = 0,
        training: bool = True,
        classes: list[str] | None = None,
    ) -> None:
        root = Path(data_dir)
        evaluation = transforms.Compose([
            transforms.Resize((image_size, image_size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD),
        ])
        source = "the model's classes" if classes is not None else "the classes of train/"
        if training:
            augmented = transforms.Compose([
                transforms.Resize((image_size, image_size)),
                transforms.RandomCrop(image_size, padding=max(image_size // 8, 1)),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ])
            train = image_folder(root / "train", augmented, classes, source)
            self.classes: list[str] = list(train.classes)
            valid = image_folder(root / "val", evaluation, self.classes, source) if (root / "val").is_dir() else None
            super().__init__(train, batch_size, shuffle, validation_split, num_workers, valid_dataset=valid)
        else:
            self.classes = list(classes) if classes is not None else training_classes(root / "train")
            split = root / "test" if (root / "test").is_dir() else root / "val"
            super().__init__(image_folder(split, evaluation, self.classes, source), batch_size, shuffle,
                             validation_split, num_workers)


class LabelledImageFolder(datasets.ImageFolder):
    """An ImageFolder labelled with a given list of classes instead of its own sub-folders, so
    that a split lacking a class does not shift the labels of the classes after it."""

    def __init__(self, root: Path, transform: transforms.Compose, classes: list[str], source: str) -> None:
        self.given_classes, self.source = classes, source
        # a class of the mapping may have no folder (or no images) here; the split as a whole may not
        super().__init__(str(root), transform=transform, allow_empty=True)
        if not self.samples:
            raise FileNotFoundError(f"Found no valid file in any class folder of {root}")

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        found, _ = super().find_classes(directory)
        unknown = [name for name in found if name not in set(self.given_classes)]
        if unknown:
            raise InputError(
                f"config: 'data_loader.args.data_dir': class folder '{unknown[0]}' of {directory} is not among "
                f"{self.source} ({shorten(self.given_classes)}), so the model has no label for it"
            )
        return list(self.given_classes), {name: i for i, name in enumerate(self.given_classes)}


def shorten(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def training_classes(path: Path) -> list[str]:
    """The sorted class folders of `path` (train/), the label order of a model trained on it."""
    if not path.is_dir():
        raise InputError(
            f"config: 'data_loader.args.data_dir': no folder '{path}', whose class folders give the labels; "
            "evaluate a checkpoint that stores its classes, or restore train/"
        )
    try:
        return datasets.folder.find_classes(str(path))[0]
    except FileNotFoundError as exc:  # no class folders
        raise InputError(f"config: 'data_loader.args.data_dir': {path}: {exc}") from None


def image_folder(path: Path, transform: transforms.Compose, classes: list[str] | None = None,
                 source: str = "the classes of train/") -> datasets.ImageFolder:
    """The images below `path`, labelled by `classes` (from `source`, for messages) or, without
    them, by the sorted class folders of `path`; a missing or empty folder is an InputError."""
    if not path.is_dir():
        raise InputError(
            f"config: 'data_loader.args.data_dir': no folder '{path}'; expected images in {path}/<class>/"
        )
    try:
        if classes is None:
            return datasets.ImageFolder(str(path), transform=transform)
        return LabelledImageFolder(path, transform, classes, source)
    except (FileNotFoundError, ValueError) as exc:  # no class folders, or no images in them
        raise InputError(f"config: 'data_loader.args.data_dir': {path}: {exc}") from None
