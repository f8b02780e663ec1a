"""Looking through dataset wrappers at any depth: ``Subset`` (``random_split``), ``DedupDataset``,
any dataset with the ``Subset`` protocol (``.dataset`` + ``.indices``) and ``ConcatDataset``.

:func:`_tree` walks a dataset's wrappers down to the datasets underneath, which the leaf
reader it is given (``torch_dedup.sources._leaf``) describes; a subset becomes a *view*
(``base`` + indices) of the one dataset underneath, so it shares its base's hashes, and a
``ConcatDataset`` joins its parts' sources. :func:`torch_dedup.sources.source_of` and
:func:`torch_dedup.sources.labels_of` are the public entry points.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np

from .image_source import ImageSource

__all__: list[str] = []


def _blake(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


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


def _subset_of(ds) -> tuple[Any, np.ndarray] | None:
    """``(inner dataset, int64 indices)`` of a dataset that follows the ``Subset`` protocol, else ``None``.

    ``torch.utils.data.Subset`` (``random_split`` returns those), torch_dedup's ``DedupDataset``
    and any dataset whose ``.dataset`` is a dataset and whose ``.indices`` are ``len(ds)`` ints.
    """
    inner, indices = getattr(ds, "dataset", None), getattr(ds, "indices", None)
    if inner is None or indices is None or callable(indices) or not hasattr(inner, "__getitem__"):
        return None
    try:
        pos = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices).reshape(-1)
    except (TypeError, ValueError):
        return None
    if pos.dtype.kind not in "iu" and not (pos.size == 0 and pos.dtype.kind == "f"):
        return None
    if pos.size != len(ds):
        return None
    return inner, pos.astype(np.int64)


def _concat_of(ds) -> list | None:
    """The parts of a ``torch.utils.data.ConcatDataset``, else ``None``."""
    try:
        from torch.utils.data import ConcatDataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return list(ds.datasets) if isinstance(ds, ConcatDataset) else None


def _positions(pos: np.ndarray, n: int, cls: str) -> np.ndarray:
    """``pos`` with negative indices resolved (as Python indexing does); out of range is an error."""
    if pos.size and (pos.min() < -n or pos.max() >= n):
        raise IndexError(f"{cls}.indices span {pos.min()}..{pos.max()}, outside its {n}-item dataset; "
                         f"indices must lie in [-{n}, {n - 1}]")
    return np.where(pos < 0, pos + n, pos)


def _view_fingerprint(base: ImageSource, absolute: np.ndarray) -> str | None:
    return None if base.fingerprint is None else f"{base.fingerprint}|subset:{_blake(absolute.tobytes())}"


def _concat(parts: list[ImageSource], cls: str) -> ImageSource:
    """One source for a ``ConcatDataset``: a view when every part is (a view of) the same dataset."""
    n = sum(p.n for p in parts)
    bases = [p if p.base is None else p.base for p in parts]
    if parts and all(b is bases[0] for b in bases):
        base = bases[0]
        absolute = np.concatenate([np.arange(p.n, dtype=np.int64) if p.base is None else p.base_indices
                                   for p in parts]).astype(np.int64)
        return base.view(absolute, _view_fingerprint(base, absolute), f"{cls} of {base.description}")
    prints = [p.fingerprint for p in parts]
    fp = None if any(f is None for f in prints) else f"concat:{_blake(*prints)}"
    labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
    roots = {p.root for p in parts}
    root = roots.pop() if len(roots) == 1 else None
    folders = root is not None and any(p.class_folders for p in parts)
    offsets = np.cumsum([0] + [p.n for p in parts]).astype(np.int64)
    desc = f"{cls} of {len(parts)} datasets ({', '.join(p.description for p in parts[:3])}{', ...' if len(parts) > 3 else ''})"
    kinds = {p.kind for p in parts}
    if kinds == {"array"} and len({p.array_batch(0, 0).shape[1:] for p in parts}) == 1:
        return ImageSource("array", n, fp, labels, root, desc, class_folders=folders, _parts=tuple(parts),
                           _offsets=offsets)
    if kinds == {"files"}:
        return ImageSource("files", n, fp, labels, root, desc, _paths=[q for p in parts for q in p.paths()],
                           class_folders=folders)

    def get(j: int, _parts=tuple(parts), _offsets=offsets):
        k = int(np.searchsorted(_offsets, j, side="right")) - 1
        return _parts[k].item(j - int(_offsets[k]))

    return ImageSource("items", n, fp, labels, root, desc, _get=get, class_folders=folders)


def _tree(ds, fingerprint: str | None, memo: dict,
          leaf: Callable[[Any, str | None], ImageSource]) -> ImageSource:
    """The source of ``ds``, looking through ``Subset``-protocol wrappers and ``ConcatDataset`` at any depth.

    ``leaf(dataset, fingerprint)`` describes each dataset that wraps nothing (``torch_dedup.sources._leaf``);
    it is passed in so that this module never imports :mod:`torch_dedup.sources`, which imports it.
    """
    _check_map_style(ds)
    if id(ds) in memo:  # the same dataset twice (e.g. two subsets of it): one source, so they share a base
        return memo[id(ds)][1]
    cls = type(ds).__name__
    sub = _subset_of(ds)
    parts = None if sub is not None else _concat_of(ds)
    if sub is not None:
        inner, pos = sub
        inner_src = _tree(inner, fingerprint, memo, leaf)
        pos = _positions(pos, inner_src.n, cls)
        base = inner_src if inner_src.base is None else inner_src.base
        absolute = pos if inner_src.base is None else inner_src.base_indices[pos]
        src = inner_src.view(pos, _view_fingerprint(base, absolute), f"{cls} of {base.description}")
    elif parts is not None:
        src = _concat([_tree(p, fingerprint, memo, leaf) for p in parts], cls)
    else:
        src = leaf(ds, fingerprint)
    memo[id(ds)] = (ds, src)  # holds ds so its id is not reused while memo lives
    return src
