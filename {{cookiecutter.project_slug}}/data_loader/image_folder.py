"""Your own images, one folder per class: `data_dir/train/<class>/*.png` to train on,
`data_dir/val/<class>/*.png` to validate on, and `data_dir/test/<class>/*.png` (or, without
it, `val`) for test.py. Any format that torchvision or PIL decodes works; class names are the
folder names.

The class-to-label mapping is the training one: class `i` is the `i`-th of the sorted class
folders of `train/`. `val/` and `test/` are labelled with it (they may lack classes, but may
not add any), and checkpoints store it, so test.py labels the test images as training did.

Two ways to prepare images (`preprocessing`, docs/images.md):
  * "small" (digits, icons, thumbnails; the default): each image squashed to an `image_size`
    square; training shifts it by up to an eighth of its side (and, with `hflip`, mirrors it);
  * "photo": the aspect ratio kept. Evaluation resizes the shorter side to `resize_size` and
    takes the centre `image_size` square; training takes a random resized crop (`crop_scale`,
    `crop_ratio`, as torchvision's RandomResizedCrop) and, with `hflip`, mirrors it.

Each image is decoded and resized once into a uint8 cache (data_loader/image_files.py): for
"small" its square, for "photo" the `resize_size` square around its centre that crops are taken
from. Batches are cut from it by index, in memory (on the GPU when it fits) or from a memory map
of the cache file when it is larger than memory; the cache file is written when training first
asks for batches, so that a run refused before then writes none. The loader's
`device_transform` then turns each batch into normalised floats on the device and, for training,
crops, shifts and mirrors whole batches at once, with draws that depend only on (seed, epoch,
batch, rank), so that a resumed run sees the very batches of an uninterrupted one.
Checkpoints keep the evaluation's resizing, cropping and normalisation (`preprocessing()`),
with which `read_inputs` turns an image file into the tensor evaluation feeds the model, for
predict.py."""

import hashlib
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets

from base import BaseDataLoader
from base.preprocessing import Preprocessing, centre_crop
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

PREPROCESSING = ("small", "photo")  # the two ways to prepare images (the module docstring)
DEFAULT_MEAN = DEFAULT_STD = 0.5  # of every channel, for pixel values in [0, 1], without the model's own
# "photo": evaluation sees the centre `image_size` of images resized to `image_size / CROP_FRACTION`
# (224 of 256, as torchvision's and timm's ImageNet evaluation do)
CROP_FRACTION = 0.875
CROP_TRIES = 10  # random resized crop: boxes drawn per image before the fallback, as torchvision's

Batch = list[torch.Tensor]  # [images (B, 3, S, S), labels (B,)]
Normalisation = float | Sequence[float] | None  # `mean` or `std`: one number, one a channel, or None


