"""Near-duplicate pairs -> keep decision -> :class:`~torch_dedup.plan.DedupPlan` (layer 2).

The work happens on *keys*, not items: every distinct hash value (or distinct
``(hash, label)`` under ``per_class``) is one key, whose *best member* is its
highest-priority item. Greedy over keys in the order of their best members is the
same as greedy over items: the best member of an exact-duplicate group decides for
all of them, and the others fall to it at distance 0. So 10M items with large
exact-duplicate groups cost one ``np.unique`` and a search among distinct values,
never the k² pairs of a group. The keep decisions themselves run in numba
(:mod:`torch_dedup.hamming._cluster_kernels`); nothing loops over items in Python.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np

from .._checks import check_choice
from ..plan import POLICIES, DedupPlan
from . import _cluster_kernels as _k
from . import _key_graph
from ._key_graph import (
    _NEVER,
    DEFAULT_MEMORY_LIMIT,
    _Graph,
    _graph,
    _order,
    _plan_args,
    _refuse,
    _warn_threshold,
)
from ._search_io import _check_workers, _distance_dtype
from .search import _pair_fraction, _stream_distinct, popcount64
from .streaming import _components_streamed, _greedy_streamed, _PairLimit
from .sweep import (
    ClassSweep,
    _pair_counts,
    _sweep_counts,
    sweep_thresholds,
    sweep_thresholds_by_class,
)

__all__ = ["ClassSweep", "find_duplicates", "keep_from_pairs", "sweep_thresholds", "sweep_thresholds_by_class"]

logger = logging.getLogger(__name__)


def _label_conflicts(g: _Graph, threshold: int, n: int, bits: int, memory_limit: int | None,
                     workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within ``threshold`` whose labels differ, one per pair of ``(hash, label)`` groups.

    Each group stands for itself by its lowest-index item, so a block of 10k identical
    placeholder images over 10 labels gives 45 pairs, not 5·10⁷. Sorted, ``i < j``.
    They are output, so they cannot stream: above ``memory_limit`` (estimated from a
    sample of the groups first, then counted exactly) a ValueError says how many and what to do.
    """
    cap = np.iinfo(np.int64).max if memory_limit is None else memory_limit // _key_graph._OUT_PAIR_BYTES
    g_value, g_class, g_first, _ = g.vc_groups               # sorted by value, then class
    if memory_limit is not None and len(g_value) > 1:
        # conflicts are pairs of (value, class) groups with different classes: sample those
        frac = _pair_fraction(g.uniq[g_value], None, threshold, classes=g_class)
        est = frac * len(g_value) * (len(g_value) - 1) / 2
        if est > cap:
            _refuse("label conflicts (pairs across labels)", int(est), False, threshold, bits, memory_limit, True)
    members = g.vidx[g_first]
    mem_ptr = np.zeros(len(g.uniq) + 1, np.int64)
    np.cumsum(np.bincount(g_value, minlength=len(g.uniq)), out=mem_ptr[1:])
    run_end = np.arange(1, len(members) + 1, dtype=np.int64)  # one group per (value, class) run
    item_class = np.full(n, -1, np.int64)
    item_class[g.vidx] = g.item_code
    dd_type = _distance_dtype(bits)
    if not g.streamed:
        within = g.udist <= threshold
        pu, pv, pd = g.upairs[within, 0], g.upairs[within, 1], g.udist[within]
        i, j, d, total = _k.cross_label_pairs(pu, pv, pd, mem_ptr, members, item_class, run_end, True, cap)
        if total > cap:
            _refuse("label conflicts (pairs across labels)", int(total), True, threshold, bits, memory_limit)
    else:
        e = np.zeros(0, np.int64)
        parts = [_k.cross_label_pairs(e, e, e.astype(dd_type), mem_ptr, members, item_class, run_end, True, cap)]
        count = int(parts[0][3])

        def consume(ii, jj, dd):
            nonlocal count
            got = _k.cross_label_pairs(ii, jj, dd.astype(dd_type), mem_ptr, members, item_class, run_end, False,
                                       cap - count)
            count += int(got[3])
            if count > cap:
                raise _PairLimit(count)
            parts.append(got)

        if count > cap:
            _refuse("label conflicts (pairs across labels)", count, True, threshold, bits, memory_limit)
        try:
            _stream_distinct(g.uniq, None, threshold, consume, workers=_check_workers(workers))
        except _PairLimit as err:
            _refuse("label conflicts (pairs across labels)", err.args[0], False, threshold, bits, memory_limit)
        i, j, d = (np.concatenate([p[k] for p in parts]) for k in range(3))
    o = np.argsort(i * n + j)  # pairs are distinct, so no ties
    return np.stack([i[o], j[o]], axis=1).reshape(-1, 2), d[o]


