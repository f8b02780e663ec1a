"""The block-combination index, table by table (layer 2).

The tables of the index (pigeonhole multi-index hashing, see ``docs/engine.md``): the
block masks, the ``C(n_blocks, n_blocks - threshold)`` tables with their ownership masks,
and the per-table search step on the numba kernels. :mod:`torch_dedup.hamming.search`
runs every table of one index; :func:`block_table_pairs` runs one, for callers that
split the work themselves (the distributed planner, :mod:`torch_dedup.engines.ray_plan`).

Example:
    >>> import numpy as np
    >>> from torch_dedup.hamming.block_index import block_table_pairs, block_tables
    >>> h = np.array([0, 1, 1 << 40], dtype=np.uint64)
    >>> sorted(p for tab in block_tables(2, 1) for p in block_table_pairs(h, 1, tab).pairs.tolist())
    [[0, 1], [0, 2]]
"""

from __future__ import annotations

import math
import numbers
from itertools import combinations
from typing import NamedTuple

import numpy as np

from torch_dedup.hamming import _kernels

from ._search_io import HammingPairs, _check_threshold, _drain, _result, _validate

#: Never build more tables than this (each table is one pass over the hashes).
MAX_TABLES = 4096


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


__all__ = ["BlockTable", "block_masks", "block_table_pairs", "block_tables"]
