"""Image files as uint8 tensors for data_loader/image_folder.py: each image decoded and resized
once into a cache file (in the project's cache/ folder, not beside the images, which may be
read-only), or, with `cache_dir` null, decoded each time it is loaded.

What is cached of an image is its stored form (`stored_image`): a square of `resize_size`
pixels, from which evaluation takes its input the same way every time. A cache file is a plain
`.npy` array (N, 3, S, S) uint8 (`numpy.load` reads it), one per image folder. The images of a
folder are held in memory when they take at most CACHE_MEMORY_FRACTION of the machine's memory,
and read through a memory map of the file otherwise, batches gathered from it by index: the
operating system keeps what it can of the file in memory and reads the rest from disk. Such a
file is built image by image on disk, never whole in memory.

A cache file is keyed by the path, size and modification time of every image, in order, and by
the stored form: a changed, added or removed image, or another size or preprocessing, makes a
new one (and the old one of that folder is deleted). It is written when the images are first
served (`CachedImages.write_cache`), not when they are decoded: a run refused while it is being
built leaves no cache file behind (a file built on disk stays a temporary file until then, and
is removed when the process lets go of it), and a dry run writes none. A stop signal ends the
decoding within an image, leaving no file."""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms.v2 import functional
from tqdm import tqdm

from base.preprocessing import Preprocessing, centre_offset
from engine import distributed
from engine.signals import stop_request
from utils.errors import InputError, TrainingInterrupted, first_line
from utils.staged_files import full_disk_reported, temp_file_beside

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; while they exist they
# are the fastest way from file bytes to a uint8 tensor, and PIL decodes everything once they go.
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)
try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:
    decode_image = None

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # part of every key: a change of how images are decoded or stored invalidates old caches

# A folder's cache is held in memory when its decoded images (3 x S^2 bytes each, once per
# process of a DDP run) take at most this fraction of the machine's memory; above it, it is read
# through a memory map of the cache file (shared by the processes of a machine).
CACHE_MEMORY_FRACTION = 0.25

# What a cache file's name and key describe of the stored form (mean and std are applied later).
STORED_FORM_KEYS = ("resize", "resize_size", "crop_size", "interpolation")


def stored_image(image: torch.Tensor, form: Preprocessing) -> torch.Tensor:
    """A decoded uint8 (3, H, W) image as the cache stores it, (3, S, S) with S the form's
    `resize_size`: for "stretch", resized to S x S; for "shorter_side", its shorter side resized
    to S and the S x S square kept whose centre `crop_size` square is the centre crop of the
    whole resized image, so that cropping the centre of the stored square gives, pixel for
    pixel, what `form.resize_images` gives for the file (prediction, export)."""
    resized = form.resized(image)
    if form.resize == "stretch":
        return resized
    side, crop = form.resize_size, form.crop_size
    assert crop is not None  # "shorter_side" has one
    height, width = resized.shape[-2:]
    top = centre_offset(height, crop) - centre_offset(side, crop)  # in [0, height - side]
    left = centre_offset(width, crop) - centre_offset(side, crop)
    return resized[:, top : top + side, left : left + side]


def read_image(path: Path, form: Preprocessing) -> torch.Tensor:
    """The image at `path` in its stored form (`stored_image`), uint8 (3, S, S). An InputError
    naming the file when it cannot be decoded."""
    return stored_image(decode_image_file(path), form)


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
    """A cache file still to be written, once, by `write` when its images are first served:
    from `images` in memory, or by renaming `built`, the temporary file they were decoded into
    (which is removed instead when this object is dropped unwritten: a refused run)."""

    def __init__(self, key: str, file: Path, images: torch.Tensor | None = None, built: Path | None = None) -> None:
        self.key, self.file, self.images, self.built = key, file, images, built
        self.written = False
        self._discard = weakref.finalize(self, _remove, built) if built is not None else None

    def write(self) -> None:
        if self.written:
            return
        self.written = True
        try:
            if self.built is not None:
                _publish(self.built, self.file)
                if self._discard is not None:
                    self._discard.detach()
            else:
                assert self.images is not None
                _publish(_write_temporary(self.images, self.file, ".tmp"), self.file)
        except (InputError, OSError) as exc:  # e.g. a full disk: the cache only saves time, training goes on
            logger.warning("The image cache %s was not written (%s); the next run decodes the images again",
                           self.file, first_line(exc))


