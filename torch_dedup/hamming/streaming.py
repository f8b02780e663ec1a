"""The keep decision in bounded memory (layer 2).

:mod:`torch_dedup.hamming.cluster` holds every distinct-value pair at once when they fit
its ``memory_limit``; past it, it decides here instead, from pairs the search streams
(:func:`torch_dedup.hamming.search._stream_distinct`): greedy in windows of priority
order, components as union-finds folded while the search runs. Same decisions, bounded
memory. :func:`_collect_pairs` is the held side of that boundary: pairs gathered up to a
cap, :class:`_PairLimit` past it.
"""

from __future__ import annotations

import math

import numpy as np

from . import _cluster_kernels as _k
from .search import _pair_fraction, _stream_distinct


class _PairLimit(Exception):
    """A search passed the pair cap of its caller (who streams instead)."""


def _collect_pairs(rows: np.ndarray, t: int, cap: int | None, cls: np.ndarray | None, workers: int, *,
                   sort: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs ``i < j`` within ``t`` (same ``cls`` only, when given), int64, sorted when ``sort``.

    Held compactly while the search runs (int32 rows, uint16 distances: 10 bytes a pair);
    :class:`_PairLimit` as soon as more than ``cap`` pairs are found.
    """
    parts = []
    count = 0
    small = len(rows) < 2**31 - 1

    def consume(ii, jj, dd):
        nonlocal count
        if cls is not None:
            same = cls[ii] == cls[jj]
            ii, jj, dd = ii[same], jj[same], dd[same]
        count += len(ii)
        if cap is not None and count > cap:
            raise _PairLimit(count)
        if len(ii):
            it = np.int32 if small else np.int64
            parts.append((ii.astype(it), jj.astype(it), dd.astype(np.uint16)))

    _stream_distinct(rows, None, t, consume, workers=workers)
    if not parts:
        e = np.zeros(0, np.int64)
        return e, e.copy(), e.copy()
    ii, jj, dd = (np.concatenate([p[k] for p in parts]) for k in range(3))
    parts.clear()  # free the chunks before the sort
    if sort:
        order = np.argsort(ii.astype(np.int64) * len(rows) + jj)
        ii, jj, dd = ii[order], jj[order], dd[order]
    return ii.astype(np.int64), jj.astype(np.int64), dd.astype(np.int64)


def _greedy_streamed(rows: np.ndarray, cls: np.ndarray | None, excluded: np.ndarray, t: int, cap: int,
                     workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_k.greedy_keys` without holding the pairs: keys decided in windows of priority order.

    A window's keys need only two things: the pairs inside the window, held (at most
    ``cap``, the window shrinks until they fit), and for each key the smallest *kept*
    key before the window within ``t``, folded from a streamed query against the kept
    keys (kept keys are pairwise more than ``t`` apart, so there are few at large
    thresholds, where pairs are many). Exactly the decision of the materialised path.
    """
    n = len(rows)
    kept = np.zeros(n, np.bool_)
    rep = np.full(n, -1, np.int64)
    rep_dist = np.zeros(n, np.int16)
    live = np.flatnonzero(~excluded)
    if t == 0:  # distinct keys are never within 0 (per_class: same value means another class)
        kept[live] = True
        return kept, rep, rep_dist
    frac = _pair_fraction(rows[live], None, t)
    width = len(live) if frac * len(live) ** 2 / 2 <= cap else max(64, int(math.sqrt(2 * cap / frac)))
    use_cls = cls is not None
    cls = np.zeros(n, np.int64) if cls is None else cls
    kept_ids = np.zeros(0, np.int64)
    pos = 0
    while pos < len(live):
        w = live[pos:pos + width]
        wrows = np.ascontiguousarray(rows[w])
        try:
            pi, pj, pd = _collect_pairs(wrows, t, cap, cls[w] if use_cls else None, workers, sort=False)
        except _PairLimit:
            width = max(1, width // 4)
            continue
        prior_j = np.full(len(w), -1, np.int64)
        prior_d = np.zeros(len(w), np.int64)
        if len(kept_ids):
            cw, ck = cls[w], cls[kept_ids]
            _stream_distinct(wrows, np.ascontiguousarray(rows[kept_ids]), t,
                             lambda ii, jj, dd: _k.fold_lowest(ii, jj, dd, cw, ck, use_cls, prior_j, prior_d),
                             workers=workers)
            prior_j = np.where(prior_j >= 0, kept_ids[np.maximum(prior_j, 0)], -1)
        _k.greedy_window(w, prior_j, prior_d, pi, pj, pd, kept, rep, rep_dist)
        kept_ids = np.concatenate([kept_ids, w[kept[w]]])
        pos += len(w)
    return kept, rep, rep_dist


def _components_streamed(rows: np.ndarray, cls: np.ndarray | None, excl_level: np.ndarray, levels: np.ndarray,
                         workers: int) -> np.ndarray:
    """One union-find per threshold in ``levels`` (``(L, K)`` parents), the pairs folded as the
    search streams them: memory ``8 * L * K`` bytes whatever the pair count."""
    n = len(rows)
    parents = np.tile(np.arange(n, dtype=np.int64), (len(levels), 1))
    use_cls = cls is not None
    cls = np.zeros(n, np.int64) if cls is None else cls
    levels = np.ascontiguousarray(levels, np.int64)
    _stream_distinct(rows, None, int(levels.max()) if len(levels) else 0,
                     lambda ii, jj, dd: _k.union_levels(parents, levels, ii, jj, dd, excl_level, cls, use_cls),
                     workers=workers)
    return parents
