"""Kept counts at every threshold from one search: the threshold sweep (layer 2).

:func:`sweep_thresholds` (and per class, :func:`sweep_thresholds_by_class`) searches
once at the largest threshold and re-runs the keep decision per level in numba;
:func:`~torch_dedup.hamming.cluster.find_duplicates` fills ``plan.sweep`` and
``plan.sweep_pairs`` (pairs per distance) from the same pieces on its own key graph.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _cluster_kernels as _k
from . import _key_graph
from ._key_graph import (
    DEFAULT_MEMORY_LIMIT,
    _check_memory_limit,
    _Graph,
    _graph,
    _int_arg,
    _order,
    _validate,
    _warn_threshold,
)
from ._search_io import _check_workers
from .search import _stream_distinct
from .streaming import _components_streamed, _greedy_streamed

__all__ = ["ClassSweep", "sweep_thresholds", "sweep_thresholds_by_class"]


def _sweep_counts(g: _Graph, policy: str, max_t: int, memory_limit: int | None) -> np.ndarray:
    """Kept keys per class at every threshold ``0..max_t``: ``(max_t + 1, n_classes)``."""
    if not g.streamed:
        kernel = _k.sweep_greedy if policy == "greedy" else _k.sweep_components
        return kernel(g.indptr, g.nbr, g.dist, g.excl_level, g.key_class, g.n_classes, max_t)
    workers = _check_workers(None)
    cls = g.key_class if g.per_class else None
    out = np.zeros((max_t + 1, g.n_classes), np.int64)
    if policy == "greedy":  # one streamed greedy per level (kept sets are not monotone in t)
        for s in range(max_t + 1):
            cap = memory_limit // _key_graph._PAIR_BYTES
            kept = _greedy_streamed(g.key_rows, cls, g.excl_level <= s, s, cap, workers)[0]
            out[s] = np.bincount(g.key_class[kept], minlength=g.n_classes)
        return out
    levels = np.arange(max_t + 1, dtype=np.int64)
    parents = _components_streamed(g.key_rows, cls, g.excl_level, levels, workers)
    for s in range(max_t + 1):
        roots = _k.component_leaders(parents[s], g.excl_level, s) == np.arange(len(g.key_rows))
        out[s] = np.bincount(g.key_class[roots], minlength=g.n_classes)
    return out


def _pair_counts(g: _Graph, max_t: int) -> np.ndarray:
    """Item pairs ``i < j`` at exactly each distance ``0..max_t``, ``(max_t + 1,)`` int64.

    Pairs of hashed (valid) items, ``against`` leaks included; under ``per_class`` only
    pairs of one label, the only ones that can be duplicates. Exact either way: held
    pairs are counted in one pass over the key CSR; streamed ones (past ``memory_limit``)
    in one more search at ``max_t``, folded into the histogram as they stream, so nothing
    is held and nothing is estimated.
    """
    mult = np.bincount(g.item_key, minlength=len(g.best)).astype(np.int64)
    if not g.streamed:
        return _k.pair_histogram_csr(g.indptr, g.nbr, g.dist, mult, max_t)
    out = np.zeros(max_t + 1, np.int64)
    out[0] = int((mult * (mult - 1) // 2).sum())  # inner pairs of a key: one hash value
    _stream_distinct(g.key_rows, None, max_t,
                     lambda ii, jj, dd: _k.pair_histogram_edges(ii, jj, dd, mult, g.key_class, g.per_class,
                                                                max_t, out),
                     workers=_check_workers(None))
    return out


class ClassSweep(NamedTuple):
    """Per-class sweep: label values and kept counts per threshold.

    Attributes:
        classes: ``(C,)`` int64 label values, ascending.
        kept: ``(T+1, C)`` int64: items of each class kept at thresholds ``0..T``.
    """

    classes: np.ndarray
    kept: np.ndarray


def _sweep(hashes, max_threshold, policy, priority, labels, per_class, valid, memory_limit):
    a = _validate(hashes, 0, policy, priority, labels, per_class, None, valid)
    max_t = _int_arg("max_threshold", max_threshold, 0, a.bits)
    memory_limit = _check_memory_limit(memory_limit)
    _warn_threshold("max_threshold", max_t, a.bits, limit=0.5)
    a.threshold = max_t
    g, _ = _graph(a, max_t, lambda vidx: _order(a.priority, vidx), memory_limit)
    return g, _sweep_counts(g, a.policy, max_t, memory_limit).astype(np.int64)


def sweep_thresholds(hashes, max_threshold, *, policy="greedy", priority=None, labels=None, per_class=False,
                     valid=None, memory_limit=DEFAULT_MEMORY_LIMIT) -> np.ndarray:
    """Kept count at every threshold ``0..max_threshold`` from one search.

    ``result[t]`` equals ``find_duplicates(hashes, t, ...).n_kept`` for the same
    arguments; the search runs once at ``max_threshold`` and the keep decision is
    re-run per level in numba (levels in parallel).

    Args:
        hashes: ``(N,)`` or ``(N, W)`` uint64.
        max_threshold: largest threshold, an int in ``[0, 64 * W]``.
        policy, priority, labels, per_class, valid, memory_limit: as in :func:`find_duplicates`
            (past ``memory_limit`` the pairs stream: greedy re-runs the search per level).

    Returns:
        ``(max_threshold + 1,)`` int64 kept counts.

    Raises:
        ValueError: a bad argument.

    Example:
        >>> import numpy as np
        >>> sweep_thresholds(np.array([0, 1, 3, 7], dtype=np.uint64), 2).tolist()
        [4, 2, 2]
    """
    return _sweep(hashes, max_threshold, policy, priority, labels, per_class, valid, memory_limit)[1].sum(axis=1)


def sweep_thresholds_by_class(hashes, max_threshold, *, labels, policy="greedy", priority=None, per_class=False,
                              valid=None, memory_limit=DEFAULT_MEMORY_LIMIT) -> ClassSweep:
    """Kept count per class at every threshold ``0..max_threshold`` from one search.

    Args:
        hashes: ``(N,)`` or ``(N, W)`` uint64.
        max_threshold: largest threshold.
        labels: ``(N,)`` int class labels (required).
        policy, priority, per_class, valid, memory_limit: as in :func:`find_duplicates`.

    Returns:
        :class:`ClassSweep` ``(classes, kept)``; ``kept[t, c]`` is the number of kept
        items of label ``classes[c]`` at threshold ``t``; rows sum to
        :func:`sweep_thresholds`.

    Raises:
        ValueError: a bad argument, or no labels.

    Example:
        >>> import numpy as np
        >>> r = sweep_thresholds_by_class(np.array([0, 1], np.uint64), 1, labels=np.array([3, 5]))
        >>> r.classes.tolist(), r.kept.tolist()
        ([3, 5], [[1, 1], [1, 0]])
    """
    if labels is None:
        raise ValueError("labels= is required: an (N,) int array of class labels")
    g, counts = _sweep(hashes, max_threshold, policy, priority, labels, per_class, valid, memory_limit)
    return ClassSweep(g.classes.astype(np.int64), counts[:, :len(g.classes)])
