"""Dataset → raw images, labels and a content fingerprint, without running the dataset's transforms.

Hashing must see the images as stored: a random crop or flip in ``transform`` would make
every hash random. :func:`source_of` finds the cheapest honest way to read item ``i``:

* **array** — torchvision's MNIST family (``MNIST``, ``FashionMNIST``, ``KMNIST``, ``EMNIST``,
  ``QMNIST``: ``.data`` uint8 ``(N, 28, 28)`` tensor), ``CIFAR10``/``CIFAR100`` (``.data``
  ``(N, 32, 32, 3)``), ``SVHN`` (``.data`` ``(N, 3, 32, 32)``, read as HWC), and any dataset
  whose ``.data`` is a uint8 numpy array or tensor of ``len(ds)`` images laid out
  ``(N, H, W)``, ``(N, H, W, 1|3|4)`` or ``(N, 1|3, H, W)``. Hashed in vectorised batches.
* **files** — ``ImageFolder``/``DatasetFolder`` (``.samples`` paths) with torchvision's
  default loader: hashed from the files, decoded in parallel worker processes.
* **items** — anything else: a user ``image_fn(i) -> image`` (PIL image, array, tensor or
  path), else ``ds[i][0]`` (``ds[i]`` when it is not a tuple), with a WARNING when the
  dataset has a ``transform`` set.

``torch.utils.data.Subset`` (nested too) maps through ``.indices`` onto any of these.

Fingerprints identify content cheaply so a cached sidecar is only reused for the same data:
arrays → shape, dtype and a BLAKE2b digest of the bytes; files → a digest of every file's
(relative path, size, mtime_ns); subsets add a digest of their indices. An **items** source
cannot be fingerprinted cheaply, so it has *no* fingerprint (no caching) unless the caller
passes ``fingerprint=`` — a string that must change whenever the data does.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["ImageSource", "labels_of", "source_of"]

logger = logging.getLogger(__name__)

_MNIST_FAMILY = {"MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST"}
_FILE_LOADERS = {"default_loader", "pil_loader", "accimage_loader"}
_CHUNK = 8192  # items per digest update: bounded memory for non-contiguous arrays


@dataclass(frozen=True, eq=False)
class ImageSource:
    """How to read the raw images of a map-style dataset.

    Attributes:
        kind: ``"array"``, ``"files"`` or ``"items"`` (see the module doc).
        n: number of items (``len(ds)``).
        fingerprint: content identity for caching, or ``None`` when none is cheap and safe
            (then hashes are never cached).
        labels: ``int64`` ``(n,)`` class labels when the dataset has them, else ``None``.
        root: the dataset's root folder (where sidecars go), or ``None``.
        description: short human-readable origin, e.g. ``"FashionMNIST.data (10000, 28, 28)"``.
        class_folders: ``True`` for an ``ImageFolder``/``DatasetFolder``-style dataset (one
            with ``.samples`` paths), however its images are read: every sub-folder of
            ``root`` is then a class, so nothing may create a folder there (sidecars go
            into ``root`` as hidden files instead).
    """

    kind: str
    n: int
    fingerprint: str | None
    labels: np.ndarray | None
    root: Path | None
    description: str
    _array: Any = field(default=None, repr=False)  # numpy array (N, H, W[, C]) or (N, C, H, W)
    _chw: bool = field(default=False, repr=False)
    _indices: np.ndarray | None = field(default=None, repr=False)
    _paths: Sequence[str] | None = field(default=None, repr=False)
    _get: Callable[[int], Any] | None = field(default=None, repr=False)
    class_folders: bool = False

    def __len__(self) -> int:
        return self.n

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.n:
            raise ValueError(f"range [{start}, {stop}) must satisfy 0 <= start <= stop <= n={self.n}")

    def array_batch(self, start: int, stop: int) -> np.ndarray:
        """Items ``start..stop-1`` of an **array** source as contiguous uint8 ``(m, H, W)`` or ``(m, H, W, 3)``."""
        if self.kind != "array":
            raise TypeError(f"array_batch needs an array source, this one is {self.kind!r}")
        self._check_range(start, stop)
        if self._indices is None:
            batch = self._array[start:stop]
        else:
            batch = self._array[self._indices[start:stop]]
        if self._chw:
            batch = batch.transpose(0, 2, 3, 1)
        if batch.ndim == 4 and batch.shape[3] == 1:
            batch = batch[..., 0]
        return np.ascontiguousarray(batch)

    def paths(self, start: int = 0, stop: int | None = None) -> list[str]:
        """File paths of items ``start..stop-1`` of a **files** source."""
        if self.kind != "files":
            raise TypeError(f"paths needs a files source, this one is {self.kind!r}")
        stop = self.n if stop is None else stop
        self._check_range(start, stop)
        if self._indices is None:
            return [str(p) for p in self._paths[start:stop]]
        return [str(self._paths[j]) for j in self._indices[start:stop].tolist()]

    def item(self, i: int) -> Any:
        """The raw image of item ``i`` (any kind): array, path or whatever ``image_fn`` returns."""
        if not 0 <= i < self.n:
            raise IndexError(f"item {i} out of range [0, {self.n})")
        if self.kind == "array":
            return self.array_batch(i, i + 1)[0]
        if self.kind == "files":
            return self.paths(i, i + 1)[0]
        j = i if self._indices is None else int(self._indices[i])
        return self._get(j)


def _blake(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def _array_digest(arr: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.shape}|{arr.dtype.str}".encode())
    if arr.flags.c_contiguous:
        h.update(memoryview(arr).cast("B"))
    else:
        for s in range(0, arr.shape[0], _CHUNK):
            h.update(np.ascontiguousarray(arr[s:s + _CHUNK]).data)
    return h.hexdigest()


def _files_digest(paths: Sequence[str], root: Path | None) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        p = os.fspath(p)
        rel = os.path.relpath(p, root) if root is not None else p
        try:
            st = os.stat(p)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{rel}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _tv_names(ds) -> set[str]:
    """Names of the torchvision classes ``ds`` is an instance of (no torchvision import needed)."""
    return {c.__name__ for c in type(ds).__mro__ if c.__module__.startswith("torchvision.")}


def _as_numpy(x) -> np.ndarray | None:
    if isinstance(x, np.ndarray):
        return x
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if isinstance(x, torch.Tensor) and x.device.type == "cpu":
        return x.detach().numpy()
    return None


def _image_array(ds, names: set[str]) -> tuple[np.ndarray, bool] | None:
    """``(data, is_chw)`` when ``ds.data`` holds ``len(ds)`` uint8 images in a known layout."""
    data = _as_numpy(getattr(ds, "data", None))
    if data is None or data.dtype != np.uint8 or data.ndim not in (3, 4) or data.shape[0] != len(ds):
        return None
    if "SVHN" in names:
        return (data, True) if data.ndim == 4 and data.shape[1] == 3 else None
    if data.ndim == 3:
        return data, False
    if data.shape[3] in (1, 3, 4):
        return data, False
    if data.shape[1] in (1, 3):
        return data, True
    return None


def _labels_of(ds, names: set[str]) -> np.ndarray | None:
    for attr in ("targets", "labels"):
        raw = getattr(ds, attr, None)
        if raw is None or callable(raw):
            continue
        arr = _as_numpy(raw)
        try:
            arr = np.asarray(raw if arr is None else arr)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 2 and "QMNIST" in names:
            arr = arr[:, 0]  # QMNIST keeps 8 columns; column 0 is the class, as its __getitem__ uses
        if arr.ndim != 1 or arr.shape[0] != len(ds) or arr.dtype.kind not in "iub":
            continue
        return arr.astype(np.int64)
    samples = getattr(ds, "samples", None)
    if _is_samples(samples, len(ds)):
        try:
            return np.asarray([int(s[1]) for s in samples], dtype=np.int64)
        except (TypeError, ValueError, IndexError):
            return None
    return None


def labels_of(ds) -> np.ndarray | None:
    """Class labels of a dataset as ``int64`` ``(len(ds),)``, or ``None`` when it has none.

    Read from ``targets``, ``labels`` (SVHN) or the class index of ``samples``
    (``DatasetFolder``); a ``Subset`` maps through its indices. Never loads an image.

    Example:
        >>> import torch
        >>> labels_of(torch.utils.data.TensorDataset(torch.zeros(3))) is None
        True
    """
    try:
        from torch.utils.data import Subset
    except ImportError:  # pragma: no cover
        Subset = ()
    if isinstance(ds, Subset):
        base = labels_of(ds.dataset)
        return None if base is None else base[np.asarray(ds.indices, dtype=np.int64).reshape(-1)]
    return _labels_of(ds, _tv_names(ds))


def _is_samples(samples, n: int) -> bool:
    return (isinstance(samples, (list, tuple)) and len(samples) == n and n > 0
            and isinstance(samples[0], (tuple, list)) and isinstance(samples[0][0], (str, os.PathLike)))


def _root_of(ds) -> Path | None:
    root = getattr(ds, "root", None)
    if isinstance(root, (str, os.PathLike)) and os.fspath(root):
        return Path(root)
    return None


def _first_image(item):
    if isinstance(item, (tuple, list)):
        return item[0]
    if isinstance(item, dict):
        for key in ("image", "img", "jpg", "png"):
            if key in item:
                return item[key]
        raise TypeError(f"dataset item is a dict with keys {sorted(item)!r}; pass image_fn=lambda i: ... "
                        "that returns the raw image")
    return item


def _check_map_style(ds) -> None:
    try:
        from torch.utils.data import IterableDataset
    except ImportError:  # pragma: no cover
        IterableDataset = ()
    if isinstance(ds, IterableDataset):
        raise TypeError(f"{type(ds).__name__} is an IterableDataset: it has no random access or length, so it "
                        "cannot be hashed up front. Deduplicate streams with torch_dedup.wds (the webdataset "
                        "filter), or wrap the data in a map-style Dataset.")
    try:
        len(ds)
    except TypeError:
        raise TypeError(f"{type(ds).__name__} has no __len__; torch_dedup needs a map-style dataset "
                        "(__getitem__ and __len__). For streams use torch_dedup.wds (the webdataset filter).") \
            from None


def _has_transform(ds) -> bool:
    return getattr(ds, "transform", None) is not None or getattr(ds, "transforms", None) is not None


def _source(ds, image_fn, user_fp: str | None) -> ImageSource:
    n = len(ds)
    names = _tv_names(ds)
    cls = type(ds).__name__
    root = _root_of(ds)
    labels = labels_of(ds)
    samples = getattr(ds, "samples", None)
    # an ImageFolder-style root (its sub-folders are the classes), whichever way the images are read
    folders = _is_samples(samples, n) or "DatasetFolder" in names
    if image_fn is not None:
        fp = f"user:{cls}:{n}:{root}:{user_fp}" if user_fp is not None else None
        return ImageSource("items", n, fp, labels, root, f"{cls} via image_fn", _get=image_fn,
                           class_folders=folders)
    found = _image_array(ds, names)
    if found is not None:
        data, chw = found
        fp = f"array:{_array_digest(data)}"
        return ImageSource("array", n, fp, labels, root, f"{cls}.data {tuple(data.shape)}", _array=data, _chw=chw,
                           class_folders=folders)
    if _is_samples(samples, n):
        paths = [os.fspath(s[0]) for s in samples]
        fp = f"files:{_files_digest(paths, root)}"
        loader = getattr(ds, "loader", None)
        if loader is None or (getattr(loader, "__module__", "") == "torchvision.datasets.folder"
                              and getattr(loader, "__name__", "") in _FILE_LOADERS):
            return ImageSource("files", n, fp, labels, root, f"{cls}.samples ({n} files)", _paths=paths,
                               class_folders=True)
        # A custom loader decides what the file holds; call it on the path (still no transform).
        return ImageSource("items", n, fp, labels, root, f"{cls}.samples via {cls}.loader",
                           _get=lambda j, _p=paths, _l=loader: _l(_p[j]), class_folders=True)
    if _has_transform(ds):
        logger.warning("%s has a transform set and no raw-image fast path: hashing ds[i][0] runs it, and random "
                       "augmentations make hashes meaningless. Pass image_fn=lambda i: <raw image of item i>.", cls)
    fp = f"user:{cls}:{n}:{root}:{user_fp}" if user_fp is not None else None
    return ImageSource("items", n, fp, labels, root, f"{cls}[i] (getitem)",
                       _get=lambda j, _ds=ds: _first_image(_ds[j]), class_folders=folders)


def source_of(ds, image_fn: Callable[[int], Any] | None = None, *, fingerprint: str | None = None) -> ImageSource:
    """Describe how to read the raw images, labels and fingerprint of a map-style dataset.

    Args:
        ds: a map-style dataset (``__getitem__`` + ``__len__``), e.g. a torchvision dataset,
            an ``ImageFolder``, a ``Subset`` of one.
        image_fn: ``image_fn(i) -> image`` returning the *raw* image of item ``i`` of ``ds``
            (a PIL image, a uint8 array ``(H, W[, C])``, a tensor, or a file path). Takes
            precedence over every fast path.
        fingerprint: a string that identifies the data for caching. Mixed into the automatic
            fingerprint of array/files sources; required for caching ``image_fn`` and
            ``ds[i]`` sources (without it they are never cached).

    Returns:
        An :class:`ImageSource`.

    Raises:
        TypeError: ``ds`` is an ``IterableDataset`` or has no length (use :mod:`torch_dedup.wds`).

    Example:
        >>> import numpy as np, torch
        >>> class Toy(torch.utils.data.Dataset):
        ...     data = np.zeros((4, 8, 8), np.uint8)
        ...     def __len__(self): return 4
        ...     def __getitem__(self, i): return self.data[i], 0
        >>> src = source_of(Toy())
        >>> src.kind, src.n, src.array_batch(0, 2).shape
        ('array', 4, (2, 8, 8))
    """
    _check_map_style(ds)
    try:
        from torch.utils.data import Subset
    except ImportError:  # pragma: no cover
        Subset = ()
    if image_fn is None and isinstance(ds, Subset):
        base = source_of(ds.dataset, fingerprint=fingerprint)
        pos = np.asarray(ds.indices, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < -base.n or pos.max() >= base.n):
            raise IndexError(f"Subset indices span {pos.min()}..{pos.max()}, outside the {base.n}-item dataset")
        pos = np.where(pos < 0, pos + base.n, pos)
        absolute = pos if base._indices is None else base._indices[pos]
        fp = None if base.fingerprint is None else f"{base.fingerprint}|subset:{_blake(pos.tobytes())}"
        labels = None if base.labels is None else base.labels[pos]
        return ImageSource(base.kind, int(pos.size), fp, labels, base.root, f"Subset of {base.description}",
                           _array=base._array, _chw=base._chw, _indices=absolute, _paths=base._paths,
                           _get=base._get, class_folders=base.class_folders)
    src = _source(ds, image_fn, fingerprint)
    if fingerprint is not None and src.fingerprint is not None and not src.fingerprint.startswith("user:"):
        src = ImageSource(src.kind, src.n, f"{src.fingerprint}|user:{fingerprint}", src.labels, src.root,
                          src.description, src._array, src._chw, src._indices, src._paths, src._get,
                          src.class_folders)
    return src

