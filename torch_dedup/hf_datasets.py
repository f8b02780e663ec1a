"""Hugging Face ``datasets``: read an image column as stored, its ClassLabel labels and its fingerprint.

A ``datasets.Dataset`` carries its images in an Arrow column of ``Image()`` feature (a struct
of encoded ``bytes`` and/or a file ``path``), whatever it returns from ``ds[i]``: a
``with_transform``/``set_transform`` (random augmentations), ``set_format("torch")`` or
``Image(decode=False)`` only change what indexing hands out. This module reads the stored
struct through an Arrow-format view, so hashing sees the stored image and never a transform,
labels come from a ``ClassLabel`` column, and a fingerprint built like the dataset's own
``_fingerprint`` from its Arrow data and row mapping (every ``map``/``filter``/``select``/``cast``
changes it; ``with_transform``/``set_format`` do not) keys the hash sidecar.

``datasets`` is imported lazily, here only: a dataset is recognised by its class's module
first, so nothing is imported for other datasets. Streaming (``datasets.IterableDataset``)
datasets have no length or random access; :func:`check_not_streaming` says what works instead.

Layer 3 (imported by ``sources``; imports nothing of torch_dedup).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["HFImageColumn", "check_not_streaming", "hf_image_column", "is_hf_dataset"]

_PREFERRED = ("image", "img", "jpg", "png", "picture")


def _from_datasets(obj: Any, name: str) -> bool:
    return any(c.__name__ == name and c.__module__.split(".")[0] == "datasets" for c in type(obj).__mro__)


def is_hf_dataset(ds: Any) -> bool:
    """Whether ``ds`` is a (map-style) Hugging Face ``datasets.Dataset``; imports nothing."""
    return _from_datasets(ds, "Dataset")


def check_not_streaming(ds: Any, owner: str) -> None:
    """Raise a clear error for a streaming Hugging Face dataset.

    Raises:
        TypeError: ``ds`` is a ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``).
    """
    if _from_datasets(ds, "IterableDataset"):
        raise TypeError(
            f"{owner} needs a map-style dataset, but {type(ds).__name__} is a streaming Hugging Face dataset "
            f"(no length, no random access), so its items cannot be hashed up front or sampled by index. Load "
            f"it without streaming=True (a memory-mapped datasets.Dataset works, hashed from its stored image "
            f"column), or write it to webdataset shards and deduplicate the stream with torch_dedup.wds "
            f"(plan_shards + the streaming filter). See docs/integrations.md.")


@dataclass(frozen=True)
class HFImageColumn:
    """How to read one ``datasets.Dataset``'s stored images.

    Attributes:
        column: the ``Image()`` column read.
        fingerprint: ``"hf:<digest of the stored data>:<column>"`` (see :func:`_content_fingerprint`).
        labels: ``int64`` labels from a ``ClassLabel`` column, or ``None``.
        label_column: the ``ClassLabel`` column's name, or ``None``.
        get: ``get(i)`` -> the stored image of row ``i`` (a lazily decoded PIL image, or a path).
        description: e.g. ``"datasets.Dataset['image'] (stored bytes)"``.
    """

    column: str
    fingerprint: str | None
    labels: np.ndarray | None
    label_column: str | None
    get: Callable[[int], Any]
    description: str


def _pick(features: dict, kind: type) -> str | None:
    names = [k for k, f in features.items() if isinstance(f, kind)]
    for preferred in ("label", "labels", *_PREFERRED):
        if preferred in names:
            return preferred
    return names[0] if names else None


class _StoredImage:
    """``get(i)`` over an Arrow-format view of the dataset: the stored struct, decoded by PIL lazily."""

    def __init__(self, raw, column: str):
        self.raw, self.column = raw, column

    def __call__(self, i: int):
        from PIL import Image
        cell = self.raw[int(i)][self.column].to_pylist()[0]
        if cell is None:
            raise ValueError(f"row {i} has no image in column {self.column!r}")
        if cell.get("bytes") is not None:
            return Image.open(io.BytesIO(cell["bytes"]))
        if cell.get("path"):
            return cell["path"]
        raise ValueError(f"row {i} of column {self.column!r} holds neither bytes nor a path")


def _content_fingerprint(ds, raw, column: str) -> str:
    """What the images are: the Arrow data, the row mapping, cache files' mtimes, image files' stats.

    Not ``ds._fingerprint`` itself: ``with_transform``/``set_format`` change it although they
    change nothing stored, so a plan made on the raw dataset would be refused for the transformed
    one a loader reads, and every transformed copy would miss the cache. The same ingredients as
    ``datasets``' own fingerprint otherwise: ``select``/``filter``/``map``/``cast`` (any change of
    the table or of the row mapping) change it.
    """
    from datasets.fingerprint import Hasher

    h = Hasher()
    h.update(ds._data)
    h.update(ds._indices)
    for cache_file in ds.cache_files:
        h.update(os.stat(cache_file["filename"]).st_mtime_ns)
    # images stored as paths only: the files' identity is part of the content
    cells = raw.data.column(column).to_pylist() if len(ds) else []
    for cell in cells:
        if cell is not None and cell.get("bytes") is None and cell.get("path"):
            try:
                st = os.stat(cell["path"])
                h.update(f"{cell['path']}\0{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                h.update(f"{cell['path']}\0missing")
    return h.hexdigest()


def hf_image_column(ds: Any, image_column: str | None = None) -> HFImageColumn | None:
    """Describe how to read a Hugging Face dataset's stored images, or ``None`` when ``ds`` is not one.

    Args:
        ds: any dataset; only a ``datasets.Dataset`` gives a result.
        image_column: the ``Image()`` column to read (default: ``"image"``/``"img"``, else the first).

    Returns:
        An :class:`HFImageColumn`, or ``None`` for a dataset that is not a ``datasets.Dataset``.

    Raises:
        TypeError: a ``datasets.Dataset`` without an ``Image()`` column (pass ``image_fn=``).
    """
    if not is_hf_dataset(ds):
        return None
    import datasets

    features = dict(ds.features)
    column = image_column or _pick(features, datasets.Image)
    if column is None or not isinstance(features.get(column), datasets.Image):
        raise TypeError(
            f"Hugging Face dataset with columns {sorted(features)} has no Image() column to hash"
            f"{'' if image_column is None else f' named {image_column!r}'}; cast the image column with "
            f"ds.cast_column(name, datasets.Image()), or pass image_fn=lambda i: <stored image of row i> "
            f"(e.g. ds.with_format(None)[i][name]; never a transformed one).")
    # The Arrow view drops any format and with_transform: it yields the stored {bytes, path} struct.
    raw = ds.with_format("arrow")
    label_column = _pick(features, datasets.ClassLabel)
    labels = None
    if label_column is not None:
        labels = np.asarray(raw[label_column].to_numpy(zero_copy_only=False) if len(ds) else [], dtype=np.int64)
    stored = "paths" if len(ds) and raw[0][column].to_pylist()[0].get("bytes") is None else "stored bytes"
    fp = _content_fingerprint(ds, raw, column)
    return HFImageColumn(column=column, fingerprint=f"hf:{fp}:{column}", labels=labels,
                         label_column=label_column, get=_StoredImage(raw, column),
                         description=f"datasets.Dataset[{column!r}] ({stored})")
