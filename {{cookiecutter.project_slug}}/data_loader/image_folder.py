"""Your own images, one folder per class: `data_dir/train/<class>/*.png` to train on,
`data_dir/val/<class>/*.png` to validate on, and `data_dir/test/<class>/*.png` (or, without
it, `val`) for test.py. Any format that torchvision or PIL decodes works; class names are the
folder names.

The class-to-label mapping is the training one: class `i` is the `i`-th of the sorted class
folders of `train/`. `val/` and `test/` are labelled with it (they may lack classes, but may
not add any), and checkpoints store it, so test.py labels the test images as training did.

Each image is decoded and resized once, into a uint8 cache (data_loader/image_files.py), so
that batches are cut from one tensor in memory (on the GPU when it fits); the cache file is
written when training first asks for batches, so that a run refused before then writes none.
The loader's `device_transform` then turns each batch into normalised floats on the device and,
for training, shifts (and, with `hflip`, mirrors) its images at random, with draws that depend
only on (seed, epoch, batch), so that a resumed run sees the very batches of an uninterrupted one.
Checkpoints keep the evaluation's resizing and normalisation (`preprocessing()`), with which
`read_inputs` turns an image file into the tensor evaluation feeds the model, for predict.py."""

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets

from base import BaseDataLoader
from base.preprocessing import Preprocessing
from data_loader.image_files import (
    CachedImages,
    StreamedImages,
    cached_images,
    decode_image_file,
    fits_in_memory,
    read_cache,
)
from engine import distributed
from utils.errors import InputError, listed

MEAN, STD = 0.5, 0.5  # of every channel, for pixel values in [0, 1]

Batch = list[torch.Tensor]  # [images (B, 3, S, S), labels (B,)]


