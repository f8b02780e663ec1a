"""The embedded real sample: the 10,000 Fashion-MNIST test images (MIT licence).

Used by the demo, the docs and the tests, offline. The files are the original IDX
format (``t10k-*-ubyte.gz``), so torchvision's ``FashionMNIST`` can read them too
(:func:`materialize_fashion_mnist`).
"""

from __future__ import annotations

import gzip
import os
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "SampleDataset", "load_sample", "materialize_fashion_mnist", "sample_files"]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_IMAGES = "t10k-images-idx3-ubyte.gz"
_LABELS = "t10k-labels-idx1-ubyte.gz"


def sample_files() -> tuple[Path, Path]:
    """Paths of the embedded images and labels IDX files (gzip)."""
    base = resources.files("torch_dedup") / "data" / "fashion_mnist"
    return Path(str(base / _IMAGES)), Path(str(base / _LABELS))


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic != 0x0800 + ndim:
        raise ValueError(f"{path}: not an IDX file of {ndim} dimensions (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_sample(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the embedded Fashion-MNIST test split.

    Args:
        limit: keep only the first ``limit`` items (``None``: all 10,000).

    Returns:
        ``(images, labels)``: ``uint8`` array ``(N, 28, 28)`` and ``int64`` array ``(N,)``.

    Example:
        >>> images, labels = load_sample(100)
        >>> images.shape, labels.shape
        ((100, 28, 28), (100,))
    """
    img_path, lbl_path = sample_files()
    images = _read_idx(img_path, 3)
    labels = _read_idx(lbl_path, 1).astype(np.int64)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit={limit} must be >= 0 or None")
        images, labels = images[:limit], labels[:limit]
    return np.ascontiguousarray(images), labels


def materialize_fashion_mnist(root: str | os.PathLike) -> Path:
    """Lay the embedded files out as ``ROOT/FashionMNIST/raw`` for torchvision.

    ``torchvision.datasets.FashionMNIST(root, train=False)`` then loads the sample without
    any download. Only the test split is embedded; the training split comes from Debian's
    ``dataset-fashion-mnist`` package (see docs).

    Returns:
        The ``raw`` folder.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for src in sample_files():
        dst = raw / src.name[:-3]
        if not dst.exists():
            with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    return raw


class SampleDataset:
    """The embedded sample as a map-style dataset (``__getitem__``/``__len__``), like torchvision's.

    ``.data`` is the ``uint8`` ``(N, 28, 28)`` image array and ``.targets`` the labels, the
    same attributes torchvision's ``FashionMNIST`` has, so torch_dedup reads the raw images
    directly and never runs ``transform``.

    Args:
        start, stop: the slice of the 10,000 embedded images to expose.
        transform: applied to the ``(28, 28)`` uint8 array of an item (e.g. to a tensor).

    Example:
        >>> ds = SampleDataset(0, 100)
        >>> len(ds), ds[0][1]
        (100, 9)
    """

    classes = list(CLASSES)

    def __init__(self, start: int = 0, stop: int | None = None, transform=None):
        images, labels = load_sample()
        self.data = np.ascontiguousarray(images[start:stop])
        self.targets = labels[start:stop]
        self.transform = transform
        self.root = None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = self.data[i]
        return (img if self.transform is None else self.transform(img)), int(self.targets[i])
