"""numba kernels of the hashing layer (plain contiguous arrays in, arrays out; no PIL, no torch)."""

from __future__ import annotations

import numpy as np

from torch_dedup._numba import NJIT, NJIT_PARALLEL, njit, prange

__all__ = [
    "MODE_AHASH", "MODE_DHASH", "MODE_PIXELS", "fused_stack_kernel", "fused_stack_kernel_parallel",
    "median_bits_kernel", "phash_low_kernel", "phash_low_kernel_parallel", "rgb_to_l_kernel",
    "shift_clip_kernel",
]


@njit(**NJIT)
def rgb_to_l_kernel(rgb: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - jitted
    """Pillow ``rgb2l``: ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`` on ``(P, C>=3)`` pixels."""
    for i in range(rgb.shape[0]):
        acc = (np.uint32(rgb[i, 0]) * np.uint32(19595) + np.uint32(rgb[i, 1]) * np.uint32(38470)
               + np.uint32(rgb[i, 2]) * np.uint32(7471) + np.uint32(0x8000))
        out[i] = np.uint8(acc >> np.uint32(16))


@njit(**NJIT)
def shift_clip_kernel(acc: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - jitted
    """Pillow ``clip8``: ``(acc + 2**21) >> 22`` clamped to 0..255, on exact integer-valued floats."""
    for i in range(acc.shape[0]):
        v = np.int64(acc[i]) + np.int64(1 << 21)
        v >>= 22
        if v < 0:
            v = 0
        elif v > 255:
            v = 255
        out[i] = np.uint8(v)


@njit(**NJIT)
def median_bits_kernel(values, med, tol, words, unsure):  # pragma: no cover - jitted
    """``values > med`` per row, packed; flags rows with a value within ``tol`` of ``med``.

    ``values`` ``(N, M)`` float64 in imagehash's flattened order. Bits are packed
    right-aligned, first bit most significant, into ``words`` ``(N, W)``.
    """
    n, m = values.shape
    nwords = words.shape[1]
    pad = nwords * 64 - m
    for i in range(n):
        mi = med[i]
        t = tol[i]
        bad = False
        for w in range(nwords):
            words[i, w] = 0
        for j in range(m):
            v = values[i, j]
            if abs(v - mi) <= t:
                bad = True
            if v > mi:
                pos = pad + j
                words[i, pos // 64] |= np.uint64(1) << np.uint64(63 - pos % 64)
        unsure[i] = bad


# ----------------------------------------------------------------------------- fused stack kernels
#
# One pass per image, no intermediate arrays between stages: Pillow's integer grayscale,
# the two fixed-point Lanczos passes (Pillow's pass order), then either the ahash/dhash
# comparison packed straight into uint64 words, or the resized pixels (phash/whash).
# Resampling passes run "along axis 0" (a weighted sum of whole rows), so the innermost
# loop runs over contiguous, independent columns and vectorises; the image is
# transposed around the horizontal pass. All arithmetic is int32 and exact: pixels are
# 0..255 and ``|2**21 + sum(pixel * weight)| <= 255 * sum|weight| + 2**21 < 2**31``.

#: ``mode`` codes of :func:`fused_stack_kernel`.
MODE_PIXELS = 0
MODE_AHASH = 1
MODE_DHASH = 2


@njit(**NJIT)
def _gray_into(img, dst):  # pragma: no cover - jitted
    """Pillow ``convert('L')`` of one C-contiguous ``(H, W, C)`` image into int32 ``dst`` ``(H, W)``.

    One loop per channel count, with the stride a constant, so the interleaved loads vectorise.
    """
    h, w, c = img.shape
    f = img.reshape(-1)
    o = dst.reshape(-1)
    if c == 3:
        for p in range(h * w):
            o[p] = (np.int32(f[3 * p]) * np.int32(19595) + np.int32(f[3 * p + 1]) * np.int32(38470)
                    + np.int32(f[3 * p + 2]) * np.int32(7471) + np.int32(0x8000)) >> np.int32(16)
    elif c == 4:
        for p in range(h * w):
            o[p] = (np.int32(f[4 * p]) * np.int32(19595) + np.int32(f[4 * p + 1]) * np.int32(38470)
                    + np.int32(f[4 * p + 2]) * np.int32(7471) + np.int32(0x8000)) >> np.int32(16)
    elif c == 2:
        for p in range(h * w):
            o[p] = f[2 * p]
    else:
        for p in range(h * w):
            o[p] = f[p]


@njit(**NJIT)
def _transpose(src, rows, cols, dst):  # pragma: no cover - jitted
    for q in range(cols):
        for r in range(rows):
            dst[q, r] = src[r, q]


@njit(**NJIT)
def _pass_rows(src, cols, bounds, sizes, weights, dst, acc):  # pragma: no cover - jitted
    """Pillow's fixed-point pass along axis 0 on int32 rows.

    ``dst[y, :cols] = clip8((2**21 + sum_j weights[y, j] * src[bounds[y] + j, :cols]) >> 22)``.
    """
    for y in range(bounds.shape[0]):
        for q in range(cols):
            acc[q] = np.int32(1 << 21)
        b = bounds[y]
        for j in range(sizes[y]):
            k = weights[y, j]
            row = src[b + j]
            for q in range(cols):
                acc[q] += k * row[q]
        out = dst[y]
        for q in range(cols):
            v = acc[q] >> np.int32(22)
            out[q] = 0 if v < 0 else (255 if v > 255 else v)


@njit(**NJIT)
def _set_bit(words, i, pos):  # pragma: no cover - jitted
    words[i, pos >> 6] |= np.uint64(1) << np.uint64(63 - (pos & 63))


@njit(**NJIT)
def _fused_range(stack, lo, hi, hb, hs, hw, vb, vs, vw, need_h, need_v, vertical_first, mode,
                 words, pixels):  # pragma: no cover - jitted
    _, h, w, _ = stack.shape
    th = vb.shape[0] if need_v else h
    tw = hb.shape[0] if need_h else w
    big = max(h, w, th, tw)
    a = np.empty((big, big), dtype=np.int32)
    b = np.empty((big, big), dtype=np.int32)
    g = np.empty((h, w), dtype=np.int32)
    acc = np.empty(big, dtype=np.int32)
    nwords = words.shape[1]
    nbits = th * (tw - 1) if mode == MODE_DHASH else th * tw
    pad = nwords * 64 - nbits
    for i in range(lo, hi):
        _gray_into(stack[i], g)
        # leave the (th, tw) result in `res`, row-major
        if need_h and need_v and vertical_first:
            _pass_rows(g, w, vb, vs, vw, a, acc)       # (th, w)
            _transpose(a, th, w, b)                    # (w, th)
            _pass_rows(b, th, hb, hs, hw, a, acc)      # (tw, th)
            _transpose(a, tw, th, b)                   # (th, tw)
            res = b
        elif need_h:
            _transpose(g, h, w, a)                     # (w, h)
            _pass_rows(a, h, hb, hs, hw, b, acc)       # (tw, h)
            _transpose(b, tw, h, a)                    # (h, tw)
            if need_v:
                _pass_rows(a, tw, vb, vs, vw, b, acc)  # (th, tw)
                res = b
            else:
                res = a
        elif need_v:
            _pass_rows(g, w, vb, vs, vw, a, acc)
            res = a
        else:
            res = g
        if mode == MODE_PIXELS:
            for r in range(th):
                for q in range(tw):
                    pixels[i, r, q] = res[r, q]
            continue
        for k in range(nwords):
            words[i, k] = 0
        pos = pad
        if mode == MODE_AHASH:
            total = 0
            for r in range(th):
                for q in range(tw):
                    total += res[r, q]
            cnt = th * tw
            for r in range(th):
                for q in range(tw):
                    if res[r, q] * cnt > total:  # pixel > mean, in integers
                        _set_bit(words, i, pos)
                    pos += 1
        else:
            for r in range(th):
                for q in range(tw - 1):
                    if res[r, q + 1] > res[r, q]:
                        _set_bit(words, i, pos)
                    pos += 1


@njit(**NJIT)
def fused_stack_kernel(stack, hb, hs, hw, vb, vs, vw, need_h, need_v, vertical_first, mode,
                       words, pixels):  # pragma: no cover - jitted
    """Grayscale + Pillow-exact Lanczos resize + (ahash | dhash | pixels) of ``(N, H, W, C)`` uint8.

    ``hb``/``hs``/``hw``: per output column the first input column, the number of taps and
    the int32 weights (Pillow's ``normalize_coeffs_8bpc`` integers); ``vb``/``vs``/``vw``
    the same for rows. ``mode``: :data:`MODE_AHASH`/:data:`MODE_DHASH` pack the bits into
    ``words`` ``(N, W)``; :data:`MODE_PIXELS` writes the resized pixels to ``pixels``.
    """
    _fused_range(stack, 0, stack.shape[0], hb, hs, hw, vb, vs, vw, need_h, need_v, vertical_first,
                 mode, words, pixels)


#: Images per parallel work item (each allocates its own scratch).
_BLOCK = 512


@njit(**NJIT_PARALLEL)
def fused_stack_kernel_parallel(stack, hb, hs, hw, vb, vs, vw, need_h, need_v, vertical_first, mode,
                                words, pixels):  # pragma: no cover - jitted
    """:func:`fused_stack_kernel` over blocks of images on numba's threads."""
    n = stack.shape[0]
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for t in prange(nblocks):
        lo = t * _BLOCK
        _fused_range(stack, lo, min(n, lo + _BLOCK), hb, hs, hw, vb, vs, vw, need_h, need_v,
                     vertical_first, mode, words, pixels)


# ----------------------------------------------------------------------------- phash kernel


@njit(**NJIT)
def _phash_range(pixels, lo, hi, rows, rel_tol, low, tol):  # pragma: no cover - jitted
    size = pixels.shape[1]
    hsz = rows.shape[0]
    half = size // 2
    e = np.empty((half, size), dtype=np.float64)
    o = np.empty((half, size), dtype=np.float64)
    z = np.empty((hsz, size), dtype=np.float64)
    zt = np.empty((size, hsz), dtype=np.float64)
    lt = np.empty((hsz, hsz), dtype=np.float64)
    for i in range(lo, hi):
        img = pixels[i]
        total = 0
        # Z = C[:h] X with the DCT-II symmetry C[k, S-1-r] = (-1)^k C[k, r]:
        # even rows of C act on X[r] + X[S-1-r], odd rows on X[r] - X[S-1-r] (exact integers).
        for r in range(half):
            top = img[r]
            bot = img[size - 1 - r]
            for q in range(size):
                t = np.int32(top[q])
                u = np.int32(bot[q])
                total += t + u
                e[r, q] = t + u
                o[r, q] = t - u
        for k in range(hsz):
            src = e if k % 2 == 0 else o
            zk = z[k]
            for q in range(size):
                zk[q] = 0.0
            for r in range(half):
                ck = rows[k, r]
                sr = src[r]
                for q in range(size):
                    zk[q] += ck * sr[q]
        # block = Z C[:h]^T, the same symmetry along the columns; computed transposed
        # (lt[l, k]) so that the innermost loop runs over k, contiguous.
        for q in range(half):
            for k in range(hsz):
                zt[q, k] = z[k, q] + z[k, size - 1 - q]
                zt[half + q, k] = z[k, q] - z[k, size - 1 - q]
        for l in range(hsz):
            base = 0 if l % 2 == 0 else half
            row = lt[l]
            for k in range(hsz):
                row[k] = 0.0
            for q in range(half):
                cl = rows[l, q]
                zq = zt[base + q]
                for k in range(hsz):
                    row[k] += cl * zq[k]
        out = low[i]
        for k in range(hsz):
            for l in range(hsz):
                out[k * hsz + l] = lt[l, k]
        tol[i] = rel_tol * (4.0 * total + 1.0)


@njit(**NJIT)
def phash_low_kernel(pixels, rows, rel_tol, low, tol):  # pragma: no cover - jitted
    """Low-frequency DCT block of ``(N, S, S)`` uint8 pixels (``S = 4h``) and its margin.

    ``rows``: the first ``h`` rows of scipy's unnormalised DCT-II matrix ``(h, S)``.
    ``low[i]`` (``(N, h*h)`` float64) gets ``C[:h] X C[:h]^T`` flattened row-major (the
    even/odd symmetry of the DCT halves the work); ``tol[i] = rel_tol * (4*sum(X) + 1)``.
    """
    _phash_range(pixels, 0, pixels.shape[0], rows, rel_tol, low, tol)


@njit(**NJIT_PARALLEL)
def phash_low_kernel_parallel(pixels, rows, rel_tol, low, tol):  # pragma: no cover - jitted
    """:func:`phash_low_kernel` over blocks of images on numba's threads."""
    n = pixels.shape[0]
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for t in prange(nblocks):
        lo = t * _BLOCK
        _phash_range(pixels, lo, min(n, lo + _BLOCK), rows, rel_tol, low, tol)
