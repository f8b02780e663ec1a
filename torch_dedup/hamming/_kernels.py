"""numba kernels of the exact Hamming range search (layer 1: numpy + numba only).

Every kernel works on plain C-contiguous ``uint64`` arrays of shape ``(N, W)`` (W 64-bit
words per hash) and writes pairs into buffers its caller passes, resumably (see the
output protocol below), so that :mod:`torch_dedup.hamming.search` can run several at
once from a thread pool (``nogil=True``) with per-thread buffers: no shared state, no
second counting pass, memory proportional to the pairs found.

Kernels:

* :func:`brute_self` / :func:`brute_query`: all pairs of a row range, by popcount.
* :func:`bucket_sort` + :func:`verify_self` / :func:`verify_query`: one table of the
  block-combination index (pigeonhole generalisation of multi-index hashing; see
  ``docs/engine.md``): bucket the rows by the bits of k chosen blocks (counting sort on
  a multiplicative hash), verify pairs inside each bucket, and keep a pair only in the
  table of the lexicographically first k-subset of its identical blocks, so that every
  pair comes out of one table once.
* ``*_1`` twins of these for 64-bit hashes on 1-D arrays (the hot path).
* :func:`expand_self` / :func:`expand_query`: distinct-value pairs to item pairs.
"""

from __future__ import annotations

import numpy as np

from torch_dedup._numba import NJIT, njit

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_ZERO = np.uint64(0)
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S31 = np.uint64(31)
_S56 = np.uint64(56)


@njit(**NJIT)
def popcount64(x):
    """Set bits of one uint64 (SWAR; LLVM lowers this pattern to ``popcnt`` when available)."""
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return (x * _H01) >> _S56


# Output protocol. A kernel that finds pairs writes them into caller-provided buffers
# ``(ii, jj, dd)`` and, when they are full, returns with its loop position so that the
# caller resumes it with fresh buffers. Growing a buffer inside the loop instead (an
# array variable reassigned in the hot loop) costs numba reference counting on every
# iteration: measured 20-50x slower. Buffers are per call, so per thread.


@njit(**NJIT)
def brute_self(h, t, i_end, i, j, ii, jj, dd):
    """Pairs ``(i, j)``, ``i < i_end``, ``i < j < N``, with ``hamming(h[i], h[j]) <= t``.

    Args:
        h: ``(N, W)`` uint64.
        t: threshold.
        i_end: end of the row range.
        i, j: position to resume from (start: ``i0, i0 + 1``).
        ii, jj, dd: int64 output buffers of equal length.

    Returns:
        ``(p, i, j)``: pairs written (row-major order), and the resume position; the
        range is done when ``i >= i_end``.
    """
    n = h.shape[0]
    words = h.shape[1]
    cap = ii.shape[0]
    p = 0
    while i < i_end:
        if j <= i:
            j = i + 1
        while j < n:
            d = np.int64(0)
            for w in range(words):
                d += np.int64(popcount64(h[i, w] ^ h[j, w]))
            if d <= t:
                if p == cap:
                    return p, i, j
                ii[p] = i
                jj[p] = j
                dd[p] = d
                p += 1
            j += 1
        i += 1
        j = 0
    return p, i, j


@njit(**NJIT)
def brute_query(a, b, t, i_end, i, j, ii, jj, dd):
    """Pairs ``(i row of a, j row of b)``, ``i < i_end``, within ``t`` (see :func:`brute_self`)."""
    m = b.shape[0]
    words = a.shape[1]
    cap = ii.shape[0]
    p = 0
    while i < i_end:
        while j < m:
            d = np.int64(0)
            for w in range(words):
                d += np.int64(popcount64(a[i, w] ^ b[j, w]))
            if d <= t:
                if p == cap:
                    return p, i, j
                ii[p] = i
                jj[p] = j
                dd[p] = d
                p += 1
            j += 1
        i += 1
        j = 0
    return p, i, j


