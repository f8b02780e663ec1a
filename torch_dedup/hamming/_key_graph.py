"""What the keep decision and the threshold sweep share: checked arguments and the key graph (layer 2).

:func:`_validate` checks the arguments of :func:`~torch_dedup.hamming.cluster.find_duplicates`
and of the sweeps (:mod:`torch_dedup.hamming.sweep`); :func:`_graph` collapses the
valid items into *keys* (distinct hash values, or ``(hash, label)`` groups under
``per_class``) in keep-priority order and holds their pairs as a CSR when they fit
``memory_limit`` (else the decision streams them). It sits below both callers because
cluster imports the sweep (for ``plan.sweep``), so the sweep cannot import cluster.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .._checks import check_bool, check_choice, check_int
from ..plan import POLICIES
from . import _cluster_kernels as _k
from ._search_io import _check_workers, _distance_dtype
from .search import _pair_fraction, _stream_distinct, unique_hashes
from .streaming import _collect_pairs, _PairLimit

# The threshold warnings and the streaming notes keep the logger they have always had
# (docs/clustering.md names it), whichever of find_duplicates and the sweeps logs them.
logger = logging.getLogger("torch_dedup.hamming.cluster")

_NEVER = np.int64(1) << np.int64(40)  # exclusion level of a key that never leaks

#: Default ``memory_limit``: the bytes of pairs a decision may hold at once.
DEFAULT_MEMORY_LIMIT = 1 << 30
#: Peak bytes per distinct-value pair while all of them are held (search parts, sort,
#: CSR); benchmarks/bench_memory.py measures it. cluster and sweep read both constants as
#: ``_key_graph._PAIR_BYTES`` (never a copy), so there is one value to tune or patch.
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


def _plan_args(hashes, threshold, policy, priority, labels, per_class, against, valid, sweep_max, leak_pairs,
               settings, provenance, memory_limit) -> tuple[_Args, int | None, int | None]:
    """The checked arguments every keep decision takes: ``(args, sweep_max, memory_limit)``."""
    a = _validate(hashes, threshold, policy, priority, labels, per_class, against, valid)
    check_bool("leak_pairs", leak_pairs)
    memory_limit = _check_memory_limit(memory_limit)
    if sweep_max is not None:
        sweep_max = _int_arg("sweep_max", sweep_max, 0, a.bits)
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict or None, got {type(settings).__name__}")
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"provenance must be a dict or None, got {type(provenance).__name__}")
    return a, sweep_max, memory_limit


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