def _leak_pairs(g: _Graph, threshold: int, bits: int, memory_limit: int | None) -> np.ndarray:
    """Every ``(item, against_row, distance)`` within ``threshold``, sorted by item then row.

    The search paired distinct values of both sides; each value pair stands for all
    ``members(value) x rows(against value)``, expanded here with repeat/cumsum
    arithmetic so that the cost is proportional to the output, with no loop per item.
    """
    within = g.leak_udist <= threshold  # the search may have run at a higher sweep threshold
    pu, pb, pd = g.leak_upairs[within, 0], g.leak_upairs[within, 1], g.leak_udist[within]
    if len(pu) == 0:
        return np.zeros((0, 3), np.int64)
    # valid items and `against` rows grouped by distinct value; stable sorts keep each group ascending
    members_a = g.vidx[np.argsort(g.inv, kind="stable")]
    start_a = np.zeros(len(g.uniq) + 1, np.int64)
    np.cumsum(np.bincount(g.inv, minlength=len(g.uniq)), out=start_a[1:])
    n_b = int(g.against_inv.max()) + 1
    members_b = np.argsort(g.against_inv, kind="stable").astype(np.int64)
    start_b = np.zeros(n_b + 1, np.int64)
    np.cumsum(np.bincount(g.against_inv, minlength=n_b), out=start_b[1:])
    size_a = start_a[pu + 1] - start_a[pu]
    size_b = start_b[pb + 1] - start_b[pb]
    count = size_a * size_b
    total = int(count.sum())
    if memory_limit is not None and total > memory_limit // _key_graph._OUT_PAIR_BYTES:
        _refuse("leak pairs (leak_pairs=True)", total, True, threshold, bits, memory_limit)
    pid = np.repeat(np.arange(len(pu)), count)           # value pair of each output row
    offset = np.arange(len(pid), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    item = members_a[start_a[pu[pid]] + offset // size_b[pid]]
    row = members_b[start_b[pb[pid]] + offset % size_b[pid]]
    order = np.lexsort((row, item))
    return np.stack([item[order], row[order], pd[pid][order]], axis=1).astype(np.int64)


def _decide(g: _Graph, policy: str, t: int, excluded: np.ndarray, memory_limit: int | None, workers: int | None):
    """Per key: ``("greedy", kept, rep, rep_dist)`` or ``("components", leader)``, materialised or streamed."""
    if not g.streamed:
        if policy == "greedy":
            return _k.greedy_keys(g.indptr, g.nbr, g.dist, t, excluded)
        return _k.components_keys(g.indptr, g.nbr, g.dist, t, excluded)
    workers = _check_workers(workers)
    cls = g.key_class if g.per_class else None
    if policy == "greedy":
        return _greedy_streamed(g.key_rows, cls, excluded, t, memory_limit // _key_graph._PAIR_BYTES, workers)
    excl = np.where(excluded, np.int64(-1), _NEVER)  # excluded at every level here
    parents = _components_streamed(g.key_rows, cls, excl, np.array([t]), workers)
    return _k.component_leaders(parents[0], excl, t)


# --------------------------------------------------------------------------- public API
def find_duplicates(hashes, threshold=6, *, policy="greedy", priority=None, labels=None, per_class=False,
                    against=None, valid=None, sweep_max=None, provenance=None, settings=None,
                    leak_pairs=False, memory_limit=DEFAULT_MEMORY_LIMIT) -> DedupPlan:
    """Decide which items to keep: near-duplicates are items within ``threshold`` bits.

    Greedy (default) visits items in keep-priority order and keeps an item unless an
    already kept item is within the threshold; with dataset order it keeps exactly what
    ``imagededup``'s ``find_duplicates_to_remove`` keeps. ``"components"`` keeps the
    highest-priority item of each connected component of the near-duplicate graph.

    Args:
        hashes: ``(N,)`` uint64 (64-bit hashes) or ``(N, W)`` uint64.
        threshold: Hamming threshold, an int in ``[0, 64 * W]``.
        policy: ``"greedy"`` or ``"components"``.
        priority: None for dataset order, or an ``(N,)`` real score array: higher is
            kept first, ties by lower index.
        labels: optional ``(N,)`` int class labels; cross-label pairs within the
            threshold are reported in ``plan.label_conflicts`` (one pair per pair of
            ``(hash value, label)`` groups, each named by its lowest-index item).
        per_class: only same-label items can be duplicates (requires ``labels``).
        against: ``(M,)``/``(M, W)`` uint64 hashes of another set (e.g. the test set);
            items within the threshold of any of them are removed first (``plan.leaks``:
            the nearest row of each, lowest row on ties) and take no further part.
            Labels and ``per_class`` never restrict leaks: a near-duplicate of the other
            set is a leak whatever its label (``per_class`` only restricts pairs within
            this set).
        valid: ``(N,)`` bool, False for items that failed to hash: neither kept nor
            removed (``plan.failed``), excluded from everything.
        sweep_max: also record in ``plan.sweep`` the kept count at every threshold
            ``0..sweep_max``, and in ``plan.sweep_pairs`` the number of item pairs at
            each distance ``0..sweep_max`` (one search at ``max(threshold, sweep_max)``).
        provenance: JSON-able dict stored in the plan (fingerprint, versions, sidecar).
        settings: JSON-able dict merged into ``plan.settings`` (method, hash_size, ...).
        leak_pairs: also fill ``plan.leak_pairs`` with *every* ``(item, against_row,
            distance)`` within the threshold, valid items only, ``against_row`` a row of
            ``against`` as passed, sorted by item then row (an empty ``(0, 3)`` array
            without ``against``). False leaves it None: it can be as large as the
            product of two exact-duplicate groups.
        memory_limit: bytes of pairs the call may hold at once (default 1 GiB; ``None``:
            no limit, every pair held, the fastest). Past it the keep decision and the
            sweep stream the pairs (the same result, in bounded memory, slower);
            outputs that are pairs themselves (``label_conflicts``, ``leak_pairs``)
            cannot stream and raise ValueError with their estimated count instead.

    Returns:
        A :class:`~torch_dedup.plan.DedupPlan` (empty for ``N == 0``).

    Raises:
        ValueError: a bad argument (names it, its value and what is allowed), or label
            conflicts / leak pairs above ``memory_limit`` (with their count and the fix).

    Thresholds where more than 0.1% of unrelated (random) hash pairs fall within the
    threshold are logged as a WARNING naming the fix: a threshold counts bits of the
    whole hash (``docs/clustering.md``).

    Example:
        >>> import numpy as np
        >>> h = np.array([0b0000, 0b0001, 0b0011, 0xF0F0], dtype=np.uint64)
        >>> plan = find_duplicates(h, threshold=1)
        >>> plan.keep.tolist(), plan.representative.tolist()
        ([True, False, True, True], [0, 0, 2, 3])
        >>> find_duplicates(h, threshold=1, policy="components").kept_indices.tolist()
        [0, 3]
    """
    a, sweep_max, memory_limit = _plan_args(hashes, threshold, policy, priority, labels, per_class, against, valid,
                                            sweep_max, leak_pairs, settings, provenance, memory_limit)
    n, t = a.n, a.threshold
    _warn_threshold("threshold", t, a.bits)
    search_t = t if sweep_max is None else max(t, sweep_max)
    g, kind = _graph(a, search_t, lambda vidx: _order(a.priority, vidx), memory_limit,
                     leak_pairs_t=t if leak_pairs else None)
    excluded = g.excl_level <= t

    if a.policy == "greedy":
        kept_k, rep_k, rd_k = _decide(g, "greedy", t, excluded, memory_limit, None)
        leader = np.where(kept_k, np.arange(len(kept_k)), rep_k)
        pk = g.item_key
        rep_local = g.best[leader[pk]]
        dist_local = np.where(kept_k[pk], 0, rd_k[pk]).astype(np.int16)
    else:
        leader = _decide(g, "components", t, excluded, memory_limit, None)
        pk = g.item_key
        rep_local = g.best[np.maximum(leader[pk], 0)]
        xor = g.uniq[g.inv] ^ g.uniq[g.inv[rep_local]]
        dist_local = popcount64(xor).sum(axis=1, dtype=np.int64).astype(np.int16)
    out_local = excluded[g.item_key]
    keep_local = (rep_local == np.arange(len(g.vidx))) & ~out_local

    keep = np.zeros(n, np.bool_)
    leaked = np.zeros(n, np.bool_)
    rep = np.full(n, -1, np.int64)
    dist = np.full(n, -1, np.int16)
    keep[g.vidx] = keep_local
    leaked[g.vidx] = out_local
    live = g.vidx[~out_local]
    rep[live] = g.vidx[rep_local[~out_local]]
    dist[live] = dist_local[~out_local]
    group = np.full(n, -1, np.int64)
    kept_idx = np.flatnonzero(keep)
    group[kept_idx] = np.arange(len(kept_idx))
    group[live] = group[rep[live]]

    leaked_idx = np.flatnonzero(leaked)
    u_of = np.full(n, -1, np.int64)
    u_of[g.vidx] = g.inv
    leaks = np.stack([leaked_idx, g.leak_row[u_of[leaked_idx]], g.leak_dist[u_of[leaked_idx]]], axis=1)
    all_leaks = _leak_pairs(g, t, a.bits, memory_limit) if leak_pairs else None

    dtype_d = np.uint8 if a.bits <= 255 else np.uint16
    if a.labels is not None and len(g.vidx):
        conflicts, conflict_d = _label_conflicts(g, t, n, a.bits, memory_limit, None)
    else:
        conflicts, conflict_d = np.zeros((0, 2), np.int64), np.zeros(0, dtype_d)

    sweep = sweep_pairs = None
    if sweep_max is not None:
        sweep = _sweep_counts(g, a.policy, sweep_max, memory_limit).sum(axis=1).astype(np.int64)
        sweep_pairs = _pair_counts(g, sweep_max)

    base = {"threshold": t, "policy": a.policy, "hash_bits": a.bits, "hash_words": int(a.rows.shape[1]),
            "priority": kind if a.priority is not None else "index", "per_class": a.per_class,
            "has_labels": a.labels is not None, "against_size": None if a.against is None else len(a.against),
            "n_failed": int(n - len(g.vidx)), "sweep_max": sweep_max}
    base = {**(settings or {}), **base}  # computed facts win over caller labels of the same name
    plan = DedupPlan(n=n, threshold=t, policy=a.policy, keep=keep, group=group, representative=rep,
                     distance_to_rep=dist, failed=~a.valid, leaked=leaked, labels=a.labels, per_class=a.per_class,
                     label_conflicts=conflicts.astype(np.int64), label_conflict_distances=conflict_d.astype(dtype_d),
                     leaks=leaks.astype(np.int64).reshape(-1, 3), leak_pairs=all_leaks, sweep=sweep,
                     sweep_pairs=sweep_pairs, settings=base,
                     provenance=dict(provenance or {}))
    logger.debug("find_duplicates: %d items, threshold %d, %s: kept %d, removed %d, leaked %d, failed %d",
                n, t, a.policy, plan.n_kept, len(live) - plan.n_kept, len(leaked_idx), n - len(g.vidx))
    return plan


def keep_from_pairs(n, pairs, *, policy="greedy") -> tuple[np.ndarray, np.ndarray]:
    """The keep decision of :func:`find_duplicates` on a pair list found elsewhere.

    Nodes ``0..n-1`` are visited in index order (node 0 has the highest priority) and
    every given pair is a near-duplicate pair; the decision runs on the same numba
    kernels as :func:`find_duplicates`. For callers that gather pairs themselves, such
    as the distributed planner (:mod:`torch_dedup.engines.ray_plan`) after its
    partition tasks.

    Args:
        n: number of nodes, an int >= 0.
        pairs: ``(P, 2)`` integer array of node pairs in ``[0, n)``, either order;
            self pairs and repeated pairs are harmless.
        policy: ``"greedy"`` (a node is kept unless a kept node of smaller index is
            paired with it) or ``"components"`` (one node kept per connected component:
            its smallest).

    Returns:
        ``(keep (n,) bool, representative (n,) int64)``: a kept node is its own
        representative; a dropped one has the smallest kept node paired with it
        (greedy) or the smallest node of its component (components).

    Raises:
        ValueError: ``n``, ``pairs`` or ``policy`` out of range (names which and how).

    Example:
        >>> import numpy as np
        >>> keep, rep = keep_from_pairs(4, np.array([[0, 1], [1, 2]]))
        >>> keep.tolist(), rep.tolist()
        ([True, False, True, True], [0, 0, 2, 3])
        >>> keep_from_pairs(4, np.array([[0, 1], [1, 2]]), policy="components")[1].tolist()
        [0, 0, 0, 3]
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be an int >= 0 (the number of nodes), got {n!r}")
    n = int(n)
    check_choice("policy", policy, POLICIES)
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or (pairs.size and pairs.dtype.kind not in "iu"):
        raise ValueError(f"pairs must be a (P, 2) integer array of node pairs, got {pairs.dtype} {pairs.shape}")
    pairs = pairs.astype(np.int64, copy=False)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs must name nodes in [0, {n - 1}] (n={n}), got values in "
                         f"[{int(pairs.min())}, {int(pairs.max())}]")
    a, b = np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
    # every given pair counts: distance 0 against threshold 0
    indptr, nbr, dist = _k.lower_csr(a, b, np.zeros(len(a), np.int16), n)
    excluded = np.zeros(n, np.bool_)
    if policy == "greedy":
        kept, rep, _ = _k.greedy_keys(indptr, nbr, dist, 0, excluded)
        rep = np.where(kept, np.arange(n, dtype=np.int64), rep)
    else:
        rep = _k.components_keys(indptr, nbr, dist, 0, excluded)
        kept = rep == np.arange(n)
    return kept, rep.astype(np.int64, copy=False)