class ImageFolderDataLoader(BaseDataLoader):
    """Images as RGB `image_size` squares, prepared as `preprocessing` says (the module
    docstring): "small" squashes each image to the square and, for training, shifts it by up to
    an eighth of its size (a random crop of the zero-padded image); "photo" keeps the aspect
    ratio: evaluation resizes the shorter side to `resize_size` (default `image_size / 0.875`,
    256 for 224) and takes the centre square, training takes a random crop of `crop_scale` of
    the area and aspect ratio within `crop_ratio`, resized to the square. `hflip` mirrors
    training images left-right half of the time (wrong for digits and text, so off by default).
    Without a `val` folder, `validation_split` of the training images validates instead.

    `mean`, `std`: the normalisation of each channel (a number for all, or one per channel);
    None takes the model's (`adapt_to_model`: the `normalization` of pretrained weights), or
    0.5 when it has none.
    `classes`: the class names in label order (test.py passes those of the checkpoint); None
    takes the sorted class folders of `train/`. The mapping used is `self.classes`.
    `cache_dir`: where the decoded images are cached (a relative path: from the current folder;
    the config's is made absolute when the run starts, config_schema.py); a folder
    whose images exceed image_files.CACHE_MEMORY_FRACTION of memory is read through a memory map
    of its cache file. None decodes every image every epoch instead (in `num_workers` worker
    processes). The cache files of images decoded here are written when the loader is first
    iterated. `write_cache=False` (train.py's dry run) reads a cache but writes none: folders not
    cached yet are streamed, decoding only the images loaded."""

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
        preprocessing: str = "small",
        resize_size: int | None = None,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        mean: Normalisation = None,
        std: Normalisation = None,
    ) -> None:
        check_arguments(image_size=image_size, hflip=hflip, cache_dir=cache_dir, write_cache=write_cache,
                        preprocessing=preprocessing, resize_size=resize_size, crop_scale=crop_scale,
                        crop_ratio=crop_ratio, mean=mean, std=std)
        self.photo = preprocessing == "photo"
        self.image_size, self.hflip, self.augment = image_size, hflip, training
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.padding = max(image_size // 8, 1)  # "small": the largest shift
        self.given_mean, self.given_std = mean, std
        # what evaluation does to an image: the cache's resize (and the centre crop), then the normalisation
        self.image_preprocessing = evaluation_preprocessing(self.photo, image_size, resize_size, mean, std)
        root = Path(data_dir)
        source = "the model's classes" if classes is not None else "the classes of train/"
        form = self.image_preprocessing

        def dataset(files: Files) -> Dataset:
            return image_dataset(*files, form, cache_dir, write_cache)

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

    def adapt_to_model(self, model: nn.Module) -> None:
        """Normalise as the model's pretrained weights expect (`model.normalization`: their
        (mean, std), or None) where the config gives no `mean` or `std`."""
        normalization = getattr(model, "normalization", None)
        if normalization is None:
            return
        mean, std = (tuple(float(value) for value in values) for values in normalization)
        self.image_preprocessing = replace(self.image_preprocessing,
                                           mean=self.image_preprocessing.mean if self.given_mean is not None else mean,
                                           std=self.image_preprocessing.std if self.given_std is not None else std)

    def device_transform(self, batch: Batch, epoch: int, index: int) -> Batch:
        """Batch `index` of `epoch`, on the device: uint8 images to normalised floats; training
        images randomly cropped ("photo") or shifted ("small"), and mirrored with `hflip`, first,
        by draws of a generator of their own (seed, epoch, batch, rank)."""
        if not self.augment:
            return self.evaluation_transform(batch, epoch, index)
        images, labels = batch
        generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, index, distributed.rank()))
        if self.photo:
            boxes = random_crop_boxes(len(images), images.shape[-1], self.crop_scale, self.crop_ratio, generator)
            mirrored = torch.rand(len(images), generator=generator) < 0.5 if self.hflip else None
            images = resized_crops(images, boxes, self.image_size, mirrored)
        else:
            images = random_shift(images, self.padding, self.hflip, generator)
        return [self.image_preprocessing.normalise(images), labels]

    def evaluation_transform(self, batch: Batch, epoch: int, index: int) -> Batch:
        """Validation and test batches: the centre square ("photo"), normalised."""
        images, labels = batch
        if self.photo:
            images = centre_crop(images, self.image_size)
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
        decodes it, then resized, cropped and normalised as `preprocessing` says: for a
        checkpoint of this loader, the very tensor that evaluation feeds the model for that image."""
        if not path.name.lower().endswith(datasets.folder.IMG_EXTENSIONS):
            return None
        described = Preprocessing.from_dict(preprocessing, f"data loader {cls.__name__}")
        if described.channels != 3:
            raise InputError(f"data loader {cls.__name__}: decodes RGB images, but the model takes "
                             f"{described.channels} channel(s)")
        return described.prepare(decode_image_file(path).unsqueeze(0))


def evaluation_preprocessing(photo: bool, image_size: int, resize_size: int | None, mean: Normalisation,
                             std: Normalisation) -> Preprocessing:
    """What evaluation does to an image, for the loader's arguments (`mean`, `std` None: 0.5)."""
    def per_channel(value: Normalisation) -> tuple[float, ...]:
        value = DEFAULT_MEAN if value is None else value
        return tuple(value) if isinstance(value, Sequence) else (value,) * 3

    if not photo:
        return Preprocessing(channels=3, resize_size=image_size, mean=per_channel(mean), std=per_channel(std))
    side = resize_size if resize_size is not None else round(image_size / CROP_FRACTION)
    return Preprocessing(channels=3, resize="shorter_side", resize_size=side, crop_size=image_size,
                         mean=per_channel(mean), std=per_channel(std))


def check_arguments(**given: Any) -> None:
    """This loader's own arguments (the config does not type them): an InputError naming the key."""
    def number(value: Any) -> bool:
        return type(value) in (int, float) and math.isfinite(value)

    def per_channel(value: Any, positive: bool) -> bool:
        values = value if isinstance(value, list | tuple) else [value]
        return len(values) in (1, 3) and all(number(v) and (v > 0 or not positive) for v in values)

    def interval(value: Any, upper: float | None) -> bool:
        return (isinstance(value, list | tuple) and len(value) == 2 and all(number(v) for v in value)
                and 0 < value[0] <= value[1] and (upper is None or value[1] <= upper))

    image_size, resize_size, photo = given["image_size"], given["resize_size"], given["preprocessing"] == "photo"
    whole_size = type(image_size) is int and image_size >= 1
    checks = {  # key: (valid, what it must be)
        "image_size": (whole_size, "a whole number of pixels, 1 or more"),
        "hflip": (isinstance(given["hflip"], bool), "true or false"),
        "cache_dir": (given["cache_dir"] is None or isinstance(given["cache_dir"], str), "a folder path or null"),
        "write_cache": (isinstance(given["write_cache"], bool), "true or false"),
        "preprocessing": (given["preprocessing"] in PREPROCESSING, f"one of {', '.join(map(repr, PREPROCESSING))}"),
        "resize_size": (resize_size is None or (photo and whole_size and type(resize_size) is int
                                                and resize_size >= image_size),
                        "null, or with preprocessing 'photo' a whole number of pixels, at least image_size"),
        "crop_scale": (interval(given["crop_scale"], 1.0), "two fractions of the image's area, [low, high] in (0, 1]"),
        "crop_ratio": (interval(given["crop_ratio"], None), "two aspect ratios (width / height), [low, high] above 0"),
        "mean": (given["mean"] is None or per_channel(given["mean"], False), "null, a number or 3 numbers"),
        "std": (given["std"] is None or per_channel(given["std"], True), "null, a number or 3 numbers, above 0"),
    }
    for key, (valid, expected) in checks.items():
        if not valid:
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


