"""Exact Hamming range search over packed perceptual hashes (layer 2).

All pairs within a Hamming threshold, none missed, none invented, each reported once.
Identical hashes are collapsed first, the search runs on the distinct values with a
block-combination index (pigeonhole multi-index hashing, see ``docs/engine.md``) or a
brute-force kernel, whichever a cost model predicts cheaper, and the distinct-value
pairs are expanded back to item pairs.

Example:
    >>> import numpy as np
    >>> from torch_dedup.hamming.search import hamming_pairs
    >>> h = np.array([0b0000, 0b0011, 0b0000, 0b1111], dtype=np.uint64)
    >>> r = hamming_pairs(h, 2)
    >>> r.pairs.tolist(), r.distances.tolist()
    ([[0, 1], [0, 2], [1, 2], [1, 3]], [2, 0, 2, 2])
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from torch_dedup.hamming import _kernels

from ._search_io import (
    ALGORITHMS,  # noqa: F401 - re-exported: torch_dedup.hamming.search.ALGORITHMS
    HammingPairs,
    _as_rows,
    _drain,
    _result,
    _validate,
    default_workers,
)
from .block_index import (
    MAX_TABLES,
    BlockTable,
    _block_tables,
    _bucket_bits,
    _table_task,
    block_masks,
    block_table_pairs,
    block_tables,
)

logger = logging.getLogger(__name__)

#: Per-operation costs in nanoseconds, measured on one core (benchmarks/bench_search.py).
_COST_BUILD = 12.0  # bucket one row into one table, per 64-bit word
_COST_BUCKET = 2.0  # one (empty) bucket of one table
_COST_VERIFY = 2.0  # one candidate with equal key bits: popcount + ownership check
_COST_COLLIDE = 1.0  # one same-bucket pair with different key bits
_COST_BRUTE = 0.8  # one brute-force pair, per 64-bit word


# ----------------------------------------------------------------------------- helpers


_M1, _M2, _M4 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1, _S2, _S4, _S56 = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


def popcount64(x) -> np.ndarray:
    """Set bits of every element of a uint64 array (vectorised numpy).

    Args:
        x: uint64 array of any shape.

    Returns:
        uint8 array of the same shape.

    Example:
        >>> popcount64(np.array([0, 7, 2**64 - 1], dtype=np.uint64)).tolist()
        [0, 3, 64]
    """
    # SWAR popcount in uint64 arithmetic (wrapping multiply): ~4x faster than unpacking bits,
    # and it needs nothing newer than the numpy floor
    x = np.asarray(x, dtype=np.uint64)
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return ((x * _H01) >> _S56).astype(np.uint8)


def hamming_distance(a, b) -> np.ndarray:
    """Hamming distance between hashes, broadcasting ``(N,)``/``(N, W)`` rows.

    Args:
        a: uint64 hashes, ``(...,)`` for 64-bit or ``(..., W)`` for W words.
        b: uint64 hashes broadcastable against ``a``.

    Returns:
        int64 distances (the last axis summed for multi-word input of ndim >= 2).

    Example:
        >>> hamming_distance(np.array([0b1010], np.uint64), np.array([0b0110], np.uint64)).tolist()
        [2]
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.uint64 or b.dtype != np.uint64:
        raise ValueError(f"a and b must be uint64, got {a.dtype} and {b.dtype}")
    pc = popcount64(a ^ b).astype(np.int64)
    return pc.sum(axis=-1) if max(a.ndim, b.ndim) >= 2 else pc


