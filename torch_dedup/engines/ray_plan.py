"""A small-scale simulation of the multi-node plan (``docs/scaling.md``), on Ray tasks.

The single-node engine (:func:`torch_dedup.hamming.cluster.find_duplicates`) holds every
hash in one process. Past one node the same pigeonhole argument becomes a shuffle:

1. **collapse** exact duplicates (here on the driver; on a cluster, a shuffle by value);
2. **shuffle**: split the 64 bits into ``n > t`` blocks; for each of the ``C(n, k)``
   k-subsets ``c`` of blocks (``k = n - t``), route every distinct value to partition
   ``mix(c, value & key_c) % P``; two values within ``t`` agree on the key bits of at
   least one ``c``, so they meet in at least one partition;
3. **verify**: each partition task runs, per table ``c``, the single-node engine's own
   per-table search (:func:`torch_dedup.hamming.block_table_pairs`: the numba bucket sort
   and verify kernels) on its rows of that table. Rows with equal key bits always land
   in one partition, and a pair is reported only by the table that *owns* it (the
   lexicographically first k-subset of its identical blocks), so the union needs no dedup;
4. **components**: union the pairs and label connected components by min-label
   propagation with pointer jumping (the shape of Kiveris et al. 2014, "Connected
   Components in MapReduce and Beyond"), keep the first item of each component.

The tables themselves come from :func:`torch_dedup.hamming.block_tables`, the same
definition the single-node index uses. ``policy="greedy"`` is order dependent: it
needs the pairs of a component gathered in priority order (here: all pairs on the
driver), where :func:`torch_dedup.hamming.keep_from_pairs` runs the single-node greedy
kernel on them; see ``docs/scaling.md`` for why components is the natural distributed
policy, and ``docs/engine.md`` for why routing and components stay numpy here.

:func:`distributed_plan` must return the same keep mask and representatives as
``find_duplicates`` on one node; ``tests/test_ray.py`` and ``benchmarks/bench_scale.py``
check it.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np

from torch_dedup.hamming import (
    BlockTable,
    block_table_pairs,
    block_tables,
    keep_from_pairs,
    unique_hashes,
)

from .ray import ray_session

__all__ = ["distributed_pairs", "distributed_plan", "label_components"]

logger = logging.getLogger(__name__)

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _tables(n_blocks: int, t: int) -> list[BlockTable]:
    """The index's tables for 64-bit values (one key word each)."""
    return block_tables(n_blocks, t, 1)


def _route(values: np.ndarray, ids: np.ndarray, tables: list[BlockTable], n_parts: int) -> list[list[tuple]]:
    """Map side: ``out[p]`` = list of (table, ids, values) rows for partition ``p``.

    A partition is a hash of ``(table, key bits)``: values with equal key bits in a
    table always go to the same partition, which is all the verify step needs.
    """
    out: list[list[tuple]] = [[] for _ in range(n_parts)]
    for c, table in enumerate(tables):
        k = (values & table.key[0]) ^ np.uint64(c)
        with np.errstate(over="ignore"):
            part = ((k * _MIX) >> np.uint64(32)) % np.uint64(n_parts)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(n_parts + 1, dtype=np.uint64))
        for p in range(n_parts):
            sel = order[bounds[p]:bounds[p + 1]]
            if len(sel):
                out[p].append((c, ids[sel], values[sel]))
    return out


def _verify_partition(rows: list[tuple], tables: list[BlockTable], t: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce side: the pairs each table owns among this partition's rows of that table."""
    ii, jj = [], []
    by_table: dict[int, list[tuple]] = {}
    for c, ids, vals in rows:
        by_table.setdefault(c, []).append((ids, vals))
    for c, parts in sorted(by_table.items()):
        ids = np.concatenate([p[0] for p in parts])
        vals = np.concatenate([p[1] for p in parts])
        local = block_table_pairs(vals, t, tables[c]).pairs
        a, b = ids[local[:, 0]], ids[local[:, 1]]
        ii.append(np.minimum(a, b))  # rows of several mappers: local order is not id order
        jj.append(np.maximum(a, b))
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
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Integral) \
            or not 0 <= threshold < 64:
        raise ValueError(f"threshold={threshold!r} must be an int in [0, 63]")
    threshold = int(threshold)
    n_blocks = min(64, threshold + 2) if n_blocks is None else n_blocks
    if isinstance(n_blocks, (bool, np.bool_)) or not isinstance(n_blocks, numbers.Integral) \
            or not threshold < n_blocks <= 64:
        raise ValueError(f"n_blocks={n_blocks!r} must be an int in ({threshold}, 64]: more blocks than the "
                         f"threshold, so that every near pair shares one table's key")
    for name, v in (("n_parts", n_parts), ("n_mappers", n_mappers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an int >= 1")
    tables = _tables(int(n_blocks), threshold)  # raises for more than MAX_TABLES tables
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
        # greedy visits distinct values by first occurrence: renumber them in that order
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(u), np.int64)
        rank[order] = np.arange(len(u))
        _, rep_rank = keep_from_pairs(len(u), rank[pairs], policy="greedy")
        rep = first[order[rep_rank[rank[inverse]]]]
    keep = rep == np.arange(len(h))
    return keep, rep