class ImageFolderDataLoader(BaseDataLoader):
    """Images resized to `image_size` x `image_size` RGB. Training images are also shifted by up
    to an eighth of their size (a random crop of the zero-padded image) and, with `hflip`,
    mirrored left-right half of the time (wrong for digits and text, so off by default);
    validation and test images are not. Without a `val` folder, `validation_split` of the
    training images validates instead.

    `classes`: the class names in label order (test.py passes those of the checkpoint); None
    takes the sorted class folders of `train/`. The mapping used is `self.classes`.
    `cache_dir`: where the decoded images are cached (a relative path: from the current folder;
    the config's is made absolute when the run starts, config_schema.py); None
    decodes every image every epoch instead, as folders too large for memory always are
    (image_files.CACHE_MEMORY_FRACTION). `num_workers` only helps those: cached batches are cut
    from memory in the training process. The cache files of images decoded here are written
    when the loader is first iterated. `write_cache=False` (train.py's dry run) reads a cache
    but writes none: folders not cached yet are streamed, decoding only the images loaded."""

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
        hflip: bool = False,
        cache_dir: str | None = "cache/",
        write_cache: bool = True,
    ) -> None:
        check_arguments(image_size=image_size, hflip=hflip, cache_dir=cache_dir, write_cache=write_cache)
        # what evaluation does to an image: the cache's square resize, then `device_transform`'s normalisation
        self.image_preprocessing = Preprocessing(channels=3, resize_size=image_size, mean=(MEAN,) * 3, std=(STD,) * 3)
        root = Path(data_dir)
        self.augment, self.hflip, self.padding = training, hflip, max(image_size // 8, 1)
        source = "the model's classes" if classes is not None else "the classes of train/"

        def dataset(files: Files) -> Dataset:
            return image_dataset(*files, image_size, cache_dir, write_cache)

        if training:
            train = labelled_files(root / "train", classes, source)
            self.classes: list[str] = train[2]
            valid = labelled_files(root / "val", self.classes, source) if (root / "val").is_dir() else None
            super().__init__(dataset(train), batch_size, shuffle, validation_split, num_workers,
                             valid_dataset=dataset(valid) if valid else None)
        else:
            self.classes = list(classes) if classes is not None else training_classes(root / "train")
            split = root / "test" if (root / "test").is_dir() else root / "val"
            files = labelled_files(split, self.classes, source)
            super().__init__(dataset(files), batch_size, shuffle, validation_split, num_workers)

    def __iter__(self) -> Any:
        """The batches; the first time, the cache files of the images decoded while building are
        written (the run got past every check, so it is training or evaluating)."""
        for dataset in (self.dataset, self.valid_dataset):
            if isinstance(dataset, CachedImages):
                dataset.write_cache()
        return super().__iter__()

    def device_transform(self, batch: Batch, epoch: int, index: int) -> Batch:
        """Batch `index` of `epoch`, on the device: uint8 images to normalised floats, training
        images randomly shifted (and mirrored) first, by draws of their own generator."""
        images, labels = batch
        if self.augment:
            seed = batch_seed(self.seed, epoch, index, distributed.rank())
            images = random_shift(images, self.padding, self.hflip, torch.Generator().manual_seed(seed))
        return [self.image_preprocessing.normalise(images), labels]

    def evaluation_transform(self, batch: Batch, epoch: int, index: int) -> Batch:
        """Validation batches: normalised, not augmented."""
        images, labels = batch
        return [self.image_preprocessing.normalise(images), labels]

    def split_validation(self) -> DataLoader | None:
        loader = super().split_validation()
        if loader is not None:
            loader.device_transform = self.evaluation_transform  # type: ignore[method-assign]
        return loader

    def preprocessing(self) -> dict[str, Any]:
        return self.image_preprocessing.to_dict()

    @classmethod
    def read_inputs(cls, path: Path, preprocessing: dict[str, Any]) -> torch.Tensor | None:
        """An image file of any format the image folders may hold, decoded as the image cache
        decodes it, then resized and normalised as `preprocessing` says: for a checkpoint of this
        loader, the very tensor that evaluation feeds the model for that image."""
        if not path.name.lower().endswith(datasets.folder.IMG_EXTENSIONS):
            return None
        described = Preprocessing.from_dict(preprocessing, f"data loader {cls.__name__}")
        if described.channels != 3:
            raise InputError(f"data loader {cls.__name__}: decodes RGB images, but the model takes "
                             f"{described.channels} channel(s)")
        return described.prepare(decode_image_file(path).unsqueeze(0))


def check_arguments(image_size: object, hflip: object, cache_dir: object, write_cache: object) -> None:
    """This loader's own arguments (the config does not type them): an InputError naming the key."""
    problems = {
        "image_size": None if type(image_size) is int and image_size >= 1 else "a whole number of pixels, 1 or more",
        "hflip": None if isinstance(hflip, bool) else "true or false",
        "cache_dir": None if cache_dir is None or isinstance(cache_dir, str) else "a folder path or null",
        "write_cache": None if isinstance(write_cache, bool) else "true or false",
    }
    given = {"image_size": image_size, "hflip": hflip, "cache_dir": cache_dir, "write_cache": write_cache}
    for key, expected in problems.items():
        if expected is not None:
            raise InputError(f"config: 'data_loader.args.{key}' must be {expected}, got {given[key]!r}")


def batch_seed(*parts: int) -> int:
    """A seed that depends on every one of `parts` (seed, epoch, batch, rank), unrelated for
    neighbouring values."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def random_shift(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """`images` (B, C, H, W), each shifted by its own offsets in [-padding, padding] down and
    right, the uncovered border 0 (a random crop of the zero-padded image), and with `hflip` each
    mirrored left-right with probability 1/2. One gather for the whole batch; the draws come
    from `generator` on the CPU, so they are the same on every device."""
    count, channels, height, width = images.shape
    device = images.device  # the draws are made on the CPU, the index is built where the images are
    offsets = torch.randint(0, 2 * padding + 1, (2, count, 1), generator=generator).to(device)
    columns = torch.arange(width, device=device).expand(count, width)
    if hflip:
        mirrored = (torch.rand(count, 1, generator=generator) < 0.5).to(device)
        columns = torch.where(mirrored, columns.flip(1), columns)
    rows = offsets[0] + torch.arange(height, device=device)  # (B, H) rows of the padded image
    columns = offsets[1] + columns  # (B, W)
    padded_width = width + 2 * padding
    pixels = (rows[:, :, None] * padded_width + columns[:, None, :]).view(count, 1, height * width)
    padded = F.pad(images, (padding, padding, padding, padding)).flatten(2)  # (B, C, (H + 2p) * (W + 2p))
    picked = padded.gather(2, pixels.expand(count, channels, height * width))
    return picked.view(count, channels, height, width)


def image_dataset(folder: Path, files: list[tuple[Path, int]], classes: list[str], size: int,
                  cache_dir: str | None, write_cache: bool = True) -> Dataset:
    """The images of `folder` decoded once (their cache file pending), or read from the cache;
    streamed when they are too many for memory or `cache_dir` is None, or when, without
    `write_cache`, they are not cached yet."""
    paths, labels = [path for path, _ in files], [label for _, label in files]
    if cache_dir is None or not fits_in_memory(len(paths), size):
        return StreamedImages(paths, labels, classes, size)
    cache = Path(cache_dir).expanduser()
    if write_cache:
        images, pending = cached_images(folder, paths, size, cache)
        return CachedImages(images, labels, classes, pending)
    cached = read_cache(folder, paths, size, cache)  # e.g. a dry run, which loads two batches
    return StreamedImages(paths, labels, classes, size) if cached is None else CachedImages(cached, labels, classes)


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


Files = tuple[Path, list[tuple[Path, int]], list[str]]  # (folder, [(image, label)], classes)


def labelled_files(path: Path, classes: list[str] | None = None, source: str = "the classes of train/") -> Files:
    """The images below `path`, labelled by `classes` (from `source`, for messages) or, without
    them, by the sorted class folders of `path`. A missing or empty folder, or a class folder
    that `classes` lacks, is an InputError."""
    if not path.is_dir():
        raise InputError(
            f"config: 'data_loader.args.data_dir': no folder '{path}'; expected images in {path}/<class>/"
        )
    try:
        found = datasets.folder.find_classes(str(path))[0]
        unknown = [name for name in found if classes is not None and name not in set(classes)]
        if unknown:
            raise InputError(
                f"config: 'data_loader.args.data_dir': class folder '{unknown[0]}' of {path} is not among "
                f"{source} ({listed(classes or [])}), so the model has no label for it"
            )
        labels = list(classes) if classes is not None else found
        # a class of a given mapping may have no folder (or no images) here; the split as a whole may not
        files = datasets.folder.make_dataset(str(path), {name: i for i, name in enumerate(labels)},
                                             datasets.folder.IMG_EXTENSIONS, allow_empty=classes is not None)
        if not files:
            raise FileNotFoundError(f"Found no valid file in any class folder of {path}")
    except (FileNotFoundError, ValueError) as exc:  # no class folders, or no images in them
        raise InputError(f"config: 'data_loader.args.data_dir': {path}: {exc}") from None
    return path, [(Path(file), label) for file, label in files], labels
