"""Items with several codes: the keep decision when each item also has *views* (layer 2).

A global code changes when an image is shifted by a few pixels or cropped, so such copies
are missed at any threshold that does not also take unrelated images (docs/hashing.md, "Why
1 % is stuck"). The cure measured there is several codes per item: the item's own code and
the codes of *views* of it (shifted and cropped versions, :mod:`torch_dedup.hashing.views`).
Here the distance between two items ``i`` and ``j`` is

    min( d(code_i, code_j),  min_k d(view_ik, code_j),  min_k d(code_i, view_jk) )

— a view is compared with the other item's own code, never with its views (two views
shifted the same way are the two codes again) — and an item's distance to a row ``r`` of
``against`` is ``min(d(code_i, a_r), min_k d(view_ik, a_r))``. Both are found exactly: the
item codes are searched among themselves, and the views against the item codes and against
``against`` (:func:`~torch_dedup.hamming.search.hamming_pairs`), and each item pair keeps
its smallest distance. The keep decision then runs on the same numba kernels as
:func:`~torch_dedup.hamming.cluster.find_duplicates`, with each item its own key.

The threshold sweep (``sweep_max``) and ``leak_pairs`` are those of ``find_duplicates`` on
these distances. What this path does not do is stream: the item pairs are held at once, and
refused above ``memory_limit`` with their count and the fix.
"""

from __future__ import annotations

import logging

import numpy as np

from ..plan import DedupPlan
from . import _cluster_kernels as _k
from . import _key_graph
from ._key_graph import (
    _NEVER,
    DEFAULT_MEMORY_LIMIT,
    _order,
    _plan_args,
    _refuse,
    _warn_threshold,
)
from .search import _pair_fraction, hamming_pairs, popcount64

__all__ = ["find_duplicates_views", "view_distances"]

logger = logging.getLogger("torch_dedup.hamming.cluster")


def _view_rows(views, n: int, words: int) -> np.ndarray:
    v = np.asarray(views)
    if v.dtype != np.uint64:
        raise ValueError(f"views must be a uint64 array of packed codes, got dtype {v.dtype}")
    if v.ndim == 2 and words == 1:
        v = v[:, :, None]
    if v.ndim != 3 or v.shape[0] != n or v.shape[2] != words:
        want = f"({n}, K)" if words == 1 else f"({n}, K, {words})"
        raise ValueError(f"views must have shape {want}: K codes per item, each as wide as the item codes "
                         f"({words} words), got {v.shape}")
    return np.ascontiguousarray(v)


def view_distances(hashes, views, i, j) -> np.ndarray:
    """The item distance above for the item pairs ``(i[p], j[p])`` (brute force over the views).

    Args:
        hashes: ``(N,)``/``(N, W)`` uint64 item codes.
        views: ``(N, K)``/``(N, K, W)`` uint64 view codes.
        i, j: int arrays of item indices, the same length.

    Returns:
        int64 distances, one per pair.

    Example:
        >>> import numpy as np
        >>> h = np.array([0b0000, 0b1111], dtype=np.uint64)
        >>> v = np.array([[0b0111], [0b1111]], dtype=np.uint64)   # item 0's view is 1 bit from item 1
        >>> view_distances(h, v, [0], [1]).tolist()
        [1]
    """
    rows = _key_graph._rows(hashes, "hashes")
    vw = _view_rows(views, len(rows), rows.shape[1])
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    base = popcount64(rows[i] ^ rows[j]).sum(axis=1, dtype=np.int64)
    big = np.iinfo(np.int64).max
    a = popcount64(vw[i] ^ rows[j][:, None, :]).sum(axis=2, dtype=np.int64).min(axis=1, initial=big)
    b = popcount64(rows[i][:, None, :] ^ vw[j]).sum(axis=2, dtype=np.int64).min(axis=1, initial=big)
    return np.minimum(base, np.minimum(a, b))


def _min_pairs(a: np.ndarray, b: np.ndarray, d: np.ndarray, n: int, symmetric: bool):
    """One row per pair with its smallest distance; ``symmetric``: ``(a, b)`` and ``(b, a)`` are one pair."""
    if symmetric:
        a, b = np.minimum(a, b), np.maximum(a, b)
    key = a * n + b
    order = np.lexsort((d, key))
    key, d = key[order], d[order]
    first = np.ones(len(key), np.bool_)
    first[1:] = key[1:] != key[:-1]
    key, d = key[first], d[first]
    return key // n, key % n, d