# Cache folders this process made for temporary files: removed again with the last of them.
_FOLDERS_MADE: set[Path] = set()

# A temporary cache file not changed for this long was left by a process that was killed.
STALE_SECONDS = 3600


def _remove(path: Path) -> None:
    """Remove an unwritten cache's temporary file (and the cache folder, when it was made for it
    and is empty now)."""
    path.unlink(missing_ok=True)
    if path.parent.absolute() in _FOLDERS_MADE:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


class CachedImages(TensorDataset):
    """The images of a folder decoded once: tensors (N, 3, S, S) uint8, in memory or mapped from
    the cache file `mapped`, and (N,) int64 labels. `pending`: their cache file, when this
    process decoded them and has not written it yet. Batches are gathered from the images by
    index (`dataset[indices]`) wherever they are; worker processes map the file again."""

    def __init__(self, images: torch.Tensor, labels: list[int], classes: list[str],
                 pending: PendingCache | None = None, mapped: Path | None = None) -> None:
        super().__init__(images, torch.tensor(labels, dtype=torch.long))
        self.targets, self.classes, self.pending, self.mapped = labels, classes, pending, mapped

    def write_cache(self) -> None:
        """Write the pending cache file (nothing when there is none, or it is written)."""
        if self.pending is not None:
            self.pending.write()
            if self.mapped is not None and self.pending.written and self.pending.file.is_file():
                self.mapped = self.pending.file.absolute()  # the same file, renamed

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process receives (when it is not forked): the file to map, not its pixels."""
        state = self.__dict__.copy()
        state["pending"] = None  # the cache file is this process's to write
        if self.mapped is not None:
            state["tensors"] = (None, self.tensors[1])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.mapped is not None:
            self.tensors = (map_cache(self.mapped), self.tensors[1])


class StreamedImages(Dataset):
    """The images of a folder decoded each time a sample is loaded (`cache_dir` null)."""

    def __init__(self, paths: list[Path], labels: list[int], classes: list[str], form: Preprocessing) -> None:
        self.paths, self.targets, self.classes, self.form = paths, labels, classes, form

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.paths[index], self.form), self.targets[index]


def fits_in_memory(count: int, side: int) -> bool:
    """Whether `count` decoded images of side `side` fit within CACHE_MEMORY_FRACTION."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on Linux or macOS: in memory
        return True
    return count * 3 * side * side * distributed.world_size() <= CACHE_MEMORY_FRACTION * memory


