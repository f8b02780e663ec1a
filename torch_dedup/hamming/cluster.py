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
import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .._checks import check_bool, check_choice, check_int
from ..plan import POLICIES, DedupPlan
from . import _cluster_kernels as _k
from ._search_io import _check_workers, _distance_dtype
from .search import _pair_fraction, _stream_distinct, popcount64, unique_hashes
from .streaming import _collect_pairs, _components_streamed, _greedy_streamed, _PairLimit

__all__ = ["ClassSweep", "find_duplicates", "keep_from_pairs", "sweep_thresholds", "sweep_thresholds_by_class"]

logger = logging.getLogger(__name__)

_NEVER = np.int64(1) << np.int64(40)  # exclusion level of a key that never leaks

#: Default ``memory_limit``: the bytes of pairs a decision may hold at once.
DEFAULT_MEMORY_LIMIT = 1 << 30
#: Peak bytes per distinct-value pair while all of them are held (search parts, sort,
#: CSR); benchmarks/bench_memory.py measures it.
_PAIR_BYTES = 64
#: Bytes per output pair (label conflicts, leak pairs): the int64 rows plus their sort.
_OUT_PAIR_BYTES = 64
#: Random-pair fraction from which a threshold is reported as too large.
_RANDOM_PAIRS_WARN = 1e-3


# --------------------------------------------------------------------------- validation
def _rows(arr, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype != np.uint64:
        raise ValueError(f"{name} must be a uint64 array of packed hashes, got dtype {a.dtype}; "
                         "use torch_dedup's hashing output or .astype(np.uint64)")
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    elif a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N,) for 64-bit hashes or (N, W) with W >= 1, got {a.shape}")
    return np.ascontiguousarray(a)


def _int_arg(name: str, value, lo: int, hi: int) -> int:
    return check_int(name, value, lo, hi, hint=f"for {hi}-bit hashes")


def _per_item(name: str, value, n: int) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one entry per hash, got shape {a.shape}")
    return a


def _order(priority, vidx: np.ndarray) -> tuple[np.ndarray, str]:
    """Valid items (local positions) in keep-priority order: higher score first, ties by index."""
    if priority is None:
        return np.arange(len(vidx), dtype=np.int64), "index"
    p = priority[vidx]
    if p.dtype.kind == "f":
        key = -p.astype(np.float64)
    elif p.dtype.kind == "u":
        key = ~p.astype(np.uint64)  # order-reversing without overflow
    else:
        key = ~p.astype(np.int64)
    return np.argsort(key, kind="stable").astype(np.int64), "score"


