"""Turn a command-line TARGET string into a map-style dataset (for ``torch-dedup``).

Accepted forms:

- ``sample``: the embedded Fashion-MNIST sample (10,000 images).
- ``fashion-mnist:ROOT``, ``mnist:ROOT``, ``kmnist:ROOT``, ``cifar10:ROOT``, ``cifar100:ROOT``,
  ``svhn:ROOT``, each optionally followed by ``:train`` (default) or ``:test``: the torchvision
  dataset already on disk under ROOT (nothing is downloaded).
- a folder: an ``ImageFolder`` when every image sits one level down in class folders,
  else every image file found below it (labels none).
- ``FILE.npy`` / ``FILE.npz``: a ``uint8`` image array ``(N, H, W[, C])``; an ``.npz`` may
  carry ``labels`` (or ``y``/``targets``) beside ``images`` (or ``x``/``data``, or its first array),
  and ``classes`` (a string array of class names).

Webdataset shards (``.tar`` files, brace patterns) are streams, not map-style datasets:
they are refused here with a pointer to ``torch-dedup wds``.

Layer 5.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..embedded import SampleDataset

__all__ = ["IMAGE_EXTENSIONS", "ArrayDataset", "ImageFiles", "class_names_of", "open_target"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_TV = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST", "cifar10": "CIFAR10",
       "cifar100": "CIFAR100", "svhn": "SVHN"}


class ArrayDataset:
    """A stacked ``uint8`` image array (and optional labels) as a map-style dataset."""

    def __init__(self, data: np.ndarray, targets: np.ndarray | None = None, root: str | None = None,
                 classes: list[str] | None = None):
        self.data = data
        if targets is not None:
            self.targets = np.asarray(targets, dtype=np.int64)
        self.root = root
        if classes is not None:
            self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i], (int(self.targets[i]) if hasattr(self, "targets") else -1)


class ImageFiles:
    """Every image file below a folder, in sorted path order, as a dataset of PIL images.

    Items have no label: ``samples`` holds ``(path, None)`` (so no labels are inferred from
    it) and ``ds[i]`` is ``(image, -1)``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        paths = sorted(str(p) for p in Path(root).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        self.samples = [(p, None) for p in paths]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image
        with Image.open(self.samples[i][0]) as im:
            return im.copy(), -1


def _usage(target: str, why: str) -> ValueError:
    return ValueError(f"TARGET {target!r}: {why}. Use 'sample', an image folder, a .npy/.npz array, or "
                      f"NAME:ROOT[:train|:test] with NAME one of {', '.join(_TV)}.")


def _image_folder(root: Path):
    import torchvision
    from torchvision.datasets.folder import IMG_EXTENSIONS
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if subdirs and not loose and all(any(f.suffix.lower() in IMG_EXTENSIONS for f in d.iterdir() if f.is_file())
                                     for d in subdirs):
        return torchvision.datasets.ImageFolder(str(root))
    return ImageFiles(root)


def _array_file(path: Path, target: str) -> ArrayDataset:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _usage(target, f"cannot read the array file ({exc})") from None
    labels, classes = None, None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            img_key = next((k for k in ("images", "x", "data") if k in keys), keys[0] if keys else None)
            if img_key is None:
                raise _usage(target, "the .npz file holds no array")
            data = loaded[img_key]
            lbl_key = next((k for k in ("labels", "y", "targets") if k in keys), None)
            labels = loaded[lbl_key] if lbl_key else None
            names = loaded["classes"] if "classes" in keys else None
            if names is not None and names.dtype.kind in "US" and names.ndim == 1:
                classes = [str(c) for c in names.tolist()]
    else:
        data = loaded
    if data.dtype != np.uint8 or data.ndim not in (3, 4):
        raise _usage(target, f"the array has dtype {data.dtype} and shape {data.shape}; expected uint8 "
                             "(N, H, W) or (N, H, W, C)")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(data)):
        labels = None
    return ArrayDataset(np.ascontiguousarray(data), labels, root=str(path.parent), classes=classes)


def class_names_of(ds) -> list[str] | None:
    """The dataset's class names (``ds.classes``, label value -> name) when it has them, else None."""
    classes = getattr(ds, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


def _looks_like_shards(target: str) -> bool:
    return target.endswith((".tar", ".tar.gz", ".tgz")) or ("{" in target and ".." in target and "}" in target)


def open_target(target: str):
    """Open a TARGET string as a dataset (see the module doc).

    Raises:
        ValueError: the target does not exist or is not understood (message says what is).
    """
    if target == "sample":
        return SampleDataset()
    name, _, rest = target.partition(":")
    if name.lower() in _TV and rest:
        import torchvision
        root, _, split = rest.rpartition(":") if rest.endswith((":train", ":test")) else (rest, "", "train")
        cls = getattr(torchvision.datasets, _TV[name.lower()])
        try:
            if cls.__name__ == "SVHN":
                return cls(root, split=split, download=False)
            return cls(root, train=(split == "train"), download=False)
        except (RuntimeError, OSError) as exc:
            raise _usage(target, f"torchvision could not open it ({exc}); nothing is downloaded") from None
    if _looks_like_shards(target):
        raise _usage(target, "webdataset shards are streams, not a map-style dataset; use 'torch-dedup wds "
                             "...' for them")
    path = Path(target)
    if path.is_dir():
        ds = _image_folder(path)
        if len(ds) == 0:
            raise _usage(target, "the folder holds no image files")
        return ds
    if path.is_file() and path.suffix in (".npy", ".npz"):
        return _array_file(path, target)
    raise _usage(target, "no such folder or array file")
