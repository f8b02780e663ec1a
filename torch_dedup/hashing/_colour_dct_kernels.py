"""numba kernels of the whitened colour DCT (plain contiguous arrays in, arrays out; no PIL).

Determinism: every value is computed by one fixed sequence of float32 operations per image
(no ``fastmath``, so no reassociation and no FMA contraction), and the parallel kernels only
split the *images* over threads. The same pixels therefore give the same features whatever
the batch, the thread count or the process, and the same features give the same code bits.
"""

from __future__ import annotations

import numpy as np

from torch_dedup._numba import NJIT, NJIT_PARALLEL, njit, prange

__all__ = ["codes_kernel", "codes_kernel_parallel", "features_kernel", "features_kernel_parallel"]

_F0 = np.float32(0.0)
# Pillow's ITU-R 601 RGB -> YCbCr weights over 65536, written as differences so that a grey
# pixel (R == G == B) gives Y == G and Cb == Cr == 0 exactly, in any precision.
_YR = np.float32(19595.0 / 65536.0)
_YB = np.float32(7471.0 / 65536.0)
_HALF = np.float32(0.5)
_CB = np.float32(11059.0 / 65536.0)
_CR = np.float32(5329.0 / 65536.0)


@njit(**NJIT)
def _resize(img, xs, xn, xw, ys, yn, yw, tmp, pix):  # pragma: no cover - jitted
    """Separable triangle resample of ``img`` ``(H, W, C)`` uint8 into ``pix`` ``(S, S * C)``
    float32, channels interleaved like the input; ``tmp`` ``(S, W * C)`` is scratch.

    The vertical pass runs first, on whole contiguous rows (it vectorises, and it is the
    big one); the horizontal pass then has only S rows left.
    """
    h, w, c = img.shape
    s = pix.shape[0]
    m = w * c
    rows = img.reshape((h, m))
    for i in range(s):
        for q in range(m):
            tmp[i, q] = _F0
        b = ys[i]
        for k in range(yn[i]):
            wk = yw[i, k]
            row = rows[b + k]
            for q in range(m):
                tmp[i, q] += wk * np.float32(row[q])
    for i in range(s):
        for j in range(s):
            b = xs[j]
            for ch in range(c):
                acc = _F0
                for k in range(xn[j]):
                    acc += xw[j, k] * tmp[i, (b + k) * c + ch]
                pix[i, j * c + ch] = acc