def _class_codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)`` like ``np.unique(labels, return_inverse=True)``, in O(N) for compact labels."""
    if len(labels) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if hi - lo > 4 * len(labels) + (1 << 16):  # sparse label values: sort instead
        classes, codes = np.unique(labels, return_inverse=True)
        return classes.astype(np.int64), codes.reshape(-1).astype(np.int64)
    present = np.bincount(labels - lo, minlength=hi - lo + 1) > 0
    classes = np.flatnonzero(present).astype(np.int64) + lo
    lut = np.cumsum(present, dtype=np.int64) - 1
    return classes, lut[labels - lo]


@dataclass
class _Args:
    rows: np.ndarray
    n: int
    bits: int
    threshold: int
    policy: str
    priority: np.ndarray | None
    labels: np.ndarray | None
    per_class: bool
    against: np.ndarray | None
    valid: np.ndarray


def _validate(hashes, threshold, policy, priority, labels, per_class, against, valid) -> _Args:
    rows = _rows(hashes, "hashes")
    n, bits = rows.shape[0], 64 * rows.shape[1]
    t = _int_arg("threshold", threshold, 0, bits)
    check_choice("policy", policy, POLICIES)
    if priority is not None:
        priority = _per_item("priority", priority, n)
        if priority.dtype.kind not in "biuf":
            raise ValueError(f"priority must be a real-valued score array (higher kept first), got dtype "
                             f"{priority.dtype}")
        if priority.dtype.kind == "f" and np.isnan(priority).any():
            raise ValueError(f"priority has {int(np.isnan(priority).sum())} NaN values; give every item a score")
    if labels is not None:
        labels = _per_item("labels", labels, n)
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be an integer class array, got dtype {labels.dtype}")
        if labels.dtype.kind == "u" and n and labels.max() > np.iinfo(np.int64).max:
            raise ValueError("labels must fit in int64")
        labels = labels.astype(np.int64)
    check_bool("per_class", per_class)
    if per_class and labels is None:
        raise ValueError("per_class=True needs labels=: an (N,) int array of class labels (e.g. dataset.targets)")
    if against is not None:
        against = _rows(against, "against")
        if against.shape[1] != rows.shape[1]:
            raise ValueError(f"against has {against.shape[1]} 64-bit words per hash but hashes have "
                             f"{rows.shape[1]}; hash both sets with the same method and hash_size")
    if valid is None:
        valid = np.ones(n, np.bool_)
    else:
        valid = _per_item("valid", valid, n)
        if valid.dtype != np.bool_:
            raise ValueError(f"valid must be a bool mask (True = hashed), got dtype {valid.dtype}")
    return _Args(rows, n, bits, t, policy, priority, labels, bool(per_class), against, valid)


def _check_memory_limit(memory_limit) -> int | None:
    if memory_limit is None:
        return None
    return check_int("memory_limit", memory_limit, 1 << 20, hint="bytes; None lifts the cap")


def _random_pair_fraction(threshold: int, bits: int) -> float:
    """Fraction of *unrelated* image pairs (independent uniform hashes) within ``threshold``:
    ``sum(C(bits, i) for i <= threshold) / 2**bits``, what a threshold removes by chance."""
    return sum(math.comb(bits, i) for i in range(threshold + 1)) / 2 ** bits  # exact ints: 2.0**1024 overflows


def _warn_threshold(name: str, t: int, bits: int, limit: float = _RANDOM_PAIRS_WARN) -> None:
    frac = _random_pair_fraction(t, bits)
    if frac >= limit:
        safe = max(s for s in range(bits + 1) if _random_pair_fraction(s, bits) < _RANDOM_PAIRS_WARN)
        logger.warning(
            "%s=%d on %d-bit hashes: %.3g%% of unrelated images (independent hashes) are within it, so "
            "images that are not near-duplicates get removed%s. A threshold counts bits of the whole hash: "
            "scale it with the hash size (t=6 at hash_size=8, 64 bits, is about t=24 at hash_size=16, 256 "
            "bits); keep it at most %d for %d bits, or use a larger hash_size.",
            name, t, bits, 100 * frac, " (above half the bits: most pairs are random)" if 2 * t >= bits else "",
            safe, bits)


def _refuse(what: str, count: int, exact: bool, t: int, bits: int, limit: int, estimated: bool = False):
    size = count * _OUT_PAIR_BYTES
    how = ("are about" if estimated else "are" if exact else "are more than")
    src = " (estimated from a sample of the hashes, before the search)" if estimated else ""
    raise ValueError(
        f"{what} at threshold {t} on {bits}-bit hashes {how} {count:,} pairs{src}, about {size / 2**20:,.0f} MiB, "
        f"above memory_limit={limit:,} bytes. Lower the threshold (a fraction {_random_pair_fraction(t, bits):.2g} "
        f"of unrelated hash pairs is within it), hash with a larger hash_size, or raise the cap: "
        f"memory_limit=None (no cap) or memory_limit={max(2 * size, limit):,}")


# --------------------------------------------------------------------------- the key graph
@dataclass
class _Graph:
    vidx: np.ndarray        # (Nv,) global index of each valid item
    uniq: np.ndarray        # (U, W) distinct hash values of valid items
    inv: np.ndarray         # (Nv,) item -> distinct value
    item_key: np.ndarray    # (Nv,) item -> key id (key ids are priority positions)
    best: np.ndarray        # (K,) key -> its best member (local item index)
    key_class: np.ndarray   # (K,) class code of the key's best member (0 without labels)
    n_classes: int
    classes: np.ndarray     # (C,) label values
    item_code: np.ndarray | None  # (Nv,) class code per valid item
    vc_groups: tuple | None  # (value, class, first item, item -> group) of the (value, label) groups
    key_rows: np.ndarray    # (K, W) hash value of each key, in key (priority) order
    excl_level: np.ndarray  # (K,) smallest threshold at which a key leaks into `against`
    leak_row: np.ndarray    # (U,) nearest row of `against` per distinct value (-1 if none)
    leak_dist: np.ndarray   # (U,) its distance (_NEVER if none)
    leak_upairs: np.ndarray  # (L, 2) (distinct value, distinct `against` value) within the leak_pairs threshold
    leak_udist: np.ndarray   # (L,) their distances
    against_inv: np.ndarray  # (M,) `against` row -> distinct `against` value
    per_class: bool = False
    # the materialised pairs, or None when the decision streams them (more than the memory limit)
    indptr: np.ndarray | None = None
    nbr: np.ndarray | None = None
    dist: np.ndarray | None = None
    upairs: np.ndarray | None = None  # (P, 2) distinct-value pairs within the search threshold
    udist: np.ndarray | None = None

    @property
    def streamed(self) -> bool:
        return self.indptr is None


def _leak_search(uniq: np.ndarray, against: np.ndarray | None, search_t: int, keep_t: int | None,
                 cap: int | None, workers: int):
    """Nearest ``against`` row per distinct value (folded while the search streams), and the
    value pairs within ``keep_t`` when leak pairs are asked for (``None``: none kept)."""
    n_u = len(uniq)
    leak_row = np.full(n_u, -1, np.int64)
    leak_dist = np.full(n_u, _NEVER, np.int64)
    kept = []
    against_inv = np.zeros(0, np.int64)
    if against is None or not len(against) or not n_u:
        e = np.zeros(0, np.int64)
        return leak_row, leak_dist, e.reshape(0, 2), e, against_inv
    ua, against_inv, a_first = unique_hashes(against)
    ua = np.ascontiguousarray(ua.reshape(len(ua), uniq.shape[1]))
    count = 0

    def consume(ii, jj, dd):
        nonlocal count
        _k.fold_nearest(ii, jj, dd, a_first, leak_row, leak_dist)
        if keep_t is not None:
            m = dd <= keep_t
            count += int(m.sum())
            if cap is not None and count > cap:
                raise _PairLimit(count)
            kept.append((ii[m].copy(), jj[m].copy(), dd[m].copy()))

    _stream_distinct(uniq, ua, search_t, consume, workers=workers)
    if kept:
        ii, jj, dd = (np.concatenate([p[k] for p in kept]) for k in range(3))
    else:
        ii = jj = dd = np.zeros(0, np.int64)
    return leak_row, leak_dist, np.stack([ii, jj], axis=1).reshape(-1, 2), dd, against_inv


def _graph(a: _Args, search_t: int, order_v_fn, memory_limit: int | None, leak_pairs_t: int | None = None,
           workers: int | None = None) -> tuple[_Graph, str]:
    workers = _check_workers(workers)
    vidx = np.flatnonzero(a.valid).astype(np.int64)
    hv = a.rows[vidx]
    uniq, inv, _ = unique_hashes(hv)
    uniq = np.ascontiguousarray(uniq.reshape(len(uniq), a.rows.shape[1]))
    n_u = len(uniq)

    out_cap = None if memory_limit is None else memory_limit // _OUT_PAIR_BYTES
    if leak_pairs_t is not None and out_cap is not None and a.against is not None and len(vidx):
        est = _pair_fraction(hv, a.against, leak_pairs_t) * len(vidx) * len(a.against)
        if est > out_cap:
            _refuse("leak pairs (leak_pairs=True)", int(est), False, leak_pairs_t, a.bits, memory_limit, True)
    try:
        leak_row, leak_dist, leak_upairs, leak_udist, against_inv = _leak_search(
            uniq, a.against, search_t, leak_pairs_t, out_cap, workers)
    except _PairLimit as e:
        _refuse("leak pairs (leak_pairs=True)", e.args[0], False, leak_pairs_t, a.bits, memory_limit)

    classes = np.zeros(1, np.int64)
    item_code = vc_groups = None
    if a.labels is not None:
        classes, item_code = _class_codes(a.labels[vidx])
        vc_groups = _k.value_class_groups(inv, item_code, n_u)
    n_classes = max(len(classes), 1)
    if a.per_class:
        key_uid, key_code, _, kinv = vc_groups
    else:
        kinv, key_uid, key_code = inv, np.arange(n_u, dtype=np.int64), None
    n_keys = len(key_uid)

    order_v, kind = order_v_fn(vidx)
    firstpos = _k.best_position(kinv[order_v], n_keys)
    korder = np.argsort(firstpos, kind="stable")           # position -> key
    kpos = np.empty(n_keys, np.int64)
    kpos[korder] = np.arange(n_keys, dtype=np.int64)       # key -> position
    best = order_v[firstpos[korder]]
    if key_code is not None:
        key_class = key_code[korder]
    elif item_code is not None:
        key_class = item_code[best]
    else:
        key_class = np.zeros(n_keys, np.int64)
    excl_level = leak_dist[key_uid[korder]]
    g = _Graph(vidx, uniq, inv, kpos[kinv], best, key_class, n_classes, classes, item_code, vc_groups,
               uniq[key_uid[korder]], excl_level, leak_row, leak_dist, leak_upairs, leak_udist, against_inv,
               per_class=a.per_class)

    # Hold every pair at once only when they fit the memory limit: estimated from a
    # sample first, then held to a hard cap while the search runs (the sample can miss
    # tight clusters). Past it the decision streams them (_decide_streamed).
    cap = None if memory_limit is None else memory_limit // _PAIR_BYTES
    if cap is not None and n_u > 1 and _pair_fraction(uniq, None, search_t) * n_u * (n_u - 1) / 2 > cap:
        logger.info("find_duplicates: more than memory_limit=%d bytes of pairs at threshold %d expected; "
                    "streaming them", memory_limit, search_t)
        return g, kind
    try:
        ui, uj, ud = _collect_pairs(uniq, search_t, cap, None, workers)
    except _PairLimit:
        logger.info("find_duplicates: pairs at threshold %d passed memory_limit=%d bytes; streaming them",
                    search_t, memory_limit)
        return g, kind
    udist = ud.astype(_distance_dtype(a.bits))
    del ud
    if a.per_class:
        key_ptr = np.searchsorted(key_uid, np.arange(n_u + 1))
        ka, kb, kd = _k.expand_key_pairs(ui, uj, udist, key_ptr, key_code)
        pa, pb = kpos[ka], kpos[kb]
        del ka, kb
    else:
        pa, pb, kd = kpos[ui], kpos[uj], udist
    g.indptr, g.nbr, g.dist = _k.lower_csr(pa, pb, kd, n_keys)
    del pa, pb, kd
    g.upairs = np.stack([ui, uj], axis=1).reshape(-1, 2)
    g.udist = udist
    return g, kind


def _label_conflicts(g: _Graph, threshold: int, n: int, bits: int, memory_limit: int | None,
                     workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within ``threshold`` whose labels differ, one per pair of ``(hash, label)`` groups.

    Each group stands for itself by its lowest-index item, so a block of 10k identical
    placeholder images over 10 labels gives 45 pairs, not 5·10⁷. Sorted, ``i < j``.
    They are output, so they cannot stream: above ``memory_limit`` (estimated from a
    sample of the groups first, then counted exactly) a ValueError says how many and what to do.
    """
    cap = np.iinfo(np.int64).max if memory_limit is None else memory_limit // _OUT_PAIR_BYTES
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
    if memory_limit is not None and total > memory_limit // _OUT_PAIR_BYTES:
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
        return _greedy_streamed(g.key_rows, cls, excluded, t, memory_limit // _PAIR_BYTES, workers)
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
    a = _validate(hashes, threshold, policy, priority, labels, per_class, against, valid)
    check_bool("leak_pairs", leak_pairs)
    memory_limit = _check_memory_limit(memory_limit)
    if sweep_max is not None:
        sweep_max = _int_arg("sweep_max", sweep_max, 0, a.bits)
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict or None, got {type(settings).__name__}")
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"provenance must be a dict or None, got {type(provenance).__name__}")
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
            kept = _greedy_streamed(g.key_rows, cls, g.excl_level <= s, s, memory_limit // _PAIR_BYTES, workers)[0]
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
