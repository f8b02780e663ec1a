"""numba kernels of the hashing layer (plain contiguous arrays in, arrays out; no PIL, no torch)."""

from __future__ import annotations

import numpy as np

from torch_dedup._numba import NJIT, njit

__all__ = ["median_bits_kernel", "rgb_to_l_kernel", "shift_clip_kernel"]


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
