"""ImageSource: how to read the raw images, labels and fingerprint of a map-style dataset.

The one data type of the sources layer. :func:`torch_dedup.sources.source_of` builds it for
a dataset (the leaf readers in :mod:`torch_dedup.sources`, the wrappers looked through in
:mod:`torch_dedup.source_wrappers`); hashing reads images through it. See
:mod:`torch_dedup.sources` for the kinds (array, files, items), views and fingerprints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["ImageSource"]


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
    # A view: item i is item _indices[i] of _base (whose storage fields this source shares).
    _base: ImageSource | None = field(default=None, repr=False)
    # An array concatenation: the parts' rows in turn (_offsets: each part's first row, then n).
    _parts: tuple = field(default=(), repr=False)
    _offsets: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.n

    @property
    def base(self) -> ImageSource | None:
        """The whole dataset this source is a view of (``None``: it is a whole dataset itself)."""
        return self._base

    @property
    def base_indices(self) -> np.ndarray | None:
        """``int64`` positions of this view's items in :attr:`base` (``None`` when not a view)."""
        return None if self._base is None else self._indices

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.n:
            raise ValueError(f"range [{start}, {stop}) must satisfy 0 <= start <= stop <= n={self.n}")

    def _stored_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows of the stored array(s) (positions before ``_indices``), channels last, 1 channel dropped."""
        if self._parts:
            part = np.searchsorted(self._offsets, rows, side="right") - 1
            first = self._parts[0]._stored_rows(np.zeros(0, np.int64))
            out = np.empty((rows.size, *first.shape[1:]), dtype=np.uint8)
            for k in np.unique(part).tolist():
                sel = part == k
                sub = self._parts[k]
                local = rows[sel] - self._offsets[k]
                out[sel] = sub._stored_rows(local if sub._indices is None else sub._indices[local])
            return out
        batch = self._array[rows]
        if self._chw:
            batch = batch.transpose(0, 2, 3, 1)
        if batch.ndim == 4 and batch.shape[3] == 1:
            batch = batch[..., 0]
        return batch

    def array_batch(self, start: int, stop: int) -> np.ndarray:
        """Items ``start..stop-1`` of an **array** source as contiguous uint8 ``(m, H, W)`` or ``(m, H, W, 3)``."""
        if self.kind != "array":
            raise TypeError(f"array_batch needs an array source, this one is {self.kind!r}")
        self._check_range(start, stop)
        if self._indices is None and not self._parts:
            batch = self._stored_rows(slice(start, stop))
        else:
            rows = np.arange(start, stop) if self._indices is None else self._indices[start:stop]
            batch = self._stored_rows(rows)
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

    def view(self, positions: np.ndarray, fingerprint: str | None, description: str) -> ImageSource:
        """The items ``positions`` (``int64``, each in ``[0, n)``) of this source, as a view of its base."""
        base = self if self._base is None else self._base
        absolute = positions if self._indices is None else self._indices[positions]
        labels = None if self.labels is None else self.labels[positions]
        return ImageSource(self.kind, int(positions.size), fingerprint, labels, base.root, description,
                           _array=base._array, _chw=base._chw, _indices=absolute, _paths=base._paths,
                           _get=base._get, class_folders=base.class_folders, _base=base, _parts=base._parts,
                           _offsets=base._offsets)