class Cache:
    """The cache file of the images `paths` of `folder` in their stored `form`, in `cache_dir`:
    its key, its file name, and whether its images are held `in_memory` or mapped from the file."""

    def __init__(self, folder: Path, paths: list[Path], form: Preprocessing, cache_dir: Path, in_memory: bool) -> None:
        self.folder, self.paths, self.form, self.cache_dir, self.in_memory = folder, paths, form, cache_dir, in_memory
        self.side = form.resize_size
        self.shape = (len(paths), 3, self.side, self.side)
        self.key = cache_key(paths, form)
        self.file = cache_file(folder, self.key, cache_dir)
        self.mapped: Path | None = None  # the file the images read last are mapped from

    def read(self, file: Path | None = None) -> torch.Tensor | None:
        """The images of the cache file (or of `file`, a copy of it), None when there is none or
        it does not hold them (rebuilt)."""
        file = file or self.file
        if not file.is_file():
            return None
        try:
            array = np.load(file, mmap_mode=None if self.in_memory else "c", allow_pickle=False)
        except (OSError, ValueError):  # truncated, foreign: decode again
            return None
        if array.dtype != np.uint8 or array.shape != self.shape:
            return None
        self.mapped = None if self.in_memory else file.absolute()
        return torch.from_numpy(array)

    def read_or_build(self) -> tuple[torch.Tensor, PendingCache | None]:
        """The cache file's images, or (after checking that the cache can be written) every image
        decoded, with its cache file pending: into memory, or image by image into a temporary
        file beside the cache file, which is then mapped."""
        images = self.read()
        if images is not None:
            return images, None
        check_writable(self.cache_dir)
        if self.in_memory:
            images = torch.empty(self.shape, dtype=torch.uint8)
            for index, image in enumerate(self.decoded()):
                images[index] = image
            return images, PendingCache(self.key, self.file, images=images)
        built = self.build_on_disk()
        pending = PendingCache(self.key, self.file, built=built)
        images = self.read(built)
        assert images is not None, f"the image cache {built} just written cannot be read"
        return images, pending

    def build_on_disk(self) -> Path:
        """Every image decoded into a new temporary file beside the cache file, one at a time
        (removed again, with the cache folder when it was made for it, on an error or a stop).
        Temporary files of this folder's caches that killed processes left are removed first."""
        needed = int(np.prod(self.shape))
        made_folder = not self.cache_dir.exists()
        try:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"config: 'data_loader.args.cache_dir': cannot write the image cache into "
                                 f"{self.cache_dir}: {exc.strerror or exc}; give a writable folder, or null to "
                                 "decode every epoch") from None
            if made_folder:
                _FOLDERS_MADE.add(self.cache_dir.absolute())
            remove_stale_files(self.file)
            free = shutil.disk_usage(self.cache_dir).free
            if needed > free:
                raise InputError(f"config: 'data_loader.args.cache_dir': the image cache of {self.folder} takes "
                                 f"{needed / 1e9:.1f} GB, but {self.cache_dir} has {free / 1e9:.1f} GB free; give a "
                                 "folder with room, or null to decode every epoch")
            return _write_temporary(self.decoded(), self.file, ".tmp", self.shape)
        except BaseException:
            if made_folder:
                with contextlib.suppress(OSError):
                    self.cache_dir.rmdir()
            raise

    def decoded(self) -> Iterator[torch.Tensor]:
        """Every image in its stored form, in order, with a progress bar (rank 0 alone) when it
        takes over a second. A stop signal (Ctrl-C, SIGTERM) ends it after the image being
        decoded: TrainingInterrupted."""
        into = "" if self.in_memory else f" into a memory-mapped file of {np.prod(self.shape) / 1e9:.1f} GB"
        bar = tqdm(self.paths, desc=f"decoding {self.folder} once{into} (cache: {self.cache_dir})", unit="image",
                   delay=1.0, leave=False, disable=not distributed.is_main(), mininterval=0.5, dynamic_ncols=True)
        with bar:
            for path in bar:
                if (signal_number := stop_request.pending()) is not None:
                    raise TrainingInterrupted(signal_number, None)
                yield read_image(path, self.form)


def cached_images(folder: Path, paths: list[Path], form: Preprocessing, cache_dir: Path,
                  in_memory: bool = True) -> tuple[torch.Tensor, PendingCache | None, Path | None]:
    """The images at `paths` (those of `folder`) in their stored `form`, one (N, 3, S, S) uint8
    tensor in memory or mapped from a file (`in_memory`), read from `cache_dir` when a cache file
    of exactly these files exists, else decoded, with the cache file still to write (pending),
    and the file the images are mapped from (None in memory). Under DDP
    rank 0 decodes while the others wait, then they read its images from a file that it names:
    a temporary copy that it removes once they have, or, for a mapped cache, the file it built
    (or they decode themselves, on a machine that does not share the cache folder); rank 0's
    error or stop signal ends every rank."""
    cache = Cache(folder, paths, form, cache_dir, in_memory)
    images, pending, failure, made_folder, copied = None, None, None, False, False
    news: tuple[str, Any] = ("ready", None)  # rank 0 to the others: ready (a file to read), error or stopped
    if distributed.is_main():
        try:
            made_folder = not cache_dir.exists()
            images, pending = cache.read_or_build()
            if pending is not None and distributed.active():
                copied = pending.built is None
                news = ("ready", str(share(images, cache.file) if copied else pending.built))
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
            images = cache.read(Path(detail) if detail else None)
            if images is None:
                images, pending = cache.read_or_build()
    finally:
        if detail:  # every rank has read the shared file (or given up on it)
            distributed.barrier()
            if distributed.is_main() and copied:  # rank 0 removes its copy (and the folder it made for it)
                Path(detail).unlink(missing_ok=True)
                if made_folder:
                    with contextlib.suppress(OSError):
                        cache_dir.rmdir()
    return images, pending, cache.mapped


