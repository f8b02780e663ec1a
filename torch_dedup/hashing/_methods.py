"""The four hash methods on stacks of already-resized grayscale pixels, bit-exact to imagehash.

Every function takes ``uint8`` pixels ``(N, h, w)`` exactly as imagehash has them after
``image.convert('L').resize(size, LANCZOS)`` and returns boolean bits ``(N, hash_size**2)``
in imagehash's flattened (row-major) order.

* ``ahash``/``dhash`` are integer comparisons, exact by construction.
* ``phash`` uses a batched matrix DCT, which can differ from ``scipy.fftpack.dct`` in the
  last bits of a float; a *certified margin* decides which images can trust it, and the
  rest are recomputed exactly as imagehash does (:func:`phash_bits`).
* ``whash`` is computed from exact integer block sums; images with a tie at the median
  are recomputed with PyWavelets exactly as imagehash does (:func:`whash_bits`).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

__all__ = ["ahash_bits", "dhash_bits", "phash_bits", "phash_words", "resize_target", "whash_bits", "whash_scale"]

logger = logging.getLogger(__name__)

#: Relative tolerance of the phash margin, in units of the image's coefficient bound
#: ``4 * sum(pixels)`` (|DCT-II coefficient| <= 2 * 2 * sum|x| for scipy's unnormalised
#: DCT). Both our two matrix products and scipy's FFT-based DCT compute each coefficient
#: with an error below ``c * n * eps * 4 * sum|x|``, with ``n <= 64`` terms per product,
#: ``eps = 2**-53`` and a small constant ``c``: about 1e-13 at most. The median of the 64
#: (or 256) low-frequency coefficients moves by no more than the largest coefficient
#: error (order statistics are 1-Lipschitz). So a coefficient farther than
#: ``2 * error`` from our median compares the same way in both computations; we demand
#: ``1e-9``, four orders of magnitude more than needed, and recompute the rest exactly.
PHASH_REL_TOL = 1e-9


def whash_scale(width: int, height: int, hash_size: int) -> int:
    """imagehash's default ``image_scale`` for whash: ``max(2**int(log2(min(w, h))), hash_size)``."""
    natural = 2 ** int(np.log2(min(width, height)))
    return max(natural, hash_size)


def resize_target(method: str, hash_size: int, width: int, height: int) -> tuple[int, int]:
    """The ``(width, height)`` imagehash resizes to for ``method`` (whash depends on the input size)."""
    if method == "ahash":
        return hash_size, hash_size
    if method == "dhash":
        return hash_size + 1, hash_size
    if method == "phash":
        return 4 * hash_size, 4 * hash_size
    if method == "whash":
        s = whash_scale(width, height, hash_size)
        return s, s
    raise ValueError(f"method={method!r} is not one of ('ahash', 'dhash', 'phash', 'whash')")


def ahash_bits(pixels: np.ndarray) -> np.ndarray:
    """``pixels > mean(pixels)`` per image, in integers.

    imagehash compares against ``numpy.mean`` (a float64). With ``n`` pixels summing to
    ``s``, ``p > s / n`` iff ``p * n > s``: when ``s / n`` is not an integer it lies at
    least ``1 / n`` away from every integer, far more than float64 rounding can move it.
    """
    n = pixels.shape[0]
    flat = pixels.reshape(n, -1)
    total = flat.sum(axis=1, dtype=np.int64)
    return flat.astype(np.int64) * flat.shape[1] > total[:, None]


def dhash_bits(pixels: np.ndarray) -> np.ndarray:
    """``pixels[:, 1:] > pixels[:, :-1]`` per row of each ``(h, h+1)`` image."""
    n = pixels.shape[0]
    return (pixels[:, :, 1:] > pixels[:, :, :-1]).reshape(n, -1)


@lru_cache(maxsize=16)
def _dct_rows(size: int, keep: int) -> np.ndarray:
    """First ``keep`` rows of scipy's unnormalised DCT-II matrix: ``2 cos(pi k (2n+1) / 2N)``."""
    k = np.arange(keep, dtype=np.float64)[:, None]
    n = np.arange(size, dtype=np.float64)[None, :]
    mat = 2.0 * np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * size))
    mat.setflags(write=False)
    return mat


def _phash_exact(pixels: np.ndarray, hash_size: int) -> np.ndarray:
    """imagehash's own phash arithmetic on one resized image (the exact fallback)."""
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:hash_size, :hash_size]
    return (low > np.median(low)).reshape(-1)


