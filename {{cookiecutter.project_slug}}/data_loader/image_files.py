"""Image files as uint8 tensors for data_loader/image_folder.py: each image decoded and resized
once into a cache file (in the project's cache/ folder, not beside the images, which may be
read-only), or, for folders whose images would not fit in memory, decoded each time it is loaded.

A cache file is keyed by the path, size and modification time of every image, in order, and by
the image size: a changed, added or removed image, or another `image_size`, makes a new one
(and the old one of that folder is deleted)."""

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms.v2 import functional
from tqdm import tqdm

from utils import distributed
from utils.errors import InputError, first_line

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; while they exist they
# are the fastest way from file bytes to a uint8 tensor, and PIL decodes everything once they go.
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)
try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:
    decode_image = None

CACHE_FORMAT = 1  # part of every key: a change of how images are decoded invalidates old caches

# A folder is cached in memory when its decoded images (3 x image_size^2 bytes each, once per
# process of a DDP run) take at most this fraction of the machine's memory; above it, its images
# are streamed: decoded and resized every epoch, in `num_workers` worker processes.
CACHE_MEMORY_FRACTION = 0.25


def read_image(path: Path, size: int) -> torch.Tensor:
    """The image at `path` as uint8 RGB resized to (3, size, size): torchvision's decoders (PNG,
    JPEG, WebP, ...), PIL for the formats they cannot read. An InputError naming the file when
    neither can decode it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    if not raw:  # e.g. left by a failed download
        raise InputError(f"image {path} cannot be decoded (the file is empty); replace or remove it")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    try:
        if decode_image is None:
            raise RuntimeError("no torchvision decoders")
        image = decode_image(data, ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision cannot decode (BMP, TIFF, ...), or a broken file
        image = _read_with_pil(path)
    if image.dtype != torch.uint8:  # 16-bit PNGs
        image = functional.to_dtype(image, torch.uint8, scale=True)
    if image.shape[-2:] != (size, size):
        image = functional.resize(image, [size, size], antialias=True)
    return image


def _read_with_pil(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...) for broken files
        raise InputError(f"image {path} cannot be decoded ({first_line(exc)}); replace or remove it") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


class CachedImages(TensorDataset):
    """The images of a folder decoded once: tensors (N, 3, S, S) uint8 and (N,) int64 labels."""

    def __init__(self, images: torch.Tensor, labels: list[int], classes: list[str]) -> None:
        super().__init__(images, torch.tensor(labels, dtype=torch.long))
        self.targets, self.classes = labels, classes


class StreamedImages(Dataset):
    """The images of a folder too large for memory, decoded each time a sample is loaded."""

    def __init__(self, paths: list[Path], labels: list[int], classes: list[str], size: int) -> None:
        self.paths, self.targets, self.classes, self.size = paths, labels, classes, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.paths[index], self.size), self.targets[index]


def fits_in_memory(count: int, size: int) -> bool:
    """Whether `count` decoded images of side `size` fit within CACHE_MEMORY_FRACTION."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on Linux or macOS: cache
        return True
    return count * 3 * size * size * distributed.world_size() <= CACHE_MEMORY_FRACTION * memory


def cached_images(folder: Path, paths: list[Path], size: int, cache_dir: Path) -> torch.Tensor:
    """The images at `paths` (those of `folder`) as one (N, 3, size, size) uint8 tensor, read
    from `cache_dir` when a cache file of exactly these files exists, else decoded and written
    there. Under DDP rank 0 decodes while the others wait, then they read its file (or decode
    themselves, on a machine that does not share the cache folder)."""
    key = cache_key(paths, size)
    file = cache_dir / f"images-{hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:12]}-{key[:16]}.pt"
    images, error = None, None
    if distributed.is_main():
        try:
            images = _load(file, key) if file.is_file() else None
            if images is None:
                images = decode_all(folder, paths, size, cache_dir)
                _save(images, key, file)
        except InputError as exc:
            error = str(exc)
    error = distributed.broadcast(error)  # the other ranks wait here until rank 0 is done
    if error is not None:
        raise InputError(error)
    if images is None:
        images = _load(file, key) if file.is_file() else None
    if images is None:  # a machine that does not share rank 0's cache folder
        images = decode_all(folder, paths, size, cache_dir)
        _save(images, key, file)
    return images


def cache_key(paths: list[Path], size: int) -> str:
    stats = [(str(path.absolute()), *_size_and_time(path)) for path in paths]
    return hashlib.sha256(json.dumps([CACHE_FORMAT, size, stats]).encode()).hexdigest()


def _size_and_time(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    return stat.st_size, stat.st_mtime_ns


def decode_all(folder: Path, paths: list[Path], size: int, cache_dir: Path) -> torch.Tensor:
    """Every image decoded, with a progress bar (rank 0 alone) when it takes over a second."""
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    bar = tqdm(paths, desc=f"decoding {folder} once into {cache_dir}", unit="image", delay=1.0,
               leave=False, disable=not distributed.is_main(), mininterval=0.5, dynamic_ncols=True)
    with bar:
        for index, path in enumerate(bar):
            images[index] = read_image(path, size)
    return images


def _load(file: Path, key: str) -> torch.Tensor | None:
    """The images of a cache file, None when it is not of `key` or cannot be read (rebuilt)."""
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # truncated, foreign or from another torch: decode again
        return None
    return saved["images"] if isinstance(saved, dict) and saved.get("key") == key else None


def _save(images: torch.Tensor, key: str, file: Path) -> None:
    """Write atomically (temp file, then rename), then delete older caches of the same folder."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"config: 'data_loader.args.cache_dir': cannot write the image cache into {file.parent}: "
                         f"{exc.strerror or exc}; give a writable folder, or null to decode every epoch") from None
    try:
        with os.fdopen(fd, "wb") as tmp:
            torch.save({"key": key, "images": images}, tmp)
        os.replace(name, file)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    stem = file.name.rsplit("-", 1)[0]
    for old in file.parent.glob(f"{stem}-*.pt"):
        if old != file:
            old.unlink(missing_ok=True)
