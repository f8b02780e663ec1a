"""Naive numpy references shared by the tests (stumpy-style ``tests/naive.py``).

Slow and obviously right: every pair is compared, nothing is indexed.
"""

from __future__ import annotations

import numpy as np


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element, by unpacking bytes (no tricks)."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    bits = np.unpackbits(x.reshape(-1, 1).view(np.uint8), axis=1)
    return bits.sum(axis=1).astype(np.int64).reshape(x.shape)


def as_rows(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=np.uint64)
    return h.reshape(-1, 1) if h.ndim == 1 else h


def distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` Hamming distances between the rows of ``a`` and ``b``."""
    a, b = as_rows(a), as_rows(b)
    x = a[:, None, :] ^ b[None, :, :]
    return popcount(x).sum(axis=2)


def brute_pairs(hashes: np.ndarray, threshold: int, other: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All pairs within ``threshold``: self ``i < j`` or query ``(i, j)``, sorted rows.

    Returns:
        ``(pairs (P, 2) int64, distances (P,) int64)``.
    """
    a = as_rows(hashes)
    if other is None:
        d = distance_matrix(a, a)
        i, j = np.nonzero(np.triu(d <= threshold, k=1))
    else:
        d = distance_matrix(a, as_rows(other))
        i, j = np.nonzero(d <= threshold)
    # np.nonzero walks rows in C order: already lexicographic
    return np.stack([i, j], axis=1).astype(np.int64).reshape(-1, 2), d[i, j].astype(np.int64)


def unique_rows(hashes: np.ndarray) -> np.ndarray:
    """Distinct rows in ascending (lexicographic by word) order."""
    a = as_rows(hashes)
    seen = sorted({tuple(int(v) for v in row) for row in a})
    return np.array(seen, dtype=np.uint64).reshape(-1, a.shape[1])