def phash_words(pixels: np.ndarray, hash_size: int, parallel: bool = False) -> tuple[np.ndarray, int]:
    """Packed phash words ``(N, W)`` of ``(N, 4h, 4h)`` pixels; returns ``(words, fallbacks)``.

    A numba kernel computes only the low-frequency ``h x h`` DCT block (the first
    ``hash_size`` rows of the DCT matrix, using its even/odd symmetry); numpy's SIMD sort
    gives the medians; a second kernel checks the certified margin and packs the bits.
    Flagged images are recomputed with scipy, as imagehash does.
    """
    from torch_dedup.hashing import _kernels
    from torch_dedup.hashing._pack import pack_bits, packed_words

    n, size, _ = pixels.shape
    pixels = np.ascontiguousarray(pixels)
    m = hash_size * hash_size
    low = np.empty((n, m), dtype=np.float64)
    tol = np.empty(n, dtype=np.float64)
    kernel = _kernels.phash_low_kernel_parallel if parallel else _kernels.phash_low_kernel
    kernel(pixels, _dct_rows(size, hash_size), PHASH_REL_TOL, low, tol)
    srt = np.sort(low, axis=1)  # numpy's SIMD sort beats partition (and numba) for 64-256 values
    med = srt[:, m // 2] if m % 2 else (srt[:, m // 2 - 1] + srt[:, m // 2]) / 2.0
    words = np.empty((n, packed_words(m)), dtype=np.uint64)
    unsure = np.empty(n, dtype=np.bool_)
    _kernels.median_bits_kernel(low, np.ascontiguousarray(med), tol, words, unsure)
    idx = np.flatnonzero(unsure)
    if idx.size:
        words[idx] = pack_bits(np.stack([_phash_exact(pixels[i], hash_size) for i in idx]))
    return words, int(idx.size)


def phash_bits(pixels: np.ndarray, hash_size: int) -> tuple[np.ndarray, int]:
    """phash bits of ``(N, 4h, 4h)`` pixels; returns ``(bits, number_of_exact_fallbacks)``."""
    from torch_dedup.hashing._pack import unpack_bits

    words, fallbacks = phash_words(pixels, hash_size)
    return unpack_bits(words, hash_size * hash_size), fallbacks


def phash_bits_blas(pixels: np.ndarray, hash_size: int) -> tuple[np.ndarray, int]:
    """Reference phash with two BLAS matrix products (same margin rule); used by the tests."""
    n, size, _ = pixels.shape
    rows = _dct_rows(size, hash_size)
    x = pixels.astype(np.float64)
    # D_low = C X C^T restricted to the first hash_size rows of C, as two big products.
    y = x.reshape(n * size, size) @ rows.T  # (n*size, h): X C^T
    y = np.ascontiguousarray(y.reshape(n, size, hash_size).transpose(0, 2, 1))
    low_t = y.reshape(n * hash_size, size) @ rows.T  # rows of (C X C^T)^T
    low = low_t.reshape(n, hash_size, hash_size).transpose(0, 2, 1).reshape(n, -1)
    bits, unsure = _median_compare(low, PHASH_REL_TOL * (4.0 * x.reshape(n, -1).sum(axis=1) + 1.0))
    for i in np.flatnonzero(unsure):
        bits[i] = _phash_exact(pixels[i], hash_size)
    return bits, int(unsure.sum())


def _median_compare(values: np.ndarray, tol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values > median`` per row, and which rows have a value within ``tol`` of the median."""
    m = values.shape[1]
    part = np.partition(values, (m - 1) // 2, axis=1) if m % 2 else np.partition(values, (m // 2 - 1, m // 2), axis=1)
    if m % 2:
        med = part[:, m // 2]
    else:
        med = (part[:, m // 2 - 1] + part[:, m // 2]) / 2.0
    diff = values - med[:, None]
    unsure = (np.abs(diff) <= tol[:, None]).any(axis=1)
    return diff > 0, unsure


def _whash_exact(pixels: np.ndarray, hash_size: int) -> np.ndarray:
    """imagehash's own whash arithmetic (haar, remove_max_haar_ll) on a stack ``(K, s, s)``.

    PyWavelets transforms each 2-D slice of a stack with the same 1-D kernels, in the same
    order, as it would a single image (``axes=(-2, -1)``), and ``numpy.median`` along axes
    partitions and averages exactly as on one image, so this equals per-image imagehash
    bit for bit (the tests hold it to that).
    """
    import pywt

    k, scale, _ = pixels.shape
    ll_max_level = int(np.log2(scale))
    level = int(np.log2(hash_size))
    x = pixels / 255.0
    coeffs = list(pywt.wavedec2(x, "haar", level=ll_max_level, axes=(-2, -1)))
    coeffs[0] *= 0
    x = pywt.waverec2(coeffs, "haar", axes=(-2, -1))
    low = pywt.wavedec2(x, "haar", level=ll_max_level - level, axes=(-2, -1))[0]
    med = np.median(low, axis=(1, 2))
    return (low > med[:, None, None]).reshape(k, -1)


def whash_bits(pixels: np.ndarray, hash_size: int) -> tuple[np.ndarray, int]:
    """whash bits of ``(N, s, s)`` pixels (``s = image_scale``); returns ``(bits, fallbacks)``.

    In exact arithmetic imagehash's whash is simple: a full Haar decomposition with the
    top LL zeroed and reconstructed subtracts the image mean, and the level-``d`` Haar
    LL band of a ``2**d`` block is its sum over ``2**d``. So each bit is
    ``S_b > median(S)`` for the integer block sums ``S_b`` of ``2**d x 2**d`` blocks, and
    when ``2 S_b != S_(m/2) + S_(m/2+1)`` the real-valued gap to the median is at least
    ``1 / (510 * 2**d)``, while PyWavelets' float error is about ``2**d * 1e-14``: the
    float comparison cannot flip. Images where some ``S_b`` equals the median exactly
    (there the float result is decided by rounding) are recomputed with PyWavelets.
    """
    n, s, _ = pixels.shape
    b = s // hash_size
    sums = pixels.reshape(n, hash_size, b, hash_size, b).sum(axis=(2, 4), dtype=np.int64).reshape(n, -1)
    m = sums.shape[1]
    part = np.partition(sums, (m // 2 - 1, m // 2), axis=1)
    med2 = part[:, m // 2 - 1] + part[:, m // 2]  # twice the median, exact
    twice = 2 * sums
    bits = twice > med2[:, None]
    unsure = (twice == med2[:, None]).any(axis=1)
    idx = np.flatnonzero(unsure)
    if idx.size:
        bits[idx] = _whash_exact(pixels[idx], hash_size)
    return bits, int(idx.size)