@njit(**NJIT)
def _fold(rows, fold):  # pragma: no cover - jitted
    """Row sums and differences ``rows[y] +- rows[S-1-y]`` (float32) for the symmetric DCT stage."""
    s, m = rows.shape
    for y in range(s // 2):
        for q in range(m):
            a = np.float32(rows[y, q])
            b = np.float32(rows[s - 1 - y, q])
            fold[0, y, q] = a + b
            fold[1, y, q] = a - b


@njit(**NJIT)
def _dct_block(fold, m, c, basis, basis_t, keep, tmp, coef):  # pragma: no cover - jitted
    """The ``keep x keep`` low block of the orthonormal 2-D DCT-II of each of the ``c``
    interleaved channels whose folded rows are in ``fold``, into ``coef`` ``(c, keep, keep)``.

    Uses the basis' symmetry ``C[u, S-1-y] = (-1)**u C[u, y]``: even frequencies take the
    row sums, odd ones the differences, halving the products. Every sum runs in index
    order and the innermost loops run over independent outputs (the ``S * C`` interleaved
    columns), so they vectorise without reordering any sum, and each channel's values do
    not depend on the others.
    """
    h = fold.shape[1]
    s = 2 * h
    for u in range(keep):
        f = fold[u & 1]
        for q in range(m):
            tmp[u, q] = _F0
        for y in range(0, h, 4):  # four rows per pass (h is a multiple of 4), a fixed order
            c0 = basis[u, y]
            c1 = basis[u, y + 1]
            c2 = basis[u, y + 2]
            c3 = basis[u, y + 3]
            for q in range(m):
                tmp[u, q] += (c0 * f[y, q] + c1 * f[y + 1, q]) + (c2 * f[y + 2, q] + c3 * f[y + 3, q])
    for ch in range(c):
        for u in range(keep):
            for v in range(keep):
                coef[ch, u, v] = _F0
            for x in range(h):
                a = tmp[u, x * c + ch]
                b = tmp[u, (s - 1 - x) * c + ch]
                e = a + b
                o = a - b
                for v in range(0, keep, 2):
                    coef[ch, u, v] += e * basis_t[x, v]
                    coef[ch, u, v + 1] += o * basis_t[x, v + 1]


@njit(**NJIT)
def _one(img, same, xs, xn, xw, ys, yn, yw, basis, basis_t, y_keep, c_keep, rtmp, pix, fold, tmp, coef,
         out):  # pragma: no cover - jitted
    """Features of one image ``(H, W, C)`` (C 1: grey, 3: RGB) into ``out`` ``(D,)``; the rest is scratch.

    The DCT is linear, so it runs on R, G, B and the colour transform on the 8x8 blocks
    (Pillow's ITU-R 601 weights, as differences: a grey image gives Cb = Cr = 0 exactly).
    """
    h, w, c = img.shape
    s = basis.shape[1]
    m = s * c
    if same:
        _fold(img.reshape((h, w * c)), fold)
    else:
        _resize(img, xs, xn, xw, ys, yn, yw, rtmp, pix)
        _fold(pix[:, :m], fold)
    _dct_block(fold, m, c, basis, basis_t, y_keep, tmp, coef)
    q = 0
    for u in range(y_keep):
        for v in range(y_keep):
            if u == 0 and v == 0:
                continue
            if c == 1:
                out[q] = coef[0, u, v]
            else:
                r = coef[0, u, v]
                g = coef[1, u, v]
                b = coef[2, u, v]
                out[q] = g + (_YR * (r - g) + _YB * (b - g))
            q += 1
    nc = c_keep * c_keep - 1
    for u in range(c_keep):
        for v in range(c_keep):
            if u == 0 and v == 0:
                continue
            if c == 1:
                out[q] = _F0
                out[q + nc] = _F0
            else:
                r = coef[0, u, v]
                g = coef[1, u, v]
                b = coef[2, u, v]
                out[q] = _HALF * (b - g) + _CB * (g - r)
                out[q + nc] = _HALF * (r - g) + _CR * (g - b)
            q += 1


@njit(**NJIT)
def _range(stack, lo, hi, same, xs, xn, xw, ys, yn, yw, basis, basis_t, y_keep, c_keep, out):  # pragma: no cover
    w, c = stack.shape[2], stack.shape[3]
    s = basis.shape[1]
    rtmp = np.empty((1 if same else s, w * c), dtype=np.float32)
    pix = np.empty((s, s * c), dtype=np.float32)
    fold = np.empty((2, s // 2, s * c), dtype=np.float32)
    tmp = np.empty((y_keep, s * c), dtype=np.float32)
    coef = np.empty((c, y_keep, y_keep), dtype=np.float32)
    for i in range(lo, hi):
        _one(stack[i], same, xs, xn, xw, ys, yn, yw, basis, basis_t, y_keep, c_keep, rtmp, pix, fold, tmp, coef,
             out[i])


#: Images per parallel task (scratch buffers are allocated once per task).
_TASK = 64


@njit(**NJIT)
def features_kernel(stack, same, xs, xn, xw, ys, yn, yw, basis, basis_t, y_keep, c_keep, out):  # pragma: no cover
    """Features ``out`` ``(N, D)`` of a stack ``(N, H, W, C)`` uint8, one image after another."""
    _range(stack, 0, stack.shape[0], same, xs, xn, xw, ys, yn, yw, basis, basis_t, y_keep, c_keep, out)


@njit(**NJIT_PARALLEL)
def features_kernel_parallel(stack, same, xs, xn, xw, ys, yn, yw, basis, basis_t, y_keep, c_keep,
                             out):  # pragma: no cover - jitted
    """:func:`features_kernel` with the images split over numba's threads (same values)."""
    n = stack.shape[0]
    for t in prange((n + _TASK - 1) // _TASK):
        lo = t * _TASK
        _range(stack, lo, min(n, lo + _TASK), same, xs, xn, xw, ys, yn, yw, basis, basis_t, y_keep, c_keep, out)


#: Rows projected together: one hyperplane row (``bits`` floats) is read once per block from
#: cache instead of once per row. Each row's sums keep the same order in any block.
_BLOCK = 16


@njit(**NJIT)
def _code_block(features, lo, hi, centre, scale, planes, z, acc, words):  # pragma: no cover - jitted
    d, bits = planes.shape
    m = hi - lo
    for r in range(m):
        for k in range(d):
            # signed square root of the centred value, then the weight: float32 sqrt is
            # correctly rounded (IEEE 754), so numpy's whiten() gives the same bits
            t = features[lo + r, k] - centre[k]
            v = np.sqrt(np.abs(t)) * scale[k]
            z[r, k] = -v if t < _F0 else v
        for j in range(bits):
            acc[r, j] = _F0
    # four hyperplane rows per pass, summed pairwise before they reach the accumulator:
    # a fixed order (the same in every block, batch and process), with a third of the
    # accumulator loads and stores of one row per pass
    k4 = d - d % 4
    for k in range(0, k4, 4):
        p0 = planes[k]
        p1 = planes[k + 1]
        p2 = planes[k + 2]
        p3 = planes[k + 3]
        for r in range(m):
            z0 = z[r, k]
            z1 = z[r, k + 1]
            z2 = z[r, k + 2]
            z3 = z[r, k + 3]
            a = acc[r]
            for j in range(bits):
                a[j] += (z0 * p0[j] + z1 * p1[j]) + (z2 * p2[j] + z3 * p3[j])
    for k in range(k4, d):
        p = planes[k]
        for r in range(m):
            zk = z[r, k]
            a = acc[r]
            for j in range(bits):
                a[j] += zk * p[j]
    for r in range(m):
        i = lo + r
        for w in range(words.shape[1]):
            words[i, w] = 0
        for j in range(bits):
            if acc[r, j] > _F0:
                words[i, j >> 6] |= np.uint64(1) << np.uint64(63 - (j & 63))


@njit(**NJIT)
def codes_kernel(features, centre, scale, planes, words):  # pragma: no cover - jitted
    """Sign bits of ``(sign(f - centre) * sqrt(|f - centre|) * scale) @ planes``, first bit the MSB of word 0."""
    d, bits = planes.shape
    n = features.shape[0]
    z = np.empty((_BLOCK, d), dtype=np.float32)
    acc = np.empty((_BLOCK, bits), dtype=np.float32)
    for lo in range(0, n, _BLOCK):
        _code_block(features, lo, min(n, lo + _BLOCK), centre, scale, planes, z, acc, words)


@njit(**NJIT_PARALLEL)
def codes_kernel_parallel(features, centre, scale, planes, words):  # pragma: no cover - jitted
    """:func:`codes_kernel` with the row blocks split over numba's threads (same bits)."""
    d, bits = planes.shape
    n = features.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        z = np.empty((_BLOCK, d), dtype=np.float32)
        acc = np.empty((_BLOCK, bits), dtype=np.float32)
        lo = b * _BLOCK
        _code_block(features, lo, min(n, lo + _BLOCK), centre, scale, planes, z, acc, words)