@njit(**NJIT)
def _bucket_of(h, i, key_mask, shift):
    acc = np.uint64(0)
    for w in range(h.shape[1]):
        acc = (acc ^ (h[i, w] & key_mask[w])) * _MIX
        acc ^= acc >> _S31
    return np.int64((acc * _GOLD) >> shift)


@njit(**NJIT)
def bucket_sort(h, key_mask, bucket_bits):
    """Counting sort of the rows of ``h`` by a hash of their key bits (stable).

    Returns:
        ``(rows, idx, start)``: sorted rows, their original indices (ascending within a
        bucket), and ``(2**bucket_bits + 1,)`` bucket offsets; int32 (memory: the
        caller keeps N below 2**31).
    """
    n = h.shape[0]
    nb = 1 << bucket_bits
    shift = np.uint64(64 - bucket_bits)
    bucket = np.empty(n, np.int32)
    start = np.zeros(nb + 1, np.int32)
    for i in range(n):
        b = _bucket_of(h, i, key_mask, shift)
        bucket[i] = b
        start[b + 1] += 1
    for b in range(nb):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    rows = np.empty((n, h.shape[1]), np.uint64)
    idx = np.empty(n, np.int32)
    for i in range(n):
        b = bucket[i]
        q = fill[b]
        fill[b] = q + 1
        for w in range(h.shape[1]):
            rows[q, w] = h[i, w]
        idx[q] = i
    return rows, idx, start


@njit(**NJIT)
def _owned(x, p, y, q, below_masks):
    """Whether this table reports the pair: no block outside its combination, below
    its last block, is identical too (else an earlier table, in the lexicographic order
    of combinations, already reported it). Called only for pairs within ``t``."""
    for b in range(below_masks.shape[0]):
        same = True
        for w in range(x.shape[1]):
            if ((x[p, w] ^ y[q, w]) & below_masks[b, w]) != _ZERO:
                same = False
                break
        if same:
            return False
    return True


@njit(**NJIT)
def verify_self(rows, idx, start, t, key_mask, below_masks, b, u, v, ii, jj, dd):
    """Pairs ``i < j`` within ``t`` inside the buckets of one table that this table owns.

    Args:
        rows, idx, start: :func:`bucket_sort` output for this table's key.
        t: threshold.
        key_mask: ``(W,)`` uint64, the bits of this table's k blocks.
        below_masks: ``(L, W)`` uint64, one row per block outside the combination with
            an index below its last block.
        b, u, v: position to resume from (start: ``0, 0, 0``).
        ii, jj, dd: int64 output buffers.

    Returns:
        ``(p, b, u, v)``: pairs written (original indices, unordered) and the resume
        position; done when ``b`` equals the bucket count.
    """
    words = rows.shape[1]
    nb = start.shape[0] - 1
    cap = ii.shape[0]
    p = 0
    while b < nb:
        e = start[b + 1]
        if u < start[b]:
            u = start[b]
        while u < e - 1:
            if v <= u:
                v = u + 1
            while v < e:
                # same bucket is not the same key (hash collisions): compare key bits
                same = True
                for w in range(words):
                    if ((rows[u, w] ^ rows[v, w]) & key_mask[w]) != _ZERO:
                        same = False
                        break
                if same:
                    d = np.int64(0)
                    for w in range(words):
                        d += np.int64(popcount64(rows[u, w] ^ rows[v, w]))
                    if d <= t and _owned(rows, u, rows, v, below_masks):
                        if p == cap:
                            return p, b, u, v
                        # the counting sort is stable: idx[u] < idx[v]
                        ii[p] = idx[u]
                        jj[p] = idx[v]
                        dd[p] = d
                        p += 1
                v += 1
            u += 1
            v = 0
        b += 1
    return p, b, u, v


