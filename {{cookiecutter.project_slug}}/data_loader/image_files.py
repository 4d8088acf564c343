"""Image files as uint8 tensors for data_loader/image_folder.py: each image decoded and resized
once into a cache file (in the project's cache/ folder, not beside the images, which may be
read-only), or, for folders whose images would not fit in memory, decoded each time it is loaded.

A cache file is keyed by the path, size and modification time of every image, in order, and by
the image size: a changed, added or removed image, or another `image_size`, makes a new one
(and the old one of that folder is deleted). It is written when the images are first served
(`CachedImages.write_cache`), not when they are decoded: a run refused while it is being built
leaves no cache file behind, and a dry run writes none. A stop signal ends the decoding within
an image."""

import contextlib
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms.v2 import functional
from tqdm import tqdm

from engine import distributed
from engine.signals import stop_request
from utils.errors import InputError, TrainingInterrupted, first_line
from utils.staged_files import temp_file_beside

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; while they exist they
# are the fastest way from file bytes to a uint8 tensor, and PIL decodes everything once they go.
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)
try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:
    decode_image = None

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # part of every key: a change of how images are decoded invalidates old caches

# A folder is cached in memory when its decoded images (3 x image_size^2 bytes each, once per
# process of a DDP run) take at most this fraction of the machine's memory; above it, its images
# are streamed: decoded and resized every epoch, in `num_workers` worker processes.
CACHE_MEMORY_FRACTION = 0.25


def read_image(path: Path, size: int) -> torch.Tensor:
    """The image at `path` as uint8 RGB resized to (3, size, size) (`decode_image_file`). An
    InputError naming the file when it cannot be decoded."""
    image = decode_image_file(path)
    if image.shape[-2:] != (size, size):
        image = functional.resize(image, [size, size], antialias=True)
    return image


def decode_image_file(path: Path) -> torch.Tensor:
    """The image at `path` as uint8 RGB (3, H, W): torchvision's decoders (PNG, JPEG, WebP, ...),
    PIL for the formats they cannot read. An InputError naming the file when neither can
    decode it."""
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
    return image


def _read_with_pil(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...) for broken files
        raise InputError(f"image {path} cannot be decoded ({first_line(exc)}); replace or remove it") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


class PendingCache:
    """Images this process decoded, and the cache file they are to be written to: by `write`,
    once, when they are first served."""

    def __init__(self, images: torch.Tensor, key: str, file: Path) -> None:
        self.images, self.key, self.file = images, key, file
        self.written = False

    def write(self) -> None:
        if self.written:
            return
        self.written = True
        try:
            _save(self.images, self.key, self.file)
        except (InputError, OSError) as exc:  # e.g. a full disk: the cache only saves time, training goes on
            logger.warning("The image cache %s was not written (%s); the next run decodes the images again",
                           self.file, first_line(exc))


class CachedImages(TensorDataset):
    """The images of a folder decoded once: tensors (N, 3, S, S) uint8 and (N,) int64 labels.
    `pending`: their cache file, when this process decoded them and has not written it yet."""

    def __init__(self, images: torch.Tensor, labels: list[int], classes: list[str],
                 pending: PendingCache | None = None) -> None:
        super().__init__(images, torch.tensor(labels, dtype=torch.long))
        self.targets, self.classes, self.pending = labels, classes, pending

    def write_cache(self) -> None:
        """Write the pending cache file (nothing when there is none, or it is written)."""
        if self.pending is not None:
            self.pending.write()


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


