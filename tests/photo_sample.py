"""Generated JPEG photos for tests and benchmarks of the image_folder option, without the network.

Each class is a colour: a photo of class ``k`` is a smooth random field of colours with a disc of
the class's hue somewhere on it, of a random size and aspect ratio, encoded with torchvision's
``encode_jpeg``. The layout is torchvision ImageFolder's: ``<root>/train/<class>/<n>.jpg`` and
``<root>/val/<class>/<n>.jpg``. Only torch and torchvision are needed.
"""

from __future__ import annotations

import colorsys
import warnings
from pathlib import Path

import torch


def photo(label: int, classes: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One uint8 (3, height, width) photo of class `label` of `classes`: a smooth colour field
    (a 4 x 4 grid of random colours, bilinearly enlarged) with a disc of the class's hue."""
    grid = torch.rand(1, 3, 4, 4, generator=generator)
    field = torch.nn.functional.interpolate(grid, (height, width), mode="bilinear", align_corners=False)[0]
    hue = colorsys.hsv_to_rgb(label / classes, 0.9, 0.95)
    radius = min(height, width) * (0.2 + 0.2 * float(torch.rand((), generator=generator)))
    centre_y = radius + float(torch.rand((), generator=generator)) * (height - 2 * radius)
    centre_x = radius + float(torch.rand((), generator=generator)) * (width - 2 * radius)
    rows = torch.arange(height, dtype=torch.float32)[:, None] - centre_y
    columns = torch.arange(width, dtype=torch.float32)[None, :] - centre_x
    disc = (rows**2 + columns**2 <= radius**2).float()
    image = field * (1 - disc) + torch.tensor(hue).view(3, 1, 1) * disc
    return (image * 255).round().to(torch.uint8)


def write_photo_folders(
    root: Path,
    n_train_per_class: int,
    n_val_per_class: int,
    classes: int = 10,
    sides: tuple[int, int] = (48, 128),
    seed: int = 0,
) -> Path:
    """Write JPEG photos in ImageFolder's layout under `root`: `n_train_per_class` in
    ``train/<k>/`` and `n_val_per_class` in ``val/<k>/`` for each class ``k`` of `classes`,
    each side drawn uniformly from `sides` (so the aspect ratio varies too). Returns `root`."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its encoders (for TorchCodec's)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import encode_jpeg

        generator = torch.Generator().manual_seed(seed)
        for split, per_class in (("train", n_train_per_class), ("val", n_val_per_class)):
            for label in range(classes):
                folder = Path(root) / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                for n in range(per_class):
                    height, width = (
                        int(side) for side in torch.randint(sides[0], sides[1] + 1, (2,), generator=generator)
                    )
                    image = photo(label, classes, height, width, generator)
                    (folder / f"{n}.jpg").write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    return Path(root)