@njit(**NJIT)
def verify_query(ra, ia, sa, rb, ib, sb, t, key_mask, below_masks, b, u, v, ii, jj, dd):
    """Pairs ``(row of a, row of b)`` in equal buckets that this table owns (see
    :func:`verify_self`; ``v`` indexes ``rb``)."""
    words = ra.shape[1]
    nb = sa.shape[0] - 1
    cap = ii.shape[0]
    p = 0
    while b < nb:
        e = sa[b + 1]
        if u < sa[b]:
            u = sa[b]
        while u < e:
            if v < sb[b]:
                v = sb[b]
            while v < sb[b + 1]:
                same = True
                for w in range(words):
                    if ((ra[u, w] ^ rb[v, w]) & key_mask[w]) != _ZERO:
                        same = False
                        break
                if same:
                    d = np.int64(0)
                    for w in range(words):
                        d += np.int64(popcount64(ra[u, w] ^ rb[v, w]))
                    if d <= t and _owned(ra, u, rb, v, below_masks):
                        if p == cap:
                            return p, b, u, v
                        ii[p] = ia[u]
                        jj[p] = ib[v]
                        dd[p] = d
                        p += 1
                v += 1
            u += 1
            v = 0
        b += 1
    return p, b, u, v


@njit(**NJIT)
def expand_self(ua, ub, ud, members, gstart):
    """Item pairs ``i < j`` from distinct-value pairs plus the exact-duplicate groups.

    Args:
        ua, ub, ud: distinct-value pairs (unique row indices) and their distances.
        members: item indices grouped by unique value (ascending within a group).
        gstart: ``(U + 1,)`` offsets of each group in ``members``.

    Returns:
        ``(ii, jj, dd)`` int64 arrays, unordered.
    """
    total = 0
    for g in range(gstart.shape[0] - 1):
        s = gstart[g + 1] - gstart[g]
        total += s * (s - 1) // 2
    for p in range(ua.shape[0]):
        total += (gstart[ua[p] + 1] - gstart[ua[p]]) * (gstart[ub[p] + 1] - gstart[ub[p]])
    ii = np.empty(total, np.int64)
    jj = np.empty(total, np.int64)
    dd = np.zeros(total, np.int64)
    q = 0
    for g in range(gstart.shape[0] - 1):
        for u in range(gstart[g], gstart[g + 1]):
            for v in range(u + 1, gstart[g + 1]):
                ii[q] = members[u]
                jj[q] = members[v]
                q += 1
    for p in range(ua.shape[0]):
        for u in range(gstart[ua[p]], gstart[ua[p] + 1]):
            for v in range(gstart[ub[p]], gstart[ub[p] + 1]):
                x = members[u]
                y = members[v]
                ii[q] = min(x, y)
                jj[q] = max(x, y)
                dd[q] = ud[p]
                q += 1
    return ii, jj, dd


@njit(**NJIT)
def expand_query(ua, ub, ud, members_a, gstart_a, members_b, gstart_b):
    """Item pairs ``(i in hashes, j in other)`` from distinct-value pairs of the two sides."""
    total = 0
    for p in range(ua.shape[0]):
        total += (gstart_a[ua[p] + 1] - gstart_a[ua[p]]) * (gstart_b[ub[p] + 1] - gstart_b[ub[p]])
    ii = np.empty(total, np.int64)
    jj = np.empty(total, np.int64)
    dd = np.empty(total, np.int64)
    q = 0
    for p in range(ua.shape[0]):
        for u in range(gstart_a[ua[p]], gstart_a[ua[p] + 1]):
            for v in range(gstart_b[ub[p]], gstart_b[ub[p] + 1]):
                ii[q] = members_a[u]
                jj[q] = members_b[v]
                dd[q] = ud[p]
                q += 1
    return ii, jj, dd


# ----------------------------------------------------------------------------- 64-bit fast path
# One-word twins on 1-D arrays: scalar masks, no word loops.


@njit(**NJIT)
def brute_self_1(h, t, i_end, i, j, ii, jj, dd):
    """:func:`brute_self` for 64-bit hashes ``h`` of shape ``(N,)``."""
    n = h.shape[0]
    cap = ii.shape[0]
    p = 0
    while i < i_end:
        if j <= i:
            j = i + 1
        x = h[i]
        while j < n:
            d = np.int64(popcount64(x ^ h[j]))
            if d <= t:
                if p == cap:
                    return p, i, j
                ii[p] = i
                jj[p] = j
                dd[p] = d
                p += 1
            j += 1
        i += 1
        j = 0
    return p, i, j


