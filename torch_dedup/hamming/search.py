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
import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from typing import NamedTuple

import numpy as np

from torch_dedup.hamming import _kernels

logger = logging.getLogger(__name__)

ALGORITHMS = ("auto", "mih", "brute")
#: Never build more tables than this (each table is one pass over the hashes).
MAX_TABLES = 4096
#: Per-operation costs in nanoseconds, measured on one core (benchmarks/bench_search.py).
_COST_BUILD = 12.0  # bucket one row into one table, per 64-bit word
_COST_BUCKET = 2.0  # one (empty) bucket of one table
_COST_VERIFY = 2.0  # one candidate with equal key bits: popcount + ownership check
_COST_COLLIDE = 1.0  # one same-bucket pair with different key bits
_COST_BRUTE = 0.8  # one brute-force pair, per 64-bit word


class HammingPairs(NamedTuple):
    """Pairs within a Hamming threshold.

    Attributes:
        pairs: ``(P, 2)`` int64. Self-search: ``i < j``; query search: ``(row in hashes,
            row in other)``. Rows sorted lexicographically.
        distances: ``(P,)`` Hamming distance of each pair: uint8 for hashes up to 255
            bits, uint16 above.
    """

    pairs: np.ndarray
    distances: np.ndarray


# ----------------------------------------------------------------------------- validation


def _as_rows(hashes, name: str) -> np.ndarray:
    """``(N,)`` or ``(N, W)`` uint64 -> C-contiguous ``(N, W)`` view or copy."""
    arr = np.asarray(hashes)
    if arr.dtype != np.uint64:
        raise ValueError(
            f"{name} must have dtype uint64 (packed hashes), got dtype {arr.dtype}; "
            f"pack bits with torch_dedup's hashing or convert with .astype(np.uint64)"
        )
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    elif arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (N,) for 64-bit hashes or (N, W) with W >= 1 words, "
            f"got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def _check_threshold(threshold, bits: int) -> int:
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Integral):
        raise ValueError(
            f"threshold must be an integer in [0, {bits}] (the hash has {bits} bits), "
            f"got {threshold!r} of type {type(threshold).__name__}"
        )
    t = int(threshold)
    if not 0 <= t <= bits:
        raise ValueError(f"threshold must be in [0, {bits}] for {bits}-bit hashes, got {t}")
    return t