def random_crop_boxes(count: int, side: int, scale: Sequence[float], ratio: Sequence[float],
                      generator: torch.Generator) -> torch.Tensor:
    """`count` crop boxes (top, left, height, width) of a `side` x `side` image, int64 (count, 4),
    drawn as torchvision's RandomResizedCrop draws one: an area of `scale` (fractions of the
    image's) and a log-uniform aspect ratio (width / height) within `ratio`, CROP_TRIES times,
    the first box that fits kept, at a uniform position; without one, the largest centred box
    of the nearest allowed ratio. All the draws at once, from `generator`, in float64 on the CPU."""
    area = side * side
    draws = torch.rand(2, count, CROP_TRIES, generator=generator, dtype=torch.float64)
    areas = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspects = torch.exp(log_low + (log_high - log_low) * draws[1])
    widths = torch.sqrt(areas * aspects).round().long()  # (count, tries)
    heights = torch.sqrt(areas / aspects).round().long()
    fits = (widths > 0) & (widths <= side) & (heights > 0) & (heights <= side)
    first = fits.long().argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    found = fits.any(1)
    fallback_width, fallback_height = fallback_box(side, ratio)
    width = torch.where(found, widths.gather(1, first)[:, 0], fallback_width)
    height = torch.where(found, heights.gather(1, first)[:, 0], fallback_height)
    place = torch.rand(2, count, generator=generator, dtype=torch.float64)
    top = torch.where(found, (place[0] * (side - height + 1)).floor().long(), (side - height) // 2)
    left = torch.where(found, (place[1] * (side - width + 1)).floor().long(), (side - width) // 2)
    return torch.stack([top, left, height, width], dim=1)


def fallback_box(side: int, ratio: Sequence[float]) -> tuple[int, int]:
    """(width, height) of the largest box of a square image whose aspect ratio is within `ratio`."""
    if ratio[0] > 1:
        return side, round(side / ratio[0])
    if ratio[1] < 1:
        return round(side * ratio[1]), side
    return side, side


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int,
                  mirrored: torch.Tensor | None = None) -> torch.Tensor:
    """Each image (B, C, S, S) cut to its box (top, left, height, width: `boxes` (B, 4) on the
    CPU) and resized to `size` x `size`, bilinearly (not antialiased), then, where `mirrored`
    (B,) says, mirrored left-right: float32 (B, C, size, size) in the images' range, on their
    device. One `grid_sample` for the whole batch: each output pixel samples the crop where a
    resize of the crop alone would (pixel centres aligned, positions clamped to the crop), so an
    image equals torchvision's `resized_crop(..., antialias=False)` of its box."""
    side = images.shape[-1]
    top, left, height, width = boxes.to(torch.float64).unbind(1)  # (B,) each
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    rows = (top[:, None] + centres * (height / size)[:, None] - 0.5).clamp(min=top[:, None])  # (B, size)
    rows = torch.minimum(rows, (top + height - 1)[:, None])
    columns = (left[:, None] + centres * (width / size)[:, None] - 0.5).clamp(min=left[:, None])
    columns = torch.minimum(columns, (left + width - 1)[:, None])
    if mirrored is not None:
        columns = torch.where(mirrored[:, None], columns.flip(1), columns)
    # grid_sample's coordinates (align_corners=False): pixel p of `side` is at (2p + 1) / side - 1
    grid = torch.stack(torch.broadcast_tensors(((2 * columns + 1) / side - 1)[:, None, :],
                                               ((2 * rows + 1) / side - 1)[:, :, None]), dim=-1)  # (B, size, size, 2)
    grid = grid.to(device=images.device, dtype=torch.float32)
    return F.grid_sample(images.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False)


def image_dataset(folder: Path, files: list[tuple[Path, int]], classes: list[str], form: Preprocessing,
                  cache_dir: str | None, write_cache: bool = True) -> Dataset:
    """The images of `folder` in their stored `form`, decoded once (their cache file pending), or
    read from the cache: in memory, or mapped from the cache file when they are too many for
    memory. Streamed (decoded every time) when `cache_dir` is None or, without `write_cache`,
    when they are not cached yet."""
    paths, labels = [path for path, _ in files], [label for _, label in files]
    if cache_dir is None:
        return StreamedImages(paths, labels, classes, form)
    cache = Path(cache_dir).expanduser()
    in_memory = fits_in_memory(len(paths), form.resize_size)
    if write_cache:
        images, pending, mapped = cached_images(folder, paths, form, cache, in_memory)
        return CachedImages(images, labels, classes, pending, mapped)
    cached, mapped = read_cache(folder, paths, form, cache, in_memory)  # e.g. a dry run, which loads two batches
    if cached is None:
        return StreamedImages(paths, labels, classes, form)
    return CachedImages(cached, labels, classes, mapped=mapped)


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