@njit(**NJIT)
def brute_query_1(a, b, t, i_end, i, j, ii, jj, dd):
    """:func:`brute_query` for 64-bit hashes of shape ``(N,)`` and ``(M,)``."""
    m = b.shape[0]
    cap = ii.shape[0]
    p = 0
    while i < i_end:
        x = a[i]
        while j < m:
            d = np.int64(popcount64(x ^ b[j]))
            if d <= t:
                if p == cap:
                    return p, i, j
                ii[p] = i
                jj[p] = j
                dd[p] = d
                p += 1
            j += 1
        i += 1
        j = 0
    return p, i, j


@njit(**NJIT)
def bucket_sort_1(h, key_mask, bucket_bits):
    """:func:`bucket_sort` for 64-bit hashes of shape ``(N,)``."""
    n = h.shape[0]
    nb = 1 << bucket_bits
    shift = np.uint64(64 - bucket_bits)
    bucket = np.empty(n, np.int32)
    start = np.zeros(nb + 1, np.int32)
    for i in range(n):
        acc = (h[i] & key_mask) * _MIX
        acc ^= acc >> _S31
        b = np.int64((acc * _GOLD) >> shift)
        bucket[i] = b
        start[b + 1] += 1
    for b in range(nb):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    rows = np.empty(n, np.uint64)
    idx = np.empty(n, np.int32)
    for i in range(n):
        b = bucket[i]
        q = fill[b]
        fill[b] = q + 1
        rows[q] = h[i]
        idx[q] = i
    return rows, idx, start


@njit(**NJIT)
def verify_self_1(rows, idx, start, t, key_mask, below_masks, b, u, v, ii, jj, dd):
    """:func:`verify_self` for 64-bit hashes: ``rows`` ``(N,)``, ``key_mask`` a uint64
    scalar, ``below_masks`` ``(L,)``."""
    nb = start.shape[0] - 1
    nbelow = below_masks.shape[0]
    cap = ii.shape[0]
    p = 0
    while b < nb:
        e = start[b + 1]
        if u < start[b]:
            u = start[b]
        while u < e - 1:
            if v <= u:
                v = u + 1
            x = rows[u]
            while v < e:
                y = x ^ rows[v]
                if (y & key_mask) == _ZERO:
                    d = np.int64(popcount64(y))
                    if d <= t:
                        owned = True
                        for m in range(nbelow):
                            if (y & below_masks[m]) == _ZERO:
                                owned = False  # an earlier table holds this pair
                                break
                        if owned:
                            if p == cap:
                                return p, b, u, v
                            ii[p] = idx[u]
                            jj[p] = idx[v]
                            dd[p] = d
                            p += 1
                v += 1
            u += 1
            v = 0
        b += 1
    return p, b, u, v


@njit(**NJIT)
def verify_query_1(ra, ia, sa, rb, ib, sb, t, key_mask, below_masks, b, u, v, ii, jj, dd):
    """:func:`verify_query` for 64-bit hashes (see :func:`verify_self_1`)."""
    nb = sa.shape[0] - 1
    nbelow = below_masks.shape[0]
    cap = ii.shape[0]
    p = 0
    while b < nb:
        e = sa[b + 1]
        if u < sa[b]:
            u = sa[b]
        while u < e:
            if v < sb[b]:
                v = sb[b]
            x = ra[u]
            while v < sb[b + 1]:
                y = x ^ rb[v]
                if (y & key_mask) == _ZERO:
                    d = np.int64(popcount64(y))
                    if d <= t:
                        owned = True
                        for m in range(nbelow):
                            if (y & below_masks[m]) == _ZERO:
                                owned = False
                                break
                        if owned:
                            if p == cap:
                                return p, b, u, v
                            ii[p] = ia[u]
                            jj[p] = ib[v]
                            dd[p] = d
                            p += 1
                v += 1
            u += 1
            v = 0
        b += 1
    return p, b, u, v