def default_workers() -> int:
    """Search threads when none are asked for: this process's CPUs, divided among the ranks
    of this node when torchrun says how many there are (``LOCAL_WORLD_SIZE``), so that the
    ranks of a DDP job, which each run the same search, do not each start one per CPU.

    Read at call time, never at import.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cores = max(1, os.cpu_count() or 1)
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(1, cores // int(local)) if local.isdigit() and int(local) > 0 else cores


def _check_workers(workers) -> int:
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be None or an integer >= 1, got {workers!r}")
    return int(workers)


def _check_algorithm(algorithm) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    return algorithm


def _validate(hashes, threshold, other, algorithm, workers):
    a = _as_rows(hashes, "hashes")
    bits = 64 * a.shape[1]
    b = None
    if other is not None:
        b = _as_rows(other, "other")
        if b.shape[1] != a.shape[1]:
            raise ValueError(
                f"other must have the same number of 64-bit words per hash as hashes "
                f"({a.shape[1]}, i.e. {bits} bits), got {b.shape[1]} (shape {b.shape})"
            )
    t = _check_threshold(threshold, bits)
    return a, b, t, _check_algorithm(algorithm), _check_workers(workers)


def _distance_dtype(bits: int):
    return np.uint8 if bits <= 255 else np.uint16


# ----------------------------------------------------------------------------- helpers


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
    x = np.asarray(x, dtype=np.uint64)
    return np.unpackbits(x.reshape(-1, 1).view(np.uint8), axis=1).sum(axis=1, dtype=np.uint8).reshape(x.shape)


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


class BlockTable(NamedTuple):
    """One table of the block-combination index (see ``docs/engine.md``).

    Attributes:
        key: ``(W,)`` uint64, the bits of the table's k blocks: two hashes meet in this
            table when they are identical on these bits.
        below: ``(L, W)`` uint64, one mask per block outside the table's k-subset with an
            index below its last block. The table *owns* a pair (reports it) only when
            none of these blocks is identical too; otherwise an earlier table, in the
            lexicographic order of k-subsets, already reports it.
    """

    key: np.ndarray
    below: np.ndarray


def _check_n_blocks(n_blocks, threshold: int, words: int) -> int:
    bits = 64 * words
    lo = max(threshold, words, 1)
    if isinstance(n_blocks, (bool, np.bool_)) or not isinstance(n_blocks, numbers.Integral) \
            or not lo <= int(n_blocks) <= bits:
        raise ValueError(
            f"n_blocks must be an integer in [{lo}, {bits}] (at least the threshold {threshold} and the "
            f"{words} words, blocks never straddle a word; at most one bit per block), got {n_blocks!r}"
        )
    n = int(n_blocks)
    if math.comb(n, n - threshold) > MAX_TABLES:
        raise ValueError(
            f"n_blocks={n} at threshold {threshold} makes C({n}, {n - threshold}) = "
            f"{math.comb(n, n - threshold)} tables, more than MAX_TABLES={MAX_TABLES}; "
            f"choose n_blocks closer to the threshold or to {bits}"
        )
    return n


def block_masks(n_blocks: int, words: int = 1) -> np.ndarray:
    """Masks of ``n_blocks`` disjoint blocks covering ``64 * words`` bits.

    Blocks never straddle a 64-bit word: each word holds ``n_blocks // words`` blocks
    (one more for the first ``n_blocks % words`` words), of near equal width.

    Args:
        n_blocks: number of blocks, an integer in ``[words, 64 * words]``.
        words: 64-bit words per hash (1 for 64-bit hashes).

    Returns:
        ``(n_blocks, words)`` uint64; row ``b`` has the bits of block ``b``.

    Raises:
        ValueError: ``words`` not an integer >= 1 or ``n_blocks`` out of range.

    Example:
        >>> [hex(int(m)) for m in block_masks(4)[:, 0]]
        ['0xffff', '0xffff0000', '0xffff00000000', '0xffff000000000000']
    """
    if isinstance(words, (bool, np.bool_)) or not isinstance(words, numbers.Integral) or words < 1:
        raise ValueError(f"words must be an integer >= 1 (64-bit words per hash), got {words!r}")
    words = int(words)
    if isinstance(n_blocks, (bool, np.bool_)) or not isinstance(n_blocks, numbers.Integral) \
            or not words <= int(n_blocks) <= 64 * words:
        raise ValueError(f"n_blocks must be an integer in [{words}, {64 * words}] for {words}-word hashes "
                         f"(blocks never straddle a word), got {n_blocks!r}")
    n = int(n_blocks)
    masks = np.zeros((n, words), np.uint64)
    per_word = [n // words + (1 if w < n % words else 0) for w in range(words)]
    b = 0
    for w, q in enumerate(per_word):
        lo = 0
        for r in range(q):
            width = 64 // q + (1 if r < 64 % q else 0)
            masks[b, w] = np.uint64(((1 << width) - 1) << lo)
            lo += width
            b += 1
    return masks


def block_tables(n_blocks: int, threshold: int, words: int = 1) -> list[BlockTable]:
    """The ``C(n_blocks, n_blocks - threshold)`` tables of the block-combination index.

    Two hashes within ``threshold`` differ in at most ``threshold`` of the blocks, so
    they are identical on the key of at least one table (pigeonhole); the ownership
    masks make exactly one table report them. The union of
    :func:`block_table_pairs` over these tables is therefore every pair within
    ``threshold``, each once.

    Args:
        n_blocks: number of blocks, an integer in ``[max(threshold, words, 1), 64 * words]``
            with at most :data:`MAX_TABLES` tables.
        threshold: Hamming threshold, an integer in ``[0, 64 * words]``.
        words: 64-bit words per hash.

    Returns:
        :class:`BlockTable` per k-subset of the blocks (``k = n_blocks - threshold``), in
        lexicographic order of the subsets (the order the ownership rule assumes).

    Raises:
        ValueError: ``words``, ``threshold`` or ``n_blocks`` out of range, or too many tables.

    Example:
        >>> tables = block_tables(3, 1)
        >>> len(tables), [len(t.below) for t in tables]
        (3, [0, 1, 1])
    """
    if isinstance(words, (bool, np.bool_)) or not isinstance(words, numbers.Integral) or words < 1:
        raise ValueError(f"words must be an integer >= 1 (64-bit words per hash), got {words!r}")
    words = int(words)
    t = _check_threshold(threshold, 64 * words)
    n = _check_n_blocks(n_blocks, t, words)
    return _block_tables(n, t, words)


def _block_tables(n: int, t: int, words: int) -> list[BlockTable]:
    masks = block_masks(n, words)
    out = []
    for combo in combinations(range(n), n - t):
        key = np.bitwise_or.reduce(masks[list(combo)], axis=0) if combo else np.zeros(words, np.uint64)
        chosen = set(combo)
        last = combo[-1] if combo else 0
        below = masks[[i for i in range(last) if i not in chosen]].reshape(-1, words)
        out.append(BlockTable(np.ascontiguousarray(key, np.uint64), np.ascontiguousarray(below)))
    return out


def _bucket_bits(n_rows: int) -> int:
    # about one bucket per row, but at most 2**21: past that the counting sort's scatter
    # misses cache and costs more than the extra same-bucket pairs it saves (10M rows:
    # 0.65 s per table at 2**24 buckets, 0.48 s at 2**20, one core)
    return int(min(21, max(1, math.ceil(math.log2(max(n_rows, 2))))))


def _plan(na: int, nb: int | None, words: int, t: int, algorithm: str, workers: int) -> tuple[str, int, float]:
    """Choose ``("brute", 0, cost)`` or ``("mih", n_blocks, cost)`` by predicted cost (ns)."""
    bits = 64 * words
    n_pairs = na * (na - 1) / 2 if nb is None else na * nb
    n_rows = na if nb is None else na + nb
    brute = ("brute", 0, n_pairs * words * _COST_BRUTE)
    if algorithm == "brute":
        return brute
    bb = _bucket_bits(max(na, nb or 0))
    best = None
    # k = 0 (one table, every pair in one bucket) is brute force in disguise; it keeps
    # algorithm="mih" defined for every threshold, up to t == bits.
    for n in range(max(t, words, 1), bits + 1):
        k = n - t
        tables = math.comb(n, k)
        if tables > MAX_TABLES:
            if best is not None or n > t + 64:
                break
            continue
        keybits = bits * k / n
        per_table = (
            n_rows * words * _COST_BUILD
            + (2**bb) * _COST_BUCKET * (1 if nb is None else 2)
            + n_pairs * 2.0**-keybits * words * _COST_VERIFY
            + n_pairs * 2.0**-bb * _COST_COLLIDE
        )
        cost = tables * per_table
        if best is None or cost < best[2]:
            best = ("mih", n, cost)
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


_FIRST_BUFFER = 1 << 12
_MAX_BUFFER = 1 << 22
#: Largest buffer of a streamed search (24 bytes a pair): 1.5 MB per thread.
_STREAM_BUFFER = 1 << 16


def _drain(kernel, args, state, done, emit=None):
    """Run a resumable kernel to the end, with fresh output buffers each time it fills.

    With ``emit``, each filled part goes to ``emit(ii, jj, dd)`` (views of buffers reused
    at once: the callee folds or copies them) and nothing is kept, so a stream holds
    at most one :data:`_STREAM_BUFFER` buffer per thread whatever the pair count.
    """
    parts = []
    cap = _FIRST_BUFFER
    ii = None
    while True:
        if ii is None or emit is None:
            ii = np.empty(cap, np.int64)
            jj = np.empty(cap, np.int64)
            dd = np.empty(cap, np.int64)
        p, *state = kernel(*args, *state, ii, jj, dd)
        if p and emit is not None:
            emit(ii[:p], jj[:p], dd[:p])
        elif p:
            # a mostly empty buffer would pin its full size: copy the used part
            keep = (lambda x: x[:p].copy()) if p < cap // 2 else (lambda x: x[:p])
            parts.append((keep(ii), keep(jj), keep(dd)))
        if done(state):
            return parts
        new_cap = min(2 * cap, _MAX_BUFFER if emit is None else _STREAM_BUFFER)
        if new_cap != cap:
            cap, ii = new_cap, None


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


def _table_task(a, b, t, key, below, bucket_bits, emit=None):
    nb = 1 << bucket_bits

    def done(state):
        return state[0] >= nb

    def task():
        if a.shape[1] == 1:
            k1, bl1 = key[0], np.ascontiguousarray(below[:, 0])
            sa = _kernels.bucket_sort_1(a[:, 0], k1, bucket_bits)
            if b is None:
                return _drain(_kernels.verify_self_1, (*sa, t, k1, bl1), (0, 0, 0), done, emit)
            sb = _kernels.bucket_sort_1(b[:, 0], k1, bucket_bits)
            return _drain(_kernels.verify_query_1, (*sa, *sb, t, k1, bl1), (0, 0, 0), done, emit)
        sa = _kernels.bucket_sort(a, key, bucket_bits)
        if b is None:
            return _drain(_kernels.verify_self, (*sa, t, key, below), (0, 0, 0), done, emit)
        sb = _kernels.bucket_sort(b, key, bucket_bits)
        return _drain(_kernels.verify_query, (*sa, *sb, t, key, below), (0, 0, 0), done, emit)

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
    kind, n_blocks, cost = _plan(na, nb, words, t, algorithm, workers)
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

    kind, n_blocks, _ = _plan(na, nb, a.shape[1], t, algorithm, workers)
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


def _result(ii, jj, dd, bits: int) -> HammingPairs:
    pairs = np.empty((ii.shape[0], 2), np.int64)
    pairs[:, 0] = ii
    pairs[:, 1] = jj
    return HammingPairs(pairs, dd.astype(_distance_dtype(bits)))


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


def _check_table(table, words: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        key, below = table
    except (TypeError, ValueError):
        raise ValueError(f"table must be a BlockTable (key, below) from block_tables(), got {type(table).__name__}") \
            from None
    key = np.asarray(key)
    below = np.asarray(below)
    if key.dtype != np.uint64 or key.shape != (words,):
        raise ValueError(f"table.key must be ({words},) uint64 for {64 * words}-bit hashes, got {key.dtype} "
                         f"{key.shape}; build tables with block_tables(n_blocks, threshold, words={words})")
    if below.dtype != np.uint64 or below.ndim != 2 or below.shape[1] != words:
        raise ValueError(f"table.below must be (L, {words}) uint64, got {below.dtype} {below.shape}; build "
                         f"tables with block_tables(n_blocks, threshold, words={words})")
    return np.ascontiguousarray(key), np.ascontiguousarray(below)


def block_table_pairs(hashes, threshold, table: BlockTable, other=None) -> HammingPairs:
    """Pairs within ``threshold`` that one table of the block-combination index reports.

    The search's own per-table step, on the same numba kernels (bucket sort by key bits,
    popcount inside each bucket, ownership rule): pairs of rows identical on
    ``table.key``, within ``threshold``, that no earlier table owns. Over all tables of
    ``block_tables(n, threshold, W)`` the union is every pair :func:`hamming_pairs`
    finds, each from exactly one table, so a table's rows can be split by the value of
    their key bits (a shuffle) and each part searched on its own: the distributed
    planner (:mod:`torch_dedup.engines.ray_plan`) runs this in each partition.

    Rows need not be distinct (identical rows are a pair at distance 0). Runs in the
    calling thread.

    Args:
        hashes: ``(N,)`` or ``(N, W)`` uint64.
        threshold: integer in ``[0, 64 * W]``, the one the tables were built for.
        table: a :class:`BlockTable` of ``block_tables(n_blocks, threshold, W)``.
        other: optional ``(M,)``/``(M, W)`` uint64 query set: pairs ``(row in hashes,
            row in other)`` instead of ``i < j``.

    Returns:
        :class:`HammingPairs`, rows sorted lexicographically.

    Raises:
        ValueError: bad dtype, shape, threshold or table, or 2**31 - 1 rows or more on a side.

    Example:
        >>> h = np.array([0, 1, 1 << 40], dtype=np.uint64)  # 1 and 1 << 40: in different blocks
        >>> [block_table_pairs(h, 1, tab).pairs.tolist() for tab in block_tables(2, 1)]
        [[[0, 2]], [[0, 1]]]
    """
    a, b, t, _, _ = _validate(hashes, threshold, other, "auto", 1)
    key, below = _check_table(table, a.shape[1])
    na = a.shape[0]
    nb = None if b is None else b.shape[0]
    if max(na, nb or 0) >= 2**31 - 1:
        raise ValueError(f"at most 2**31 - 2 rows per side are supported, got {max(na, nb or 0)}; split the rows "
                         f"by the value of their key bits and search each part")
    empty = np.zeros(0, np.int64)
    if na == 0 or nb == 0 or (b is None and na < 2):
        return _result(empty, empty, empty, 64 * a.shape[1])
    parts = _table_task(a, b, t, key, below, _bucket_bits(max(na, nb or 0)))()
    if not parts:
        return _result(empty, empty, empty, 64 * a.shape[1])
    ii, jj, dd = (np.concatenate([p[k] for p in parts]) for k in range(3))
    order = np.argsort(ii * (na if nb is None else nb) + jj)
    return _result(ii[order], jj[order], dd[order], 64 * a.shape[1])


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
