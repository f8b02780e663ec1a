"""The exact Hamming search against the naive numpy brute force of tests/naive.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from naive import brute_pairs, unique_rows
from torch_dedup.hamming import _search_io
from torch_dedup.hamming.search import (
    MAX_TABLES,
    BlockTable,
    HammingPairs,
    block_masks,
    block_table_pairs,
    block_tables,
    hamming_distance,
    hamming_pairs,
    popcount64,
    unique_hashes,
    unique_pairs,
)

ALGORITHMS = ["brute", "mih", "auto"]


def clustered(rng, n: int, words: int, flips: int = 4, dup_frac: float = 0.2) -> np.ndarray:
    """Random hashes, ~``dup_frac`` of them copies of others with up to ``flips`` bits flipped."""
    h = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)
    k = int(n * dup_frac)
    if n > 1 and k:
        src = rng.integers(0, n - k, size=k)
        h[n - k :] = h[src]
        for _ in range(flips):
            row = np.arange(n - k, n)[rng.random(k) < 0.7]
            bit = rng.integers(0, 64 * words, size=row.size)
            h[row, bit // 64] ^= np.uint64(1) << (bit % 64).astype(np.uint64)
    return h


def as_input(h: np.ndarray) -> np.ndarray:
    return h[:, 0].copy() if h.shape[1] == 1 else h


def check(h, t, other=None, algorithm="auto"):
    got = hamming_pairs(as_input(h), t, None if other is None else as_input(other), algorithm=algorithm)
    ref_pairs, ref_d = brute_pairs(h, t, other)
    assert isinstance(got, HammingPairs)
    assert got.pairs.dtype == np.int64 and got.pairs.shape == (len(ref_pairs), 2)
    assert got.distances.dtype == (np.uint8 if h.shape[1] < 4 else np.uint16)
    np.testing.assert_array_equal(got.pairs, ref_pairs)
    np.testing.assert_array_equal(got.distances.astype(np.int64), ref_d)
    return got


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("words", [1, 4])
@pytest.mark.parametrize("kind", ["random", "clustered", "identical"])
def test_self_matches_naive(algorithm, words, kind):
    rng = np.random.default_rng(words * 10 + len(kind))
    if kind == "random":
        h = rng.integers(0, 2**64, size=(300, words), dtype=np.uint64)
    elif kind == "clustered":
        h = clustered(rng, 300, words)
    else:
        h = np.repeat(rng.integers(0, 2**64, size=(1, words), dtype=np.uint64), 40, axis=0)
    bits = 64 * words
    for t in [0, 1, 3, 6, 10, bits // 4 + 2, bits]:
        got = check(h, t, algorithm=algorithm)
        assert np.all(got.pairs[:, 0] < got.pairs[:, 1])
        assert len(np.unique(got.pairs, axis=0)) == len(got.pairs)  # each pair once


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("words", [1, 4])
def test_query_matches_naive(algorithm, words):
    rng = np.random.default_rng(7 + words)
    h = clustered(rng, 250, words)
    other = clustered(rng, 120, words)
    other[:30] = h[rng.integers(0, 250, size=30)]  # exact matches across the two sets
    other[30:60] = h[rng.integers(0, 250, size=30)] ^ np.uint64(0b101)
    for t in [0, 2, 6, 64 * words]:
        check(h, t, other, algorithm=algorithm)


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("words", [1, 4])
def test_tiny_inputs(n, words):
    rng = np.random.default_rng(n)
    h = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)
    for algorithm in ALGORITHMS:
        for t in (0, 64 * words):
            check(h, t, algorithm=algorithm)
            check(h, t, h[:1], algorithm=algorithm)
            check(h[:1], t, h, algorithm=algorithm)


def test_two_identical_and_full_threshold():
    h = np.array([5, 5], dtype=np.uint64)
    r = hamming_pairs(h, 0)
    assert r.pairs.tolist() == [[0, 1]] and r.distances.tolist() == [0]
    h = np.array([0, 2**64 - 1], dtype=np.uint64)
    assert hamming_pairs(h, 64).distances.tolist() == [64]
    assert len(hamming_pairs(h, 63).pairs) == 0


def test_resumed_kernels_with_tiny_buffers(monkeypatch):
    # the kernels hand back full buffers and resume; force that on every pair
    monkeypatch.setattr(_search_io, "_FIRST_BUFFER", 1)
    monkeypatch.setattr(_search_io, "_MAX_BUFFER", 2)
    rng = np.random.default_rng(3)
    for words in (1, 4):
        h = clustered(rng, 200, words, dup_frac=0.5)
        for algorithm in ALGORITHMS:
            check(h, 5, algorithm=algorithm)
            check(h, 5, h[::2], algorithm=algorithm)


def test_exact_duplicate_groups_expand_fully():
    rng = np.random.default_rng(11)
    base = rng.integers(0, 2**64, size=5, dtype=np.uint64)
    h = base[rng.integers(0, 5, size=60)]
    h[::7] ^= np.uint64(1)
    r = check(h[:, None], 1)
    groups = np.bincount(unique_hashes(h)[1])
    assert (r.distances == 0).sum() == (groups * (groups - 1) // 2).sum()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 80),
    m=st.integers(0, 30),
    words=st.sampled_from([1, 2, 4]),
    t=st.integers(0, 24),
    bias=st.sampled_from([0.5, 0.9]),
    algorithm=st.sampled_from(ALGORITHMS),
    query=st.booleans(),
)
def test_hypothesis_matches_naive(seed, n, m, words, t, bias, algorithm, query):
    rng = np.random.default_rng(seed)
    # biased bits make near pairs and exact duplicates common
    bits = rng.random((n + m, 64 * words)) < bias
    h = np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(n + m, words)
    if query:
        check(h[:n], t, h[n:], algorithm=algorithm)
    else:
        check(h[:n], t, algorithm=algorithm)


@pytest.mark.parametrize("words", [1, 4])
def test_unique_hashes(words):
    rng = np.random.default_rng(5)
    h = rng.integers(0, 4, size=(50, words)).astype(np.uint64)
    x = as_input(h)
    u, inv, first = unique_hashes(x)
    np.testing.assert_array_equal(u.reshape(-1, words), unique_rows(h))  # sorted
    np.testing.assert_array_equal(u[inv], x)
    np.testing.assert_array_equal(inv[first], np.arange(len(first)))
    for g, i in enumerate(first):
        assert np.all(inv[:i] != g)  # first occurrence
    assert inv.dtype == np.int64 and first.dtype == np.int64
    u0, inv0, first0 = unique_hashes(x[:0])
    assert len(u0) == len(inv0) == len(first0) == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("words", [1, 4])
def test_unique_pairs_are_pairs_of_distinct_values(algorithm, words):
    rng = np.random.default_rng(9)
    h = clustered(rng, 200, words, dup_frac=0.5)
    h[100:120] = h[0]
    for t in (0, 3, 8):
        u = unique_rows(h)
        ref_pairs, ref_d = brute_pairs(u, t)
        got = unique_pairs(as_input(h), t, algorithm=algorithm)
        np.testing.assert_array_equal(got.pairs, ref_pairs)
        np.testing.assert_array_equal(got.distances.astype(np.int64), ref_d)
        o = h[::3]
        ref_pairs, ref_d = brute_pairs(u, t, unique_rows(o))
        got = unique_pairs(as_input(h), t, as_input(o), algorithm=algorithm)
        np.testing.assert_array_equal(got.pairs, ref_pairs)
        np.testing.assert_array_equal(got.distances.astype(np.int64), ref_d)


def test_popcount_and_distance_helpers():
    x = np.array([0, 1, 0xFF, 2**64 - 1, 0x8000000000000001], dtype=np.uint64)
    assert popcount64(x).tolist() == [0, 1, 8, 64, 2]
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2**64, size=(20, 4), dtype=np.uint64)
    b = rng.integers(0, 2**64, size=(20, 4), dtype=np.uint64)
    expect = [sum(bin(int(p) ^ int(q)).count("1") for p, q in zip(ra, rb)) for ra, rb in zip(a, b)]
    assert hamming_distance(a, b).tolist() == expect
    assert hamming_distance(a[:, 0], b[:, 0]).tolist() == [bin(int(p) ^ int(q)).count("1") for p, q in zip(a[:, 0], b[:, 0])]


def test_workers_one_and_many_agree():
    rng = np.random.default_rng(4)
    h = clustered(rng, 400, 1)[:, 0]
    for algorithm in ("brute", "mih"):
        one = hamming_pairs(h, 6, algorithm=algorithm, workers=1)
        many = hamming_pairs(h, 6, algorithm=algorithm, workers=3)
        np.testing.assert_array_equal(one.pairs, many.pairs)
        np.testing.assert_array_equal(one.distances, many.distances)


# ----------------------------------------------------------------------------- validation

H64 = np.zeros(3, np.uint64)
H256 = np.zeros((3, 4), np.uint64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hashes=H64, threshold=-1), r"threshold must be in \[0, 64\].*got -1"),
        (dict(hashes=H64, threshold=65), r"threshold must be in \[0, 64\].*got 65"),
        (dict(hashes=H256, threshold=257), r"threshold must be in \[0, 256\].*got 257"),
        (dict(hashes=H64, threshold=2.0), r"threshold must be an integer in \[0, 64\].*2\.0"),
        (dict(hashes=H64, threshold=True), r"threshold must be an integer.*True.*bool"),
        (dict(hashes=H64, threshold="6"), r"threshold must be an integer.*'6'"),
        (dict(hashes=H64.astype(np.int64), threshold=1), r"hashes must have dtype uint64.*int64"),
        (dict(hashes=H64.astype(np.uint32), threshold=1), r"hashes must have dtype uint64.*uint32"),
        (dict(hashes=np.zeros((2, 2, 2), np.uint64), threshold=1), r"hashes must have shape.*\(2, 2, 2\)"),
        (dict(hashes=np.zeros((2, 0), np.uint64), threshold=0), r"hashes must have shape.*\(2, 0\)"),
        (dict(hashes=H64, threshold=1, other=H256), r"other must have the same number of 64-bit words.*\(1.*got 4"),
        (dict(hashes=H64, threshold=1, other=H64.astype(np.float64)), r"other must have dtype uint64.*float64"),
        (dict(hashes=H64, threshold=1, algorithm="faiss"), r"algorithm must be one of.*'faiss'"),
        (dict(hashes=H64, threshold=1, workers=0), r"workers must be None or an integer >= 1, got 0"),
    ],
)
@pytest.mark.parametrize("fn", [hamming_pairs, unique_pairs])
def test_validation_errors(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


def test_numpy_integer_threshold_accepted():
    assert hamming_pairs(H64, np.int32(0)).pairs.tolist() == [[0, 1], [0, 2], [1, 2]]


# ----------------------------------------------------------------------------- the index's tables, public


@pytest.mark.parametrize("words", [1, 2, 4])
@pytest.mark.parametrize("n_blocks_per_word", [1, 3, 8, 64])
def test_block_masks_partition_every_word(words, n_blocks_per_word):
    n = words * n_blocks_per_word + (1 if n_blocks_per_word < 64 else 0)
    m = block_masks(n, words)
    assert m.shape == (n, words) and m.dtype == np.uint64
    assert np.all((m != 0).sum(axis=1) == 1)  # one word per block: blocks never straddle a word
    for w in range(words):
        col = [int(x) for x in m[:, w] if x]
        assert sum(col) == 2**64 - 1  # the word is covered ...
        assert sum(bin(x).count("1") for x in col) == 64  # ... by disjoint blocks
        widths = [bin(x).count("1") for x in col]
        assert max(widths) - min(widths) <= 1


def _pairs_of_all_tables(h, t, n_blocks, other=None):
    words = h.shape[1]
    parts = [block_table_pairs(as_input(h), t, tab, None if other is None else as_input(other))
             for tab in block_tables(n_blocks, t, words)]
    pairs = np.concatenate([p.pairs for p in parts])
    dist = np.concatenate([p.distances.astype(np.int64) for p in parts])
    for p in parts:  # each table's output is sorted on its own
        assert p.pairs.dtype == np.int64
        if len(p.pairs):
            assert np.all(np.diff(p.pairs[:, 0] * (10**6) + p.pairs[:, 1]) > 0)
    order = np.lexsort((pairs[:, 1], pairs[:, 0])) if len(pairs) else np.zeros(0, np.int64)
    return pairs[order], dist[order]


@pytest.mark.parametrize("words", [1, 2, 4])
@pytest.mark.parametrize("t, extra", [(0, 1), (1, 0), (3, 2), (6, 2), (9, 3)])
def test_union_of_block_tables_is_every_pair_once(words, t, extra):
    rng = np.random.default_rng(100 * words + t)
    h = clustered(rng, 160, words, flips=3, dup_frac=0.4)
    h[20:40] = h[3]  # a block of identical rows: pairs at distance 0 come from one table
    n_blocks = max(t + extra, words)
    pairs, dist = _pairs_of_all_tables(h, t, n_blocks)
    ref_pairs, ref_d = brute_pairs(h, t)
    np.testing.assert_array_equal(pairs, ref_pairs)  # no pair missed, none twice (the union had no dedup)
    np.testing.assert_array_equal(dist, ref_d)
    other = h[::4].copy()
    other[::3] ^= np.uint64(1)
    pairs, dist = _pairs_of_all_tables(h, t, n_blocks, other)
    ref_pairs, ref_d = brute_pairs(h, t, other)
    np.testing.assert_array_equal(pairs, ref_pairs)
    np.testing.assert_array_equal(dist, ref_d)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 50), words=st.sampled_from([1, 2]),
       t=st.integers(0, 8), extra=st.integers(0, 3))
def test_block_tables_hypothesis(seed, n, words, t, extra):
    rng = np.random.default_rng(seed)
    bits = rng.random((n, 64 * words)) < 0.9  # biased bits: near pairs and exact duplicates
    h = np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(n, words)
    pairs, dist = _pairs_of_all_tables(h, t, max(t + extra, words))
    ref_pairs, ref_d = brute_pairs(h, t)
    np.testing.assert_array_equal(pairs, ref_pairs)
    np.testing.assert_array_equal(dist, ref_d)


def test_block_table_pairs_split_by_key_is_the_same():
    # what a shuffle does: rows of one table split by the value of their key bits, each part
    # searched alone, give the table's pairs (rows with equal keys never straddle parts)
    rng = np.random.default_rng(5)
    h = clustered(rng, 300, 1, flips=2, dup_frac=0.5)[:, 0]
    for tab in block_tables(5, 3):
        whole = block_table_pairs(h, 3, tab)
        part = ((h & tab.key[0]) % np.uint64(7)).astype(np.int64)
        got = []
        for p in range(7):
            rows = np.flatnonzero(part == p)
            local = block_table_pairs(h[rows], 3, tab).pairs
            got.extend(map(tuple, rows[local].tolist()))
        assert sorted(got) == [tuple(x) for x in whole.pairs.tolist()]


def test_block_tables_shape_and_order():
    tabs = block_tables(4, 2)
    assert len(tabs) == 6 and all(isinstance(t, BlockTable) for t in tabs)
    m = block_masks(4)[:, 0]
    # lexicographic k-subsets: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert [int(t.key[0]) for t in tabs] == [int(m[a] | m[b]) for a, b in
                                             [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]]
    assert [sorted(int(x) for x in t.below[:, 0]) for t in tabs] == [
        [], [int(m[1])], sorted([int(m[1]), int(m[2])]), [int(m[0])], sorted([int(m[0]), int(m[2])]),
        sorted([int(m[0]), int(m[1])])]
    (only,) = block_tables(3, 3)  # k = 0: one table, every pair in one bucket
    assert int(only.key[0]) == 0 and len(only.below) == 0


@pytest.mark.parametrize("call, match", [
    (lambda: block_masks(0), r"n_blocks must be an integer in \[1, 64\].*got 0"),
    (lambda: block_masks(65), r"n_blocks must be an integer in \[1, 64\].*got 65"),
    (lambda: block_masks(3, 4), r"n_blocks must be an integer in \[4, 256\].*got 3"),
    (lambda: block_masks(4, 0), r"words must be an integer >= 1.*got 0"),
    (lambda: block_tables(3, 4), r"n_blocks must be an integer in \[4, 64\].*got 3"),
    (lambda: block_tables(64, 20), rf"C\(64, 44\).*MAX_TABLES={MAX_TABLES}"),
    (lambda: block_tables(8, 65), r"threshold must be in \[0, 64\]"),
    (lambda: block_tables(8, 2, words=True), r"words must be an integer"),
    (lambda: block_table_pairs(H64, 1, (np.zeros(2, np.uint64), np.zeros((0, 1), np.uint64))),
     r"table.key must be \(1,\) uint64"),
    (lambda: block_table_pairs(H64, 1, (np.zeros(1, np.uint64), np.zeros((0, 4), np.uint64))),
     r"table.below must be \(L, 1\) uint64"),
    (lambda: block_table_pairs(H64, 1, "table"), r"table must be a BlockTable"),
    (lambda: block_table_pairs(H64.astype(np.int64), 1, block_tables(2, 1)[0]), r"hashes must have dtype uint64"),
    (lambda: block_table_pairs(H256, 1, block_tables(2, 1)[0]), r"table.key must be \(4,\) uint64"),
])
def test_block_table_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_search_threads_default_to_this_ranks_share_of_the_cores(monkeypatch):
    """Under torchrun every rank runs the same search: each takes cores / local ranks."""
    import os

    from torch_dedup.hamming.search import default_workers
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_workers() == max(1, cores // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * cores))
    assert default_workers() == 1