def find_duplicates_views(hashes, views, threshold=6, *, policy="greedy", priority=None, labels=None,
                          per_class=False, against=None, valid=None, sweep_max=None, leak_pairs=False,
                          provenance=None, settings=None, memory_limit=DEFAULT_MEMORY_LIMIT,
                          workers=None) -> DedupPlan:
    """:func:`~torch_dedup.hamming.cluster.find_duplicates` for items with several codes each.

    Args:
        hashes: ``(N,)``/``(N, W)`` uint64: each item's own code.
        views: ``(N, K)``/``(N, K, W)`` uint64: the codes of K views of each item (rows of
            invalid items are ignored).
        threshold, policy, priority, labels, per_class, against, valid, sweep_max,
        leak_pairs, provenance, settings: as in ``find_duplicates``; distances are the item
            distances of this module's docstring. ``label_conflicts`` lists every
            cross-label *item* pair within the threshold (no grouping by hash value);
            ``sweep_pairs`` counts item pairs.
        memory_limit: bytes of pairs held at once (default 1 GiB; ``None``: no limit);
            above it a ValueError gives the count and the fix (this path does not stream).
        workers: search threads (default: the CPUs this process may use).

    Returns:
        A :class:`~torch_dedup.plan.DedupPlan`; ``settings["views"]`` is K.

    Raises:
        ValueError: a bad argument (names it, its value and what is allowed), or more
            pairs than ``memory_limit`` allows.

    Example:
        >>> import numpy as np
        >>> h = np.array([0b0000_0000, 0b1111_0000, 0b0000_0001], dtype=np.uint64)
        >>> v = np.array([[0b1111_0001], [0b1111_0000], [0b0000_0001]], dtype=np.uint64)
        >>> find_duplicates_views(h, v, threshold=1).keep.tolist()  # item 1 is 1 bit from item 0's view
        [True, False, False]
    """
    a, sweep_max, memory_limit = _plan_args(hashes, threshold, policy, priority, labels, per_class, against, valid,
                                            sweep_max, leak_pairs, settings, provenance, memory_limit)
    n, t, w = a.n, a.threshold, a.rows.shape[1]
    vw = _view_rows(views, n, w)
    n_views = vw.shape[1]
    _warn_threshold("threshold", t, a.bits)
    search_t = t if sweep_max is None else max(t, sweep_max)
    cap = None if memory_limit is None else memory_limit // _key_graph._PAIR_BYTES

    vidx = np.flatnonzero(a.valid).astype(np.int64)
    nv = len(vidx)
    base = np.ascontiguousarray(a.rows[vidx])
    vrows = np.ascontiguousarray(vw[vidx].reshape(nv * n_views, w))
    owner = np.repeat(np.arange(nv, dtype=np.int64), n_views)

    def search(x, y, what):
        if not len(x) or (y is not None and not len(y)):
            e = np.zeros(0, np.int64)
            return e, e, e
        if cap is not None:  # estimated from a sample first: the search itself holds every pair
            n_pairs = len(x) * (len(x) - 1) / 2 if y is None else len(x) * len(y)
            est = _pair_fraction(x, y, search_t) * n_pairs
            if est > cap:
                _refuse(what, int(est), False, search_t, a.bits, memory_limit, True)
        got = hamming_pairs(x, search_t, y, workers=workers)
        if cap is not None and len(got.distances) > cap:
            _refuse(what, len(got.distances), True, search_t, a.bits, memory_limit)
        return got.pairs[:, 0].astype(np.int64), got.pairs[:, 1].astype(np.int64), got.distances.astype(np.int64)

    # item pairs: own codes among themselves, views against the own codes
    i1, j1, d1 = search(base, None, "item pairs")
    i2, j2, d2 = search(vrows, base, "view pairs (an item's views against the others' codes)")
    i2 = owner[i2]
    other = i2 != j2
    pi, pj, pd = _min_pairs(np.concatenate([i1, i2[other]]), np.concatenate([j1, j2[other]]),
                            np.concatenate([d1, d2[other]]), max(nv, 1), True)

    # leaks: own codes and views against `against`, the nearest row per item (lowest row on ties)
    leak_row = np.full(nv, -1, np.int64)
    leak_d = np.full(nv, _NEVER, np.int64)
    all_leaks = np.zeros((0, 3), np.int64) if leak_pairs else None
    if a.against is not None and len(a.against) and nv:
        ai, ar, ad = search(base, a.against, "leak pairs")
        bi, br, bd = search(vrows, a.against, "leak pairs of views")
        li, lr, ld = _min_pairs(np.concatenate([ai, owner[bi]]), np.concatenate([ar, br]),
                                np.concatenate([ad, bd]), len(a.against), False)   # one per (item, row)
        order = np.lexsort((lr, ld, li))
        si, sr, sd = li[order], lr[order], ld[order]
        first = np.ones(len(si), np.bool_)
        first[1:] = si[1:] != si[:-1]
        leak_row[si[first]] = sr[first]
        leak_d[si[first]] = sd[first]
        if leak_pairs:
            m = ld <= t                                  # sorted by item, then row
            if cap is not None and int(m.sum()) > memory_limit // _key_graph._OUT_PAIR_BYTES:
                _refuse("leak pairs (leak_pairs=True)", int(m.sum()), True, t, a.bits, memory_limit)
            all_leaks = np.stack([vidx[li[m]], lr[m], ld[m]], axis=1).astype(np.int64).reshape(-1, 3)
    out_local = leak_d <= t
    leak_row = np.where(out_local, leak_row, -1)

    # labels: conflicts are the cross-label item pairs; per_class keeps only same-label pairs
    dtype_d = np.uint8 if a.bits <= 255 else np.uint16
    conflicts, conflict_d = np.zeros((0, 2), np.int64), np.zeros(0, dtype_d)
    same = np.ones(len(pi), np.bool_)
    if a.labels is not None and nv:
        lab = a.labels[vidx]
        same = lab[pi] == lab[pj]
        cross = ~same & (pd <= t)
        ci, cj, cd = vidx[pi[cross]], vidx[pj[cross]], pd[cross]
        o = np.lexsort((cj, ci))
        conflicts, conflict_d = np.stack([ci[o], cj[o]], axis=1).reshape(-1, 2), cd[o].astype(dtype_d)
    if a.per_class:
        pi, pj, pd = pi[same], pj[same], pd[same]

    # keep decision over items in priority order, each its own key
    order_v, kind = _order(a.priority, vidx)
    pos = np.empty(nv, np.int64)
    pos[order_v] = np.arange(nv, dtype=np.int64)
    indptr, nbr, dist = _k.lower_csr(pos[pi], pos[pj], pd.astype(np.int16), nv)
    excluded = out_local[order_v]
    sweep = sweep_pairs = None
    if sweep_max is not None:
        key_class = np.zeros(nv, np.int64)
        n_classes = 1
        if a.labels is not None and nv:
            classes, codes = np.unique(a.labels[vidx], return_inverse=True)
            key_class, n_classes = codes.reshape(-1)[order_v].astype(np.int64), len(classes)
        kernel = _k.sweep_greedy if a.policy == "greedy" else _k.sweep_components
        sweep = kernel(indptr, nbr, dist, leak_d[order_v], key_class, n_classes, sweep_max).sum(axis=1)
        sweep_pairs = _k.pair_histogram_csr(indptr, nbr, dist, np.ones(nv, np.int64), sweep_max)
    if a.policy == "greedy":
        kept_k, rep_k, rd_k = _k.greedy_keys(indptr, nbr, dist, t, excluded)
        leader = np.where(kept_k, np.arange(nv), rep_k)
        rep_local = order_v[leader[pos]]
        dist_local = np.where(kept_k[pos], 0, rd_k[pos]).astype(np.int16)
    else:
        leader = _k.components_keys(indptr, nbr, dist, t, excluded)
        rep_local = order_v[np.maximum(leader[pos], 0)]
        dist_local = view_distances(base, vw[vidx], np.arange(nv), rep_local).astype(np.int16)
    keep_local = (rep_local == np.arange(nv)) & ~out_local

    keep = np.zeros(n, np.bool_)
    leaked = np.zeros(n, np.bool_)
    rep = np.full(n, -1, np.int64)
    dist_out = np.full(n, -1, np.int16)
    keep[vidx] = keep_local
    leaked[vidx] = out_local
    live = vidx[~out_local]
    rep[live] = vidx[rep_local[~out_local]]
    dist_out[live] = dist_local[~out_local]
    group = np.full(n, -1, np.int64)
    kept_idx = np.flatnonzero(keep)
    group[kept_idx] = np.arange(len(kept_idx))
    group[live] = group[rep[live]]
    leaks = np.stack([vidx[out_local], leak_row[out_local], leak_d[out_local]], axis=1).reshape(-1, 3)

    base_settings = {"threshold": t, "policy": a.policy, "hash_bits": a.bits, "hash_words": int(w),
                     "priority": kind if a.priority is not None else "index", "per_class": a.per_class,
                     "has_labels": a.labels is not None,
                     "against_size": None if a.against is None else len(a.against),
                     "n_failed": int(n - nv), "sweep_max": sweep_max, "views": int(n_views)}
    base_settings = {**(settings or {}), **base_settings}
    plan = DedupPlan(n=n, threshold=t, policy=a.policy, keep=keep, group=group, representative=rep,
                     distance_to_rep=dist_out, failed=~a.valid, leaked=leaked, labels=a.labels,
                     per_class=a.per_class, label_conflicts=conflicts.astype(np.int64),
                     label_conflict_distances=conflict_d.astype(dtype_d), leaks=leaks.astype(np.int64),
                     leak_pairs=all_leaks, sweep=None if sweep is None else sweep.astype(np.int64),
                     sweep_pairs=sweep_pairs, settings=base_settings,
                     provenance=dict(provenance or {}))
    logger.debug("find_duplicates_views: %d items x %d views, threshold %d, %s: kept %d, leaked %d, failed %d",
                 n, n_views, t, a.policy, plan.n_kept, int(out_local.sum()), n - nv)
    return plan
