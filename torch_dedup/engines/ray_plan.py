"""A small-scale simulation of the multi-node plan (``docs/scaling.md``), on Ray tasks.

The single-node engine (:func:`torch_dedup.hamming.cluster.find_duplicates`) holds every
hash in one process. Past one node the same pigeonhole argument becomes a shuffle:

1. **collapse** exact duplicates (here on the driver; on a cluster, a shuffle by value);
2. **shuffle**: split the 64 bits into ``n > t`` blocks; for each of the ``C(n, k)``
   k-subsets ``c`` of blocks (``k = n - t``), route every distinct value to partition
   ``mix(c, value & key_c) % P``; two values within ``t`` agree on the key bits of at
   least one ``c``, so they meet in at least one partition;
3. **verify**: each partition task sorts its rows by ``(c, key)`` and popcounts the pairs
   inside each equal-key run, keeping a pair only in the table that *owns* it (the
   lexicographically first k-subset of its identical blocks), so the union needs no dedup;
4. **components**: union the pairs and label connected components by min-label
   propagation with pointer jumping (the shape of Kiveris et al. 2014, "Connected
   Components in MapReduce and Beyond"), keep the first item of each component.

``policy="greedy"`` is order dependent: it needs the pairs of a component gathered in
priority order (here: all pairs on the driver), which is what :func:`distributed_plan`
does for it; see ``docs/scaling.md`` for why components is the natural distributed policy.

:func:`distributed_plan` must return the same keep mask and representatives as
``find_duplicates`` on one node; ``tests/test_ray.py`` and ``benchmarks/bench_scale.py``
check it.
"""

from __future__ import annotations

import logging
import math
from itertools import combinations

import numpy as np

from torch_dedup.hamming.search import _block_masks, unique_hashes

from .ray import ray_session

__all__ = ["distributed_pairs", "distributed_plan", "label_components"]

logger = logging.getLogger(__name__)

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _tables(n_blocks: int, t: int) -> list[tuple[np.uint64, np.ndarray]]:
    """Per k-subset: (key mask, masks of the blocks below its last block that are not in it)."""
    masks = _block_masks(n_blocks, 1)[:, 0]
    out = []
    for combo in combinations(range(n_blocks), n_blocks - t):
        key = np.bitwise_or.reduce(masks[list(combo)]) if combo else np.uint64(0)
        last = combo[-1] if combo else 0
        below = np.array([masks[i] for i in range(last) if i not in combo], np.uint64)
        out.append((np.uint64(key), below))
    return out


def _route(values: np.ndarray, ids: np.ndarray, tables, n_parts: int) -> list[list[tuple]]:
    """Map side: ``out[p]`` = list of (table, ids, values) rows for partition ``p``."""
    out: list[list[tuple]] = [[] for _ in range(n_parts)]
    for c, (key, _) in enumerate(tables):
        k = (values & key) ^ np.uint64(c)
        with np.errstate(over="ignore"):
            part = ((k * _MIX) >> np.uint64(32)) % np.uint64(n_parts)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(n_parts + 1, dtype=np.uint64))
        for p in range(n_parts):
            sel = order[bounds[p]:bounds[p + 1]]
            if len(sel):
                out[p].append((c, ids[sel], values[sel]))
    return out


