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

Wrappers are looked through at any depth (:mod:`torch_dedup.source_wrappers`), so their
transforms never reach the hashes: ``torch.utils.data.Subset`` (and so ``random_split``),
torch_dedup's ``DedupDataset`` and any
dataset with a ``.dataset`` and ``.indices`` of its length (the ``Subset`` protocol) map
through their indices; a ``ConcatDataset`` joins its parts' sources. The result is a *view*
(``base`` + indices) of the one dataset underneath when there is one, so subsets share
their base's hashes.

Fingerprints identify content cheaply so a cached sidecar is only reused for the same data:
arrays → shape, dtype and a BLAKE2b digest of the bytes; files → a digest of every file's
(relative path, size, mtime_ns), or with ``fingerprint="content"`` of every file's
(relative path, size, BLAKE2b of its bytes); views add a digest of their indices into the
base. An **items** source cannot be fingerprinted cheaply, so it has *no* fingerprint (no
caching) unless the caller passes ``fingerprint=`` — a string that must change whenever the
data does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .image_source import ImageSource
from .source_wrappers import _check_map_style, _concat_of, _positions, _subset_of, _tree

__all__ = ["CONTENT_FINGERPRINT", "ImageSource", "labels_of", "source_of"]

logger = logging.getLogger(__name__)

_MNIST_FAMILY = {"MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST"}
_FILE_LOADERS = {"default_loader", "pil_loader", "accimage_loader"}
_CHUNK = 8192  # items per digest update: bounded memory for non-contiguous arrays
_READ = 1 << 20  # bytes per read when digesting file contents
_FILES_PER_TASK = 256  # files per thread task when digesting file contents
#: ``fingerprint=`` value that checks every file's bytes instead of its size and mtime.
CONTENT_FINGERPRINT = "content"


def _array_digest(arr: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.shape}|{arr.dtype.str}".encode())
    if arr.flags.c_contiguous:
        h.update(memoryview(arr).cast("B"))
    else:
        for s in range(0, arr.shape[0], _CHUNK):
            h.update(np.ascontiguousarray(arr[s:s + _CHUNK]).data)
    return h.hexdigest()


def _plain_tail(tail: str) -> bool:
    """Whether ``tail`` is already what ``os.path.relpath`` would return for it (no ``.``/``..``
    components, no empty ones)."""
    parts = tail.split(os.sep)
    return all(part not in ("", ".", "..") for part in parts)


def _files_digest(paths: Sequence[str], root: Path | None) -> str:
    h = hashlib.blake2b(digest_size=16)
    # os.path.relpath costs ~10 us a file (two abspath calls): strip the root's prefix when
    # the path starts with it, which is what relpath returns then
    # (torchvision builds every path as os.path.join(root, ...), so the root as given is a
    # prefix); anything with "." / ".." components, doubled or trailing separators takes relpath
    prefix = None if root is None else os.path.join(os.path.normpath(os.fspath(root)), "")
    for p in paths:
        p = os.fspath(p)
        if root is None:
            rel = p
        elif p.startswith(prefix) and _plain_tail(p[len(prefix):]):
            rel = p[len(prefix):]
        else:
            rel = os.path.relpath(p, root)
        try:
            st = os.stat(p)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{rel}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _file_bytes_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ):
                h.update(chunk)
    except OSError as exc:
        return f"unreadable {type(exc).__name__}"
    return h.hexdigest()


