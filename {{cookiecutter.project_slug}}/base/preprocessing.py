"""How evaluation turns an image into the model's input, described as plain data and carried out
by the functions here: a data loader's `preprocessing()` returns `Preprocessing(...).to_dict()`,
every checkpoint stores it, and predict.py and export.py read it back with `from_dict`, so that
they need the checkpoint alone (docs/use-the-model.md).

The description (docs/use-the-model.md has it as a table), for pixel values scaled to [0, 1]:
`channels` 1 (grey) or 3 (RGB), the colour mode images are converted to; `resize` "stretch"
(both sides to `resize_size`, the aspect ratio not kept) or "shorter_side" (the shorter side to
`resize_size`, the aspect ratio kept); `crop_size`, the side of the centre square cut after
resizing, or None (none; "shorter_side" needs one); `interpolation` "bilinear" or "bicubic",
antialiased; `mean` and `std`, one number per channel: the model's input is
`(pixel / 255 - mean) / std`. The model then takes float32 `(B, channels, side, side)`, `side`
being `crop_size` or, without one, `resize_size`. torchvision is imported only where an image
is resized: training scripts import this module without it."""

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import InputError, first_line

RESIZE_RULES = ("stretch", "shorter_side")
INTERPOLATIONS = ("bilinear", "bicubic")
# The files the default `BaseDataLoader.read_inputs` reads as images (PIL decodes them).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Preprocessing:
    """An image's way from a decoded uint8 `(channels, H, W)` to the model's float32 input (the
    table of the module docstring). Checked when made: a bad value is an InputError."""

    channels: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "stretch"
    crop_size: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(self.mean))  # lists, as JSON and checkpoints hold them
        object.__setattr__(self, "std", tuple(self.std))
        problem = self._problem()
        if problem is not None:
            raise InputError(f"preprocessing: {problem}")

    def _problem(self) -> str | None:
        def whole(value: Any) -> bool:
            return type(value) is int and value >= 1

        def numbers(values: tuple[Any, ...], positive: bool) -> bool:
            return len(values) == self.channels and all(
                type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in values)

        if self.channels not in (1, 3) or type(self.channels) is not int:
            return f"'channels' must be 1 (grey) or 3 (RGB), got {self.channels!r}"
        if self.resize not in RESIZE_RULES:
            return f"'resize' must be one of {', '.join(RESIZE_RULES)}, got {self.resize!r}"
        if not whole(self.resize_size):
            return f"'resize_size' must be a whole number of pixels, got {self.resize_size!r}"
        if self.crop_size is not None and not (whole(self.crop_size) and self.crop_size <= self.resize_size):
            return f"'crop_size' must be null or a whole number of pixels up to resize_size, got {self.crop_size!r}"
        if self.resize == "shorter_side" and self.crop_size is None:
            return "'resize' 'shorter_side' keeps the aspect ratio, so it needs a 'crop_size' (a square input)"
        if self.interpolation not in INTERPOLATIONS:
            return f"'interpolation' must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
        if not numbers(self.mean, positive=False) or not numbers(self.std, positive=True):
            return (f"'mean' and 'std' must hold one finite number per channel ({self.channels}), std above 0; "
                    f"got {list(self.mean)} and {list(self.std)}")
        return None

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "Preprocessing":
        """The description saved as `data` (by `to_dict`); an InputError naming `source` (e.g.
        the checkpoint) when it is not one."""
        names = {field.name for field in fields(cls)}
        if not isinstance(data, dict) or set(data) - names or {"channels", "resize_size", "mean", "std"} - set(data):
            raise InputError(f"{source}: its preprocessing is not an image description of base/preprocessing.py "
                             f"(keys {', '.join(sorted(names))}), got {data!r:.200}")
        try:
            return cls(**data)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The description as plain data (lists, numbers, strings), for checkpoints and JSON."""
        order = ("channels", "resize", "resize_size", "crop_size", "interpolation", "mean", "std")
        described = {**asdict(self), "mean": list(self.mean), "std": list(self.std)}
        return {key: described[key] for key in order}

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input of the model."""
        side = self.crop_size if self.crop_size is not None else self.resize_size
        return self.channels, side, side

    def resize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(B, channels, H, W)` resized (and centre-cropped) to the model's input size."""
        images = self.resized(images)
        return images if self.crop_size is None else centre_crop(images, self.crop_size)

    def resized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(..., channels, H, W)` after the resize step alone, before any centre crop:
        `resize_size` square ("stretch") or on the shorter side ("shorter_side")."""
        from torchvision.transforms.v2 import InterpolationMode, functional

        mode = InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR
        side = self.resize_size
        if self.resize == "shorter_side":
            return functional.resize(images, [side], interpolation=mode, antialias=True)  # one int: the shorter side
        if images.shape[-2:] != (side, side):
            return functional.resize(images, [side, side], interpolation=mode, antialias=True)
        return images

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(B, channels, H, W)` to float32, each channel mapped by `mean` and `std`, on
        the images' device."""
        images = images.to(torch.float32).div_(255.0)
        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:  # one number for all: no tensor to make
            return images.sub_(self.mean[0]).div_(self.std[0])
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        return images.sub_(mean).div_(std)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded uint8 `(B, channels, H, W)` images as the model's float32 inputs."""
        return self.normalise(self.resize_images(images))


def centre_offset(size: int, crop: int) -> int:
    """Where the centre crop of `crop` pixels of `size` pixels starts: half the difference,
    rounded half to even, as torchvision's `center_crop` rounds it."""
    return int(round((size - crop) / 2.0))


def centre_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    """The centre `crop` x `crop` square of `(..., H, W)` images (both sides at least `crop`): a view."""
    top, left = centre_offset(images.shape[-2], crop), centre_offset(images.shape[-1], crop)
    return images[..., top : top + crop, left : left + crop]


def read_image_file(path: Path, channels: int) -> torch.Tensor:
    """The image at `path` as uint8 `(channels, H, W)`, converted to grey (1) or RGB (3) by PIL.
    An InputError naming the file when it cannot be read or decoded."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            pixels = np.asarray(opened.convert("L" if channels == 1 else "RGB"))
    except OSError as exc:
        if exc.errno is not None:  # the file itself (missing, no permission), not its content
            raise InputError(f"image {path} cannot be read ({exc.strerror or exc})") from None
        raise InputError(f"image {path} cannot be decoded ({first_line(exc)}); replace or remove it") from None
    except Exception as exc:  # PIL raises many kinds (SyntaxError, ValueError, ...) for broken files
        raise InputError(f"image {path} cannot be decoded ({first_line(exc)}); replace or remove it") from None
    image = torch.from_numpy(pixels.copy())
    return image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)