def _verify_partition(rows: list[tuple], tables, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce side: all owned pairs within ``t`` among rows with equal (table, key)."""
    ii, jj = [], []
    by_table: dict[int, list[tuple]] = {}
    for c, ids, vals in rows:
        by_table.setdefault(c, []).append((ids, vals))
    for c, parts in by_table.items():
        key, below = tables[c]
        ids = np.concatenate([p[0] for p in parts])
        vals = np.concatenate([p[1] for p in parts])
        order = np.lexsort((ids, vals & key))
        ids, vals = ids[order], vals[order]
        kv = vals & key
        d = 1
        while d < len(ids):
            same = kv[d:] == kv[:-d]
            if not same.any():
                break  # runs are contiguous: no run is longer than d
            a, b = np.flatnonzero(same), np.flatnonzero(same) + d
            x = vals[a] ^ vals[b]
            near = np.bitwise_count(x) <= t
            if len(below):  # ownership: no identical block outside c below its last block
                near &= ~np.any((x[:, None] & below[None, :]) == 0, axis=1)
            a, b = ids[a[near]], ids[b[near]]
            ii.append(np.minimum(a, b))
            jj.append(np.maximum(a, b))
            d += 1
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ii), np.concatenate(jj)


def _partition_task(tables, t, *chunks):
    rows = [r for chunk in chunks for r in chunk]  # top-level ObjectRef arguments arrive resolved
    return _verify_partition(rows, tables, t)


def distributed_pairs(values: np.ndarray, threshold: int, *, n_blocks: int | None = None, n_parts: int = 8,
                      n_mappers: int = 4, address: str | None = None) -> np.ndarray:
    """Pairs of distinct 64-bit values within ``threshold``, by shuffle + per-partition verify on Ray.

    Args:
        values: ``(U,)`` uint64 distinct values.
        threshold: Hamming threshold, ``0 <= threshold < 64``.
        n_blocks: blocks ``n > threshold`` (default ``threshold + 2``, at most 64).
        n_parts: partitions (reduce tasks).
        n_mappers: map tasks (each routes a slice of the values).
        address: Ray cluster (see :func:`torch_dedup.engines.ray.ray_session`).

    Returns:
        ``(P, 2)`` int64 pairs of row indices into ``values``, ``i < j``, sorted, each once.

    Raises:
        ValueError: a bad argument.
    """
    values = np.ascontiguousarray(values)
    if values.dtype != np.uint64 or values.ndim != 1:
        raise ValueError(f"values must be (U,) uint64 (the simulation handles 64-bit hashes), got "
                         f"{values.dtype} {values.shape}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < 64:
        raise ValueError(f"threshold={threshold!r} must be an int in [0, 63]")
    n_blocks = min(64, threshold + 2) if n_blocks is None else n_blocks
    if not threshold < n_blocks <= 64 or math.comb(n_blocks, n_blocks - threshold) > 4096:
        raise ValueError(f"n_blocks={n_blocks!r} must be in ({threshold}, 64] with at most 4096 tables")
    for name, v in (("n_parts", n_parts), ("n_mappers", n_mappers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an int >= 1")
    tables = _tables(n_blocks, threshold)
    ids = np.arange(len(values), dtype=np.int64)
    with ray_session(address) as ray:
        route = ray.remote(_route).options(num_returns=n_parts) if n_parts > 1 else ray.remote(_route)
        tables_ref = ray.put(tables)
        mapped = []
        for s in np.array_split(np.arange(len(values)), n_mappers):
            refs = route.remote(values[s], ids[s], tables_ref, n_parts)
            mapped.append(refs if n_parts > 1 else [refs])
        reduce = ray.remote(_partition_task)
        outs = ray.get([reduce.remote(tables_ref, threshold, *[m[p] for m in mapped]) for p in range(n_parts)])
    ii = np.concatenate([o[0] for o in outs])
    jj = np.concatenate([o[1] for o in outs])
    pairs = np.stack([ii, jj], axis=1)
    order = np.lexsort((jj, ii))
    return pairs[order]


def label_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label (the smallest member) of each of ``n`` nodes, by min-label propagation.

    Each round is one join of labels over edges plus pointer jumping: a map-reduce round on
    a cluster. Rounds grow with the log of the component diameter.
    """
    label = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return label
    i, j = pairs[:, 0], pairs[:, 1]
    while True:
        new = label.copy()
        np.minimum.at(new, i, label[j])
        np.minimum.at(new, j, label[i])
        while True:  # pointer jumping: label of my label
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new


def _greedy(first: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy keep over distinct values visited by first occurrence (all pairs gathered)."""
    u = len(first)
    order = np.argsort(first, kind="stable")
    rank = np.empty(u, np.int64)
    rank[order] = np.arange(u)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.lexsort((rank[both[:, 1]], both[:, 0]))]
    indptr = np.searchsorted(both[:, 0], np.arange(u + 1))
    kept = np.zeros(u, bool)
    rep = np.arange(u)
    for v in order.tolist():
        nb = both[indptr[v]:indptr[v + 1], 1]
        hit = nb[kept[nb]] if len(nb) else nb
        if len(hit):
            rep[v] = hit[0]  # neighbours sorted by rank: the first kept one in priority order
        else:
            kept[v] = True
    return kept, rep


def distributed_plan(hashes, threshold: int, *, policy: str = "components", n_parts: int = 8, n_mappers: int = 4,
                     address: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keep mask and representative per item, computed the distributed way.

    Args:
        hashes: ``(N,)`` uint64.
        threshold: Hamming threshold in ``[0, 63]``.
        policy: ``"components"`` (distributed end to end) or ``"greedy"`` (pairs gathered).
        n_parts, n_mappers, address: as in :func:`distributed_pairs`.

    Returns:
        ``(keep (N,) bool, representative (N,) int64)``, dataset order as priority: what
        ``find_duplicates(hashes, threshold, policy=policy)`` gives as ``keep`` and
        ``representative``.

    Raises:
        ValueError: a bad argument.

    Example:
        >>> keep, rep = distributed_plan(h, 6)  # doctest: +SKIP
    """
    if policy not in ("components", "greedy"):
        raise ValueError(f"policy={policy!r} must be 'components' or 'greedy'")
    h = np.asarray(hashes)
    if h.dtype != np.uint64 or h.ndim != 1:
        raise ValueError(f"hashes must be (N,) uint64, got {h.dtype} {h.shape}")
    u, inverse, first = unique_hashes(h)
    u = u[:, 0] if u.ndim == 2 else u
    pairs = distributed_pairs(u, threshold, n_parts=n_parts, n_mappers=n_mappers, address=address)
    if policy == "components":
        comp = label_components(len(u), pairs)
        # the kept item of a component: its smallest item index (first occurrence of any member)
        best = np.full(len(u), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(best, comp, first)
        rep = best[comp[inverse]]
    else:
        _, rep_v = _greedy(first, pairs)
        rep = first[rep_v[inverse]]
    keep = rep == np.arange(len(h))
    return keep, rep