def read_cache(folder: Path, paths: list[Path], form: Preprocessing, cache_dir: Path,
               in_memory: bool = True) -> tuple[torch.Tensor | None, Path | None]:
    """The cached images of exactly these files, or None: nothing is decoded or written; and the
    file they are mapped from (None in memory)."""
    cache = Cache(folder, paths, form, cache_dir, in_memory)
    return cache.read(), cache.mapped


def remove_stale_files(file: Path) -> None:
    """Remove the temporary files of `file`'s folder's caches that no process has changed for
    STALE_SECONDS: left by a killed process (removing a live one's would only cost it its cache)."""
    stem = file.name.rsplit("-", 1)[0]
    now = time.time()
    for temporary in file.parent.glob(f".{stem}-*"):
        with contextlib.suppress(OSError):
            if now - temporary.stat().st_mtime > STALE_SECONDS:
                temporary.unlink()


def map_cache(file: Path) -> torch.Tensor:
    """The images of a cache file, mapped (copy-on-write: the file is never changed)."""
    return torch.from_numpy(np.load(file, mmap_mode="c", allow_pickle=False))


def cache_file(folder: Path, key: str, cache_dir: Path) -> Path:
    return cache_dir / f"images-{hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:12]}-{key[:32]}.npy"


def check_writable(folder: Path) -> None:
    """Refuse, before decoding, a cache folder that cannot be made or written (nothing is made)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "not a folder" if not existing.is_dir() else "not writable"
        raise InputError(f"config: 'data_loader.args.cache_dir': cannot write the image cache into {folder}: "
                         f"'{existing}' is {problem}; give a writable folder, or null to decode every epoch")


def share(images: torch.Tensor, file: Path) -> Path:
    """Rank 0's decoded images, written for the other ranks to a temporary file beside `file`."""
    return _write_temporary(images, file, ".share")


def cache_key(paths: list[Path], form: Preprocessing) -> str:
    stats = [(str(path.absolute()), *_size_and_time(path)) for path in paths]
    stored = {key: value for key, value in form.to_dict().items() if key in STORED_FORM_KEYS}
    return hashlib.sha256(json.dumps([CACHE_FORMAT, stored, stats]).encode()).hexdigest()


def _size_and_time(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    return stat.st_size, stat.st_mtime_ns


def _publish(temporary: Path, file: Path) -> None:
    """Rename `temporary` to `file` (removed again when that fails), then delete the older
    caches of the same folder."""
    try:
        os.replace(temporary, file)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    stem = file.name.rsplit("-", 1)[0]
    for old in [*file.parent.glob(f"{stem}-*.npy"), *file.parent.glob(f"{stem}-*.pt")]:  # .pt: format 1
        if old != file:
            old.unlink(missing_ok=True)


def _write_temporary(images: torch.Tensor | Iterator[torch.Tensor], file: Path, suffix: str,
                     shape: tuple[int, ...] | None = None) -> Path:
    """The images (a tensor, or one image at a time of an array of `shape`) as a `.npy` file in
    a new temporary file beside `file` (its folder made if need be), flushed to disk; removed
    again when the write fails or is stopped."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, name = temp_file_beside(file, suffix)  # a normal file, as checkpoints are
    except OSError as exc:
        raise InputError(f"config: 'data_loader.args.cache_dir': cannot write the image cache into {file.parent}: "
                         f"{exc.strerror or exc}; give a writable folder, or null to decode every epoch") from None
    try:
        with os.fdopen(fd, "wb") as out, full_disk_reported(file):
            if isinstance(images, torch.Tensor):
                _write_array(out, images.shape, [images.reshape(-1)])
            else:
                assert shape is not None
                _write_array(out, shape, images)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        name.unlink(missing_ok=True)
        raise
    return name


def _write_array(out: BinaryIO, shape: tuple[int, ...], parts: Iterable[torch.Tensor]) -> None:
    """A uint8 `.npy` array of `shape` whose bytes are `parts` (uint8 tensors) in order."""
    np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    written = 0
    for part in parts:
        data = part.contiguous().numpy()
        out.write(data.data)
        written += data.size
    if written != int(np.prod(shape)):
        raise OSError(f"{written} bytes of images written, {int(np.prod(shape))} expected")
