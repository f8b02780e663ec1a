"""DedupDataset: the kept items of a dataset, as a map-style dataset (like ``torch.utils.data.Subset``).

Use it where a sampler cannot be swapped (a trainer that builds its own sampler, a
``random_split``), or to hand a reduced dataset to code that only takes datasets. Item
``i`` is ``ds[kept[i]]``; batched reads go through the base's ``__getitems__`` when it has
one, as ``Subset`` does.

Layer 4.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .options import DedupOptions, options_from
from .planning import resolve_plan
from .errors import DedupError

__all__ = ["DedupDataset"]


class DedupDataset(Dataset):
    """The items of ``ds`` that a :class:`~torch_dedup.plan.DedupPlan` keeps.

    Takes the same dedup options as :class:`~torch_dedup.sampler.DedupSampler` and builds
    (or loads) the plan the same way, hashes computed once across ranks under DDP.

    Args:
        ds: a map-style dataset (has ``__len__`` and ``__getitem__``).
        threshold: Hamming distance at or below which two items are near-duplicates.
        method: hash method (``"phash"``, ``"dhash"``, ``"ahash"``, ``"whash"``).
        hash_size: hash side length (8 gives 64-bit hashes).
        policy: ``"greedy"`` or ``"components"``.
        per_class: only items of the same label can be duplicates of each other.
        labels: per-item labels overriding the dataset's own.
        priority: per-item keep score (higher kept first).
        against: another dataset (e.g. the test set); items near-duplicating it are removed.
        image_fn: ``image_fn(i) -> raw image of item i`` (PIL image, array, tensor or path)
            for datasets with no fast path.
        cache_dir: where hash sidecars go.
        on_error: ``"raise"`` or ``"skip"`` for undecodable images.
        fingerprint: a string identifying the data, needed to cache the hashes of datasets
            read through ``image_fn`` or ``ds[i]`` (they have no cheap automatic fingerprint).
        workers: decode processes for image files (``None``: automatic, in-process for
            small datasets; under DDP this node's cores divided among its ranks).
        views: ``"shift"`` (or ``"shift+rotate"``): also code shifted and cropped views of
            every item, so shifted or cropped copies are found (``DedupOptions.views``;
            docs/hashing.md, "Views").
        options: all the dedup settings above as one :class:`~torch_dedup.options.DedupOptions`
            (then leave the individual settings at their defaults).
        plan: a ready :class:`~torch_dedup.plan.DedupPlan` or the path of a saved one.
        progress: show a progress bar while hashing.

    Attributes:
        dataset: the underlying dataset.
        indices: ``int64`` array (read-only) of the kept items' indices in ``dataset``.

    Raises:
        TypeError: ``ds`` is an ``IterableDataset`` or has no ``__len__``.
        EmptyDedupError: the dataset is empty or nothing would remain.
        PlanError: ``plan`` was made for another dataset or cannot be read.

    Example:
        >>> from torchvision.datasets import CIFAR10  # doctest: +SKIP
        >>> train = DedupDataset(CIFAR10("data", train=True), threshold=6)  # doctest: +SKIP
        >>> len(train), train.report()  # doctest: +SKIP
    """

    def __init__(self, ds, threshold: int = 6, *, method: str = "phash", hash_size: int = 8,
                 policy: str = "greedy", per_class: bool = False, labels=None, priority=None,
                 against=None, image_fn=None, cache_dir: str | os.PathLike | None = None,
                 on_error: str = "raise", fingerprint: str | None = None, workers: int | None = None,
                 views: str | None = None, options: DedupOptions | None = None, plan=None, progress: bool = True) -> None:
        given = dict(threshold=threshold, method=method, hash_size=hash_size, policy=policy, per_class=per_class,
                     labels=labels, priority=priority, against=against, image_fn=image_fn, cache_dir=cache_dir,
                     on_error=on_error, progress=progress, fingerprint=fingerprint, workers=workers, views=views)
        options = options_from(options, given, type(self).__name__)
        resolved = resolve_plan(ds, options, plan=plan, owner=type(self).__name__)
        self.dataset = ds
        self._plan = resolved.plan
        self._summary: str | None = None
        kept = np.ascontiguousarray(resolved.plan.kept_indices, dtype=np.int64)
        kept.setflags(write=False)
        self.indices = kept

    # -- Subset protocol -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.indices)

    def _base_index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer, torch.Tensor)):
            raise TypeError(f"{type(self).__name__} indices must be ints, got {type(i).__name__} {i!r}.")
        i = int(i)
        n = len(self.indices)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {type(self).__name__} of {n} kept items.")
        return int(self.indices[i])

    def __getitem__(self, idx):
        if isinstance(idx, list):
            return self.dataset[[self._base_index(i) for i in idx]]
        return self.dataset[self._base_index(idx)]

    def __getitems__(self, indices: Sequence[int]) -> list:
        # Batched fetch, as torch's Subset: the DataLoader fetcher calls this when present.
        mapped = [self._base_index(i) for i in indices]
        if callable(getattr(self.dataset, "__getitems__", None)):
            return self.dataset.__getitems__(mapped)
        return [self.dataset[i] for i in mapped]

    # -- what the base dataset offers, restricted to the kept items -----------------------

    @property
    def targets(self):
        """Labels of the kept items, as the base's ``targets`` type (list, tensor or array).

        Raises:
            AttributeError: the base dataset has no ``targets``.
        """
        base = getattr(self.dataset, "targets", None)
        if base is None:
            raise AttributeError(f"{type(self.dataset).__name__} has no 'targets', so neither has its DedupDataset")
        if isinstance(base, torch.Tensor):
            return base[torch.from_numpy(self.indices.copy())]
        if isinstance(base, np.ndarray):
            return base[self.indices]
        picked = [base[i] for i in self.indices.tolist()]
        return type(base)(picked) if isinstance(base, (list, tuple)) else picked

    @property
    def classes(self):
        """The base dataset's class names (all of them, also those with no kept item)."""
        if not hasattr(self.dataset, "classes"):
            raise AttributeError(f"{type(self.dataset).__name__} has no 'classes', so neither has its DedupDataset")
        return self.dataset.classes

    @property
    def class_to_idx(self):
        """The base dataset's class-name-to-label map."""
        if not hasattr(self.dataset, "class_to_idx"):
            raise AttributeError(f"{type(self.dataset).__name__} has no 'class_to_idx'")
        return self.dataset.class_to_idx

    # -- the plan ----------------------------------------------------------------------------

    @property
    def plan(self):
        """The :class:`~torch_dedup.plan.DedupPlan` behind this dataset.

        Raises:
            DedupError: in a pickled copy (DataLoader workers get the indices, not the plan).
        """
        if self._plan is None:
            raise DedupError(
                f"this {type(self).__name__} is an unpickled copy (e.g. inside a DataLoader worker) "
                f"and does not carry its DedupPlan; read .plan in the main process, or save it there "
                f"with ds.plan.save(path)."
            )
        return self._plan

    def report(self) -> str:
        """A human summary of the plan (``plan.summary()``); also works in pickled copies."""
        if self._summary is None:
            self._summary = self.plan.summary()
        return self._summary

    def __getstate__(self) -> dict[str, Any]:
        # Workers need the base dataset and the indices, not the O(n) plan arrays.
        state = self.__dict__.copy()
        state["_summary"] = self.report()
        state["_plan"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.dataset).__name__}, kept {len(self.indices)} of {len(self.dataset)})"