def unique_hashes(hashes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse exact duplicates.

    Unique rows come out **sorted** (ascending value; lexicographic by word for
    multi-word hashes), as :func:`numpy.unique` orders them.

    Args:
        hashes: ``(N,)`` or ``(N, W)`` uint64.

    Returns:
        ``(unique_rows, inverse, first_index)``: ``unique_rows`` has the input's layout
        (``(U,)`` or ``(U, W)``); ``inverse`` ``(N,)`` int64 with
        ``unique_rows[inverse] == hashes``; ``first_index`` ``(U,)`` int64, the first item
        holding each unique value.

    Raises:
        ValueError: wrong dtype or shape.

    Example:
        >>> u, inv, first = unique_hashes(np.array([5, 3, 5], dtype=np.uint64))
        >>> u.tolist(), inv.tolist(), first.tolist()
        ([3, 5], [1, 0, 1], [1, 0])
    """
    rows = _as_rows(hashes, "hashes")
    if rows.shape[0] == 0:
        empty = np.zeros(0, np.int64)
        return np.asarray(hashes).copy(), empty, empty.copy()
    if rows.shape[1] == 1:
        u, first, inv = np.unique(rows[:, 0], return_index=True, return_inverse=True)
        if np.asarray(hashes).ndim == 2:
            u = u.reshape(-1, 1)
    else:
        u, first, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    return u, inv.reshape(-1).astype(np.int64, copy=False), first.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------- planning


#: Rows sampled per side to measure how often real hashes share a table's key bits.
_KEY_SAMPLE = 1024
#: Index candidates (cheapest under the uniform-bits model) re-costed with measured collisions.
_RECOST = 4


def _key_collision_rate(a: np.ndarray, b: np.ndarray | None, n_blocks: int, t: int, seed: int = 0) -> float:
    """Measured fraction of row pairs that share the key bits of a table of ``n_blocks`` blocks.

    The uniform-bits model says ``2**-keybits``; real perceptual hashes have correlated,
    unbalanced bits, so far more pairs share a key and the index verifies far more
    candidates (100k Fashion-MNIST-like hashes at t=12: 5.8x slower than brute force
    before this was measured). A seeded sample of rows and a few seeded tables: the same
    input gives the same estimate on every rank.
    """
    rng = np.random.default_rng(seed)
    words = a.shape[1]
    sa = a if len(a) <= _KEY_SAMPLE else a[np.sort(rng.choice(len(a), _KEY_SAMPLE, replace=False))]
    sb = None if b is None else (b if len(b) <= _KEY_SAMPLE else b[np.sort(rng.choice(len(b), _KEY_SAMPLE,
                                                                                       replace=False))])
    masks = block_masks(n_blocks, words)
    k = n_blocks - t
    mix = rng.integers(1, 2**63, size=words, dtype=np.int64).astype(np.uint64) | np.uint64(1)
    rates = []
    for _ in range(4):
        pick = np.sort(rng.choice(n_blocks, k, replace=False))
        key_mask = np.bitwise_or.reduce(masks[pick], axis=0)

        def keys(rows):
            # one uint64 per row (odd multipliers mix the words; wrapping is intended)
            return ((rows & key_mask) * mix).sum(axis=1, dtype=np.uint64)

        ka = keys(sa)
        if sb is None:
            _, counts = np.unique(ka, return_counts=True)
            pairs = len(ka) * (len(ka) - 1) / 2
            rates.append(float((counts * (counts - 1) / 2).sum() / pairs) if pairs else 0.0)
        else:
            kb = keys(sb)
            va, ca = np.unique(ka, return_counts=True)
            vb, cb = np.unique(kb, return_counts=True)
            _, ia, ib = np.intersect1d(va, vb, assume_unique=True, return_indices=True)
            rates.append(float((ca[ia] * cb[ib]).sum() / (len(ka) * len(kb))))
    return float(np.mean(rates))


def _plan(na: int, nb: int | None, words: int, t: int, algorithm: str, workers: int, a: np.ndarray | None = None,
          b: np.ndarray | None = None) -> tuple[str, int, float]:
    """Choose ``("brute", 0, cost)`` or ``("mih", n_blocks, cost)`` by predicted cost (ns).

    With the rows given (``a``, ``b``), the few cheapest index candidates are re-costed with
    the key collision rate measured on a sample of them (:func:`_key_collision_rate`).
    """
    bits = 64 * words
    n_pairs = na * (na - 1) / 2 if nb is None else na * nb
    n_rows = na if nb is None else na + nb
    brute = ("brute", 0, n_pairs * words * _COST_BRUTE)
    if algorithm == "brute":
        return brute
    bb = _bucket_bits(max(na, nb or 0))

    def cost_of(n: int, collide: float) -> float:
        per_table = (
            n_rows * words * _COST_BUILD
            + (2**bb) * _COST_BUCKET * (1 if nb is None else 2)
            + n_pairs * collide * words * _COST_VERIFY
            + n_pairs * 2.0**-bb * _COST_COLLIDE
        )
        return math.comb(n, n - t) * per_table

    candidates = []
    # k = 0 (one table, every pair in one bucket) is brute force in disguise; it keeps
    # algorithm="mih" defined for every threshold, up to t == bits.
    for n in range(max(t, words, 1), bits + 1):
        k = n - t
        tables = math.comb(n, k)
        if tables > MAX_TABLES:
            if candidates or n > t + 64:
                break
            continue
        candidates.append(("mih", n, cost_of(n, 2.0 ** -(bits * k / n))))
    candidates.sort(key=lambda c: c[2])
    if a is not None and candidates and algorithm == "auto":
        # measured collisions can only raise a candidate's cost (never below the uniform model)
        candidates = sorted((("mih", n, max(c, cost_of(n, _key_collision_rate(a, b, n, t))) if n > t else c)
                             for _, n, c in candidates[:_RECOST]), key=lambda c: c[2])
    best = candidates[0] if candidates else None
    if best is None:
        if algorithm == "mih":
            raise ValueError(
                f"algorithm='mih' cannot index threshold {t} on {bits}-bit hashes within "
                f"{MAX_TABLES} tables; use algorithm='brute' or 'auto'"
            )
        return brute
    if algorithm == "mih" or best[2] < brute[2]:
        return best
    return brute


# ----------------------------------------------------------------------------- search


def _run(tasks, workers: int):
    if workers == 1 or len(tasks) == 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda task: task(), tasks))


def _brute_task(a, b, t, i0, i1, emit=None):
    def task():
        if a.shape[1] == 1:
            x = a[:, 0]
            if b is None:
                return _drain(_kernels.brute_self_1, (x, t, i1), (i0, i0 + 1), lambda s: s[0] >= i1, emit)
            return _drain(_kernels.brute_query_1, (x, b[:, 0], t, i1), (i0, 0), lambda s: s[0] >= i1, emit)
        if b is None:
            return _drain(_kernels.brute_self, (a, t, i1), (i0, i0 + 1), lambda s: s[0] >= i1, emit)
        return _drain(_kernels.brute_query, (a, b, t, i1), (i0, 0), lambda s: s[0] >= i1, emit)

    return task


def _row_chunks(n: int, parts: int, triangular: bool) -> list[tuple[int, int]]:
    """Row ranges of about equal work (``n - i`` per row when ``triangular``)."""
    if n == 0:
        return []
    parts = max(1, min(parts, n))
    if not triangular:
        edges = np.linspace(0, n, parts + 1).round().astype(int)
    else:
        # work before row i ~ n^2 - (n - i)^2  ->  i_k = n (1 - sqrt(1 - k/parts))
        k = np.arange(parts + 1) / parts
        edges = np.round(n * (1 - np.sqrt(1 - k))).astype(int)
    edges[0], edges[-1] = 0, n
    return [(int(s), int(e)) for s, e in zip(edges[:-1], edges[1:]) if e > s]


def _search_distinct(a: np.ndarray, b: np.ndarray | None, t: int, algorithm: str, workers: int):
    """Pairs of rows of distinct values ``a`` (and ``b``) within ``t``, sorted, int64."""
    na = a.shape[0]
    nb = None if b is None else b.shape[0]
    words = a.shape[1]
    empty = (np.zeros(0, np.int64),) * 3
    if na == 0 or nb == 0 or (b is None and (na < 2 or t == 0)):
        return empty  # distinct values: no self pair at distance 0
    if max(na, nb or 0) >= 2**31 - 1:
        raise ValueError(
            f"at most 2**31 - 2 distinct hashes per side are supported, got {max(na, nb or 0)}; "
            f"split the search (e.g. query shards against each other with other=)"
        )
    kind, n_blocks, cost = _plan(na, nb, words, t, algorithm, workers, a, b)
    logger.debug("hamming search: %s, n_blocks=%d, predicted %.3g s (1 core)", kind, n_blocks, cost * 1e-9)
    if kind == "brute":
        chunks = _row_chunks(na, 8 * workers, triangular=b is None)
        tasks = [_brute_task(a, b, t, s, e) for s, e in chunks]
    else:
        bb = _bucket_bits(max(na, nb or 0))
        tasks = [_table_task(a, b, t, tab.key, tab.below, bb) for tab in _block_tables(n_blocks, t, words)]
    parts = [part for chunk in _run(tasks, workers) for part in chunk]
    ii = np.concatenate([p[0] for p in parts]) if parts else empty[0]
    jj = np.concatenate([p[1] for p in parts]) if parts else empty[1]
    dd = np.concatenate([p[2] for p in parts]) if parts else empty[2]
    if kind != "brute" and ii.size:
        order = np.argsort(ii * (na if nb is None else nb) + jj)
        ii, jj, dd = ii[order], jj[order], dd[order]
    return ii, jj, dd


class _Stopped(Exception):
    """Raised inside a streamed search's tasks once another task's consumer has failed."""


def _stream_distinct(a: np.ndarray, b: np.ndarray | None, t: int, consume, *, algorithm: str = "auto",
                     workers: int = 1) -> None:
    """The search of :func:`_search_distinct`, every pair handed to ``consume`` instead of kept.

    ``consume(ii, jj, dd)`` gets int64 views of a reused buffer, at most
    :data:`_STREAM_BUFFER` pairs at a time, in no particular order, one call at a time (a
    lock serialises the threads), and must fold or copy them before it returns. Memory:
    one buffer per thread plus what ``consume`` keeps; every pair of the search is still
    found exactly once. ``a`` (and ``b``) need not be distinct rows: identical rows are
    a pair at distance 0 (except at ``t == 0`` in a self-search, which reports nothing).
    The first exception a ``consume`` raises stops the other tasks and is re-raised.
    """
    na = a.shape[0]
    nb = None if b is None else b.shape[0]
    if na == 0 or nb == 0 or (b is None and (na < 2 or t == 0)):
        return
    if max(na, nb or 0) >= 2**31 - 1:
        raise ValueError(f"at most 2**31 - 2 rows per side are supported, got {max(na, nb or 0)}")
    lock = threading.Lock()
    failed: list[BaseException] = []

    def emit(ii, jj, dd):
        with lock:
            if failed:
                raise _Stopped
            try:
                consume(ii, jj, dd)
            except BaseException as e:
                failed.append(e)
                raise

    kind, n_blocks, _ = _plan(na, nb, a.shape[1], t, algorithm, workers, a, b)
    if kind == "brute":
        tasks = [_brute_task(a, b, t, s, e, emit) for s, e in _row_chunks(na, 8 * workers, triangular=b is None)]
    else:
        bb = _bucket_bits(max(na, nb or 0))
        tasks = [_table_task(a, b, t, tab.key, tab.below, bb, emit) for tab in _block_tables(n_blocks, t, a.shape[1])]
    try:
        _run(tasks, workers)
    except BaseException:
        if failed:
            raise failed[0] from None
        raise


def _pair_fraction(a: np.ndarray, b: np.ndarray | None, t: int, *, classes: np.ndarray | None = None,
                   sample: int = 2048, seed: int = 0) -> float:
    """Fraction of row pairs within ``t`` (self: ``i < j`` of ``a``; query: ``a x b``), from a sample.

    Exact when the rows fit in the sample; otherwise a uniform sample of ``sample`` rows
    per side (fixed seed: the same input gives the same estimate on every rank). Rows
    need not be distinct. With ``classes`` (self only), only pairs whose classes differ
    count. An estimate: data with a few tight groups can hold more pairs than the
    sample sees, so callers keep a hard cap as well.
    """
    a = _as_rows(a, "a")
    b = None if b is None else _as_rows(b, "b")
    rng = np.random.default_rng(seed)
    pick_a = np.arange(len(a)) if len(a) <= sample else np.sort(rng.choice(len(a), sample, replace=False))
    sa = a[pick_a]
    ca = None if classes is None else np.asarray(classes)[pick_a]
    if b is None:
        sb, cb = sa, ca
    else:
        sb = b if len(b) <= sample else b[np.sort(rng.choice(len(b), sample, replace=False))]
        cb = None
    if len(sa) == 0 or len(sb) == 0:
        return 0.0
    hits = 0
    for s in range(0, len(sa), 128):
        d = popcount64(sa[s:s + 128, None, :] ^ sb[None, :, :]).sum(axis=2, dtype=np.int64)
        within = d <= t
        if b is None:
            within &= np.arange(s, s + len(d))[:, None] < np.arange(len(sb))[None, :]
        if ca is not None:
            within &= ca[s:s + 128, None] != cb[None, :]
        hits += int(within.sum())
    total = len(sa) * (len(sa) - 1) / 2 if b is None else len(sa) * len(sb)
    return hits / total if total else 0.0


def unique_pairs(hashes, threshold, other=None, *, algorithm: str = "auto", workers: int | None = None) -> HammingPairs:
    """Pairs between distinct hash values within ``threshold``.

    Indices refer to the rows of ``unique_hashes(hashes)[0]`` (and, for a query, of
    ``unique_hashes(other)[0]``), so an exact-duplicate group of k items costs nothing
    instead of k² pairs; clustering uses this and the ``inverse`` of
    :func:`unique_hashes`. Self-search never reports distance 0 (values are distinct);
    a query reports a value present on both sides at distance 0.

    Args:
        hashes: ``(N,)`` or ``(N, W)`` uint64.
        threshold: integer in ``[0, 64 * W]``.
        other: optional query set with the same word count.
        algorithm: ``"auto"`` (cost model), ``"mih"`` or ``"brute"``.
        workers: threads (default: the CPUs this process may use).

    Returns:
        :class:`HammingPairs` on unique-row indices, sorted.

    Raises:
        ValueError: bad dtype, shape, threshold, algorithm or workers.

    Example:
        >>> h = np.array([1, 1, 3], dtype=np.uint64)
        >>> unique_pairs(h, 1).pairs.tolist()
        [[0, 1]]
    """
    a, b, t, algorithm, workers = _validate(hashes, threshold, other, algorithm, workers)
    ua = unique_hashes(a)[0]
    ub = None if b is None else unique_hashes(b)[0]
    return _result(*_search_distinct(ua, ub, t, algorithm, workers), 64 * a.shape[1])


def _groups(inverse: np.ndarray, first_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped by unique value (ascending within a group) and group offsets."""
    u = first_index.shape[0]
    if inverse.shape[0] == u:  # no duplicates: every group is its first item
        return first_index, np.arange(u + 1, dtype=np.int64)
    members = np.argsort(inverse, kind="stable").astype(np.int64, copy=False)
    gstart = np.zeros(u + 1, np.int64)
    np.cumsum(np.bincount(inverse, minlength=u), out=gstart[1:])
    return members, gstart


def hamming_pairs(hashes, threshold, other=None, *, algorithm: str = "auto", workers: int | None = None) -> HammingPairs:
    """All pairs of items whose hashes are within ``threshold`` bits (exact).

    Self-search (``other=None``) reports every ``i < j`` with
    ``hamming(hashes[i], hashes[j]) <= threshold`` once; identical hashes are pairs at
    distance 0, so an exact-duplicate group of k items gives k(k-1)/2 pairs (use
    :func:`unique_pairs` to avoid that). Query search reports every ``(i, j)`` with
    ``hamming(hashes[i], other[j]) <= threshold``.

    Args:
        hashes: ``(N,)`` uint64 for 64-bit hashes or ``(N, W)`` for ``64 * W`` bits.
        threshold: integer in ``[0, 64 * W]``.
        other: optional ``(M,)``/``(M, W)`` uint64 query set (e.g. the test set).
        algorithm: ``"auto"`` picks the block-combination index or brute force by a cost
            model; ``"mih"`` or ``"brute"`` force one.
        workers: threads (default: the CPUs this process may use).

    Returns:
        :class:`HammingPairs`, rows sorted lexicographically.

    Raises:
        ValueError: non-uint64 dtype, wrong shape, ``other`` with another word count,
            threshold not an integer in range, unknown algorithm, bad workers.

    Example:
        >>> h = np.array([0, 1, 0xFF], dtype=np.uint64)
        >>> r = hamming_pairs(h, 1)
        >>> r.pairs.tolist(), r.distances.tolist()
        ([[0, 1]], [1])
    """
    a, b, t, algorithm, workers = _validate(hashes, threshold, other, algorithm, workers)
    bits = 64 * a.shape[1]
    ua, inv_a, first_a = unique_hashes(a)
    ma, ga = _groups(inv_a, first_a)
    if b is None:
        ui, uj, ud = _search_distinct(ua, None, t, algorithm, workers)
        ii, jj, dd = _kernels.expand_self(ui, uj, ud, ma, ga)
        n_other = a.shape[0]
    else:
        ub, inv_b, first_b = unique_hashes(b)
        mb, gb = _groups(inv_b, first_b)
        ui, uj, ud = _search_distinct(ua, ub, t, algorithm, workers)
        ii, jj, dd = _kernels.expand_query(ui, uj, ud, ma, ga, mb, gb)
        n_other = b.shape[0]
    if ii.size:
        order = np.argsort(ii * n_other + jj)
        ii, jj, dd = ii[order], jj[order], dd[order]
    return _result(ii, jj, dd, bits)


__all__ = [
    "BlockTable",
    "HammingPairs",
    "block_masks",
    "block_table_pairs",
    "block_tables",
    "default_workers",
    "hamming_distance",
    "hamming_pairs",
    "popcount64",
    "unique_hashes",
    "unique_pairs",
]