def cached_images(folder: Path, paths: list[Path], size: int,
                  cache_dir: Path) -> tuple[torch.Tensor, PendingCache | None]:
    """The images at `paths` (those of `folder`) as one (N, 3, size, size) uint8 tensor, read
    from `cache_dir` when a cache file of exactly these files exists, else decoded, with the
    cache file still to write. Under DDP rank 0 decodes while the others wait, then they read
    its images from a temporary file that it removes once they have (or decode themselves, on a
    machine that does not share the cache folder); rank 0's error or stop signal ends every rank."""
    key = cache_key(paths, size)
    file = cache_file(folder, key, cache_dir)
    images, pending, failure, made_folder = None, None, None, False
    news: tuple[str, Any] = ("ready", None)  # rank 0 to the others: ready (a file to read), error or stopped
    if distributed.is_main():
        try:
            images, pending = read_or_decode(folder, paths, size, file, key)
            if pending is not None and distributed.active():
                made_folder = not cache_dir.exists()
                news = ("ready", str(share(images, key, file)))
        except InputError as exc:
            failure, news = exc, ("error", str(exc))
        except TrainingInterrupted as exc:
            failure, news = exc, ("stopped", exc.signal_number)
    kind, detail = distributed.broadcast(news)  # the other ranks wait here until rank 0 is done
    if failure is not None:
        raise failure
    if kind == "error":
        raise InputError(detail)
    if kind == "stopped":
        raise TrainingInterrupted(detail, None)
    try:
        if images is None:  # a rank other than 0: rank 0's images, or its own on another machine
            shared = Path(detail) if detail else file
            images = _load(shared, key) if shared.is_file() else None
            if images is None:
                images, pending = read_or_decode(folder, paths, size, file, key)
    finally:
        if detail:  # every rank has read the shared file (or given up on it): rank 0 removes it
            distributed.barrier()
            if distributed.is_main():
                Path(detail).unlink(missing_ok=True)
                if made_folder:  # and the cache folder it made for it: made again when the cache is written
                    with contextlib.suppress(OSError):
                        cache_dir.rmdir()
    return images, pending


def cache_file(folder: Path, key: str, cache_dir: Path) -> Path:
    return cache_dir / f"images-{hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:12]}-{key[:16]}.pt"


def read_cache(folder: Path, paths: list[Path], size: int, cache_dir: Path) -> torch.Tensor | None:
    """The cached images of exactly these files, or None: nothing is decoded or written."""
    key = cache_key(paths, size)
    file = cache_file(folder, key, cache_dir)
    return _load(file, key) if file.is_file() else None


def read_or_decode(folder: Path, paths: list[Path], size: int, file: Path,
                   key: str) -> tuple[torch.Tensor, PendingCache | None]:
    """The cache file's images, or (after checking that the cache can be written) every image
    decoded, with its cache file pending."""
    images = _load(file, key) if file.is_file() else None
    if images is not None:
        return images, None
    check_writable(file.parent)
    images = decode_all(folder, paths, size, file.parent)
    return images, PendingCache(images, key, file)


def check_writable(folder: Path) -> None:
    """Refuse, before decoding, a cache folder that cannot be made or written (nothing is made)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "not a folder" if not existing.is_dir() else "not writable"
        raise InputError(f"config: 'data_loader.args.cache_dir': cannot write the image cache into {folder}: "
                         f"'{existing}' is {problem}; give a writable folder, or null to decode every epoch")


def share(images: torch.Tensor, key: str, file: Path) -> Path:
    """Rank 0's decoded images, written for the other ranks to a temporary file beside `file`."""
    return _write_temporary(images, key, file, ".share")


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
    """Every image decoded, with a progress bar (rank 0 alone) when it takes over a second. A
    stop signal (Ctrl-C, SIGTERM) ends it after the image being decoded: TrainingInterrupted."""
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    bar = tqdm(paths, desc=f"decoding {folder} once into {cache_dir}", unit="image", delay=1.0,
               leave=False, disable=not distributed.is_main(), mininterval=0.5, dynamic_ncols=True)
    with bar:
        for index, path in enumerate(bar):
            if (signal_number := stop_request.pending()) is not None:
                raise TrainingInterrupted(signal_number, None)
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
    name = _write_temporary(images, key, file, ".tmp")
    try:
        os.replace(name, file)
    except BaseException:
        name.unlink(missing_ok=True)
        raise
    stem = file.name.rsplit("-", 1)[0]
    for old in file.parent.glob(f"{stem}-*.pt"):
        if old != file:
            old.unlink(missing_ok=True)


def _write_temporary(images: torch.Tensor, key: str, file: Path, suffix: str) -> Path:
    """The images in a new temporary file beside `file` (its folder made if need be); removed
    again when the write fails."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, name = temp_file_beside(file, suffix)  # a normal file, as checkpoints are
    except OSError as exc:
        raise InputError(f"config: 'data_loader.args.cache_dir': cannot write the image cache into {file.parent}: "
                         f"{exc.strerror or exc}; give a writable folder, or null to decode every epoch") from None
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save({"key": key, "images": images}, out)
    except BaseException:
        name.unlink(missing_ok=True)
        raise
    return name