def _files_content_digest(paths: Sequence[str], root: Path | None) -> str:
    """A digest of every file's (relative path, size, BLAKE2b of its bytes): catches any rewrite."""
    paths = [os.fspath(p) for p in paths]
    blocks = [paths[i:i + _FILES_PER_TASK] for i in range(0, len(paths), _FILES_PER_TASK)]
    # Reads wait on the disk (or the network) and hashlib releases the GIL on large updates:
    # threads overlap both. Blocks of files per task, as one future per small file costs more
    # than reading it (50,000 CIFAR JPEGs: 0.5 s in blocks, 2-4 s one future per file).
    with ThreadPoolExecutor(max_workers=min(8, len(blocks) or 1)) as pool:
        digests = [d for block in pool.map(lambda b: [_file_bytes_digest(q) for q in b], blocks) for d in block]
    h = hashlib.blake2b(digest_size=16)
    for p, d in zip(paths, digests):
        rel = os.path.relpath(p, root) if root is not None else p
        h.update(f"{rel}\0{d}\n".encode("utf-8", "surrogateescape"))
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

    Read from ``targets``, ``labels`` (SVHN), the class index of ``samples``
    (``DatasetFolder``) or a Hugging Face dataset's ``ClassLabel`` column; a ``Subset``/``DedupDataset`` maps through its indices and a
    ``ConcatDataset`` joins its parts' labels (``None`` if a part has none), at any depth.
    Never loads an image.

    Example:
        >>> import torch
        >>> labels_of(torch.utils.data.TensorDataset(torch.zeros(3))) is None
        True
    """
    sub = _subset_of(ds)
    if sub is not None:
        inner, pos = sub
        base = labels_of(inner)
        return None if base is None else base[_positions(pos, len(base), type(ds).__name__)]
    parts = _concat_of(ds)
    if parts is not None:
        labels = [labels_of(p) for p in parts]
        if any(lab is None for lab in labels):
            return None
        return np.concatenate(labels) if labels else np.zeros(0, np.int64)
    from .hf_datasets import hf_image_column, is_hf_dataset
    if is_hf_dataset(ds):  # its ClassLabel column, read from the stored table
        try:
            return hf_image_column(ds).labels
        except TypeError:  # no Image() column: nothing to hash, so no labels either
            return None
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


def _has_transform(ds) -> bool:
    return getattr(ds, "transform", None) is not None or getattr(ds, "transforms", None) is not None


def _transform_owners(ds) -> list[str]:
    """Where ``ds[i]`` may run a transform: ``ds`` itself, or a dataset it holds as an attribute."""
    cls = type(ds).__name__
    owners = [cls] if _has_transform(ds) else []
    for name, value in sorted(getattr(ds, "__dict__", {}).items()):
        if value is not ds and hasattr(value, "__getitem__") and hasattr(value, "__len__") and _has_transform(value):
            owners.append(f"{cls}.{name} ({type(value).__name__})")
    return owners


def _no_content_check(cls: str, how: str) -> ValueError:
    return ValueError(f"fingerprint={CONTENT_FINGERPRINT!r} checks the bytes of a dataset's image files, but {cls} "
                      f"is read through {how} and has no files to check. Pass fingerprint='<a string that changes "
                      f"whenever the data does>' (a version tag, a manifest hash) to cache its hashes, or no "
                      f"fingerprint (they are then recomputed every time).")


def _source(ds, image_fn, user_fp: str | None) -> ImageSource:
    n = len(ds)
    names = _tv_names(ds)
    cls = type(ds).__name__
    root = _root_of(ds)
    labels = labels_of(ds)
    samples = getattr(ds, "samples", None)
    content = user_fp == CONTENT_FINGERPRINT
    # an ImageFolder-style root (its sub-folders are the classes), whichever way the images are read
    folders = _is_samples(samples, n) or "DatasetFolder" in names
    if image_fn is not None:
        if content:
            raise _no_content_check(cls, "image_fn")
        fp = f"user:{cls}:{n}:{root}:{user_fp}" if user_fp is not None else None
        return ImageSource("items", n, fp, labels, root, f"{cls} via image_fn", _get=image_fn,
                           class_folders=folders)
    found = _image_array(ds, names)
    if found is not None:
        data, chw = found
        fp = f"array:{_array_digest(data)}"  # already a digest of the content: "content" changes nothing
        return ImageSource("array", n, fp, labels, root, f"{cls}.data {tuple(data.shape)}", _array=data, _chw=chw,
                           class_folders=folders)
    if _is_samples(samples, n):
        paths = [os.fspath(s[0]) for s in samples]
        fp = f"files-content:{_files_content_digest(paths, root)}" if content else f"files:{_files_digest(paths, root)}"
        loader = getattr(ds, "loader", None)
        if loader is None or (getattr(loader, "__module__", "") == "torchvision.datasets.folder"
                              and getattr(loader, "__name__", "") in _FILE_LOADERS):
            return ImageSource("files", n, fp, labels, root, f"{cls}.samples ({n} files)", _paths=paths,
                               class_folders=True)
        # A custom loader decides what the file holds; call it on the path (still no transform).
        return ImageSource("items", n, fp, labels, root, f"{cls}.samples via {cls}.loader",
                           _get=lambda j, _p=paths, _l=loader: _l(_p[j]), class_folders=True)
    if content:
        raise _no_content_check(cls, "ds[i] (it has no .data array or .samples files)")
    owners = _transform_owners(ds)
    if owners:
        logger.warning("%s has no raw-image fast path, so hashing reads ds[i][0], which runs the transform of %s: "
                       "random augmentations make hashes meaningless and normalised tensors are refused. Pass "
                       "image_fn=lambda i: <raw image of item i>, or hash a copy of the dataset built without "
                       "its transform.", cls, ", ".join(owners))
    fp = f"user:{cls}:{n}:{root}:{user_fp}" if user_fp is not None else None
    return ImageSource("items", n, fp, labels, root, f"{cls}[i] (getitem)",
                       _get=lambda j, _ds=ds: _first_image(_ds[j]), class_folders=folders)


def _leaf(ds, fingerprint: str | None) -> ImageSource:
    # a Hugging Face dataset anywhere in the tree (also inside a Subset or ConcatDataset)
    if (hf := _hf_source(ds, fingerprint)) is not None:
        return hf
    src = _source(ds, None, fingerprint)
    if fingerprint not in (None, CONTENT_FINGERPRINT) and src.fingerprint is not None \
            and not src.fingerprint.startswith("user:"):
        src = dataclasses.replace(src, fingerprint=f"{src.fingerprint}|user:{fingerprint}")
    return src


def source_of(ds, image_fn: Callable[[int], Any] | None = None, *, fingerprint: str | None = None) -> ImageSource:
    """Describe how to read the raw images, labels and fingerprint of a map-style dataset.

    ``Subset`` (``random_split``), ``DedupDataset`` and ``ConcatDataset`` are looked through
    at any depth, so the transforms of every dataset in the chain are bypassed: the images
    come from the datasets underneath (see the module doc). Where no raw-image path exists
    (``ds[i][0]`` is read), a transform on the dataset or on a dataset it holds is reported
    with a WARNING that names the fix.

    Args:
        ds: a map-style dataset (``__getitem__`` + ``__len__``), e.g. a torchvision dataset,
            an ``ImageFolder``, a ``Subset``/``ConcatDataset`` of them.
        image_fn: ``image_fn(i) -> image`` returning the *raw* image of item ``i`` of ``ds``
            (a PIL image, a uint8 array ``(H, W[, C])``, a tensor, or a file path). Takes
            precedence over every fast path.
        fingerprint: a string that identifies the data for caching. Mixed into the automatic
            fingerprint of array/files sources; required for caching ``image_fn`` and
            ``ds[i]`` sources (without it they are never cached). The value ``"content"``
            instead makes file datasets fingerprinted by their files' bytes (BLAKE2b of every
            file: a rewrite that keeps size and mtime is caught; costs one read of the data).

    Returns:
        An :class:`ImageSource`.

    Raises:
        TypeError: ``ds`` (or a dataset inside it) is an ``IterableDataset`` or has no length
            (use :mod:`torch_dedup.wds`).
        IndexError: a ``Subset``'s indices fall outside its dataset.
        ValueError: ``fingerprint="content"`` for data that is not read from files.

    Example:
        >>> import numpy as np, torch
        >>> class Toy(torch.utils.data.Dataset):
        ...     data = np.zeros((4, 8, 8), np.uint8)
        ...     def __len__(self): return 4
        ...     def __getitem__(self, i): return self.data[i], 0
        >>> src = source_of(Toy())
        >>> src.kind, src.n, src.array_batch(0, 2).shape
        ('array', 4, (2, 8, 8))
        >>> sub = source_of(torch.utils.data.Subset(Toy(), [3, 1]))
        >>> sub.base.n, sub.base_indices.tolist()
        (4, [3, 1])
    """
    _check_map_style(ds)
    if image_fn is None:
        return _tree(ds, fingerprint, {}, _leaf)
    src = _source(ds, image_fn, fingerprint)
    if fingerprint is not None and src.fingerprint is not None and not src.fingerprint.startswith("user:"):
        src = dataclasses.replace(src, fingerprint=f"{src.fingerprint}|user:{fingerprint}")
    return src


def _hf_source(ds, fingerprint: str | None) -> ImageSource | None:
    """A Hugging Face ``datasets.Dataset`` read from its stored image column (never its transform or
    format), labelled from its ``ClassLabel`` column, fingerprinted by its own ``_fingerprint``; ``None``
    for any other dataset. See :mod:`torch_dedup.hf_datasets`."""
    from .hf_datasets import hf_image_column
    col = hf_image_column(ds)
    if col is None:
        return None
    fp = col.fingerprint
    if fp is not None and fingerprint not in (None, CONTENT_FINGERPRINT):
        fp = f"{fp}|user:{fingerprint}"
    return ImageSource("items", len(ds), fp, col.labels, None, col.description, _get=col.get)
