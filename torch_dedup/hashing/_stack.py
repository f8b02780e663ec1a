"""Hashing a validated stack of same-sized images ``(N, H, W[, C])`` in batches (layer 1).

The one routine both the public API (:mod:`.api`) and the file decoder (:mod:`._decode`)
end in: grayscale, Pillow-exact resize and the method's bits, fused in numba where the
running Pillow's resize pass order allows it. Kept apart from both so that neither imports
the other.
"""

from __future__ import annotations

import logging

import numpy as np

from torch_dedup._checks import method_parts
from torch_dedup.hashing import _methods
from torch_dedup.hashing._inputs import stack_to_gray
from torch_dedup.hashing._pack import pack_bits, packed_words, unpack_bits
from torch_dedup.hashing._resample import fused_gray_resize, pillow_pass_order, resize_stack

__all__ = ["bits_from_resized", "hash_stack"]

logger = logging.getLogger(__name__)

#: Bytes of float64 work space one stacked chunk may use (keeps chunks cache-friendly).
_CHUNK_BYTES = 1 << 21


def bits_from_resized(pixels: np.ndarray, method: str, hash_size: int) -> np.ndarray:
    """Bits ``(N, hash_size**2)`` from pixels already at imagehash's target size."""
    if method == "ahash":
        return _methods.ahash_bits(pixels)
    if method == "dhash":
        return _methods.dhash_bits(pixels)
    if method == "phash":
        words, fallbacks = _methods.phash_words(pixels, hash_size, parallel=_use_parallel(len(pixels)))
        if fallbacks:
            logger.debug("%s: %d of %d images recomputed exactly", method, fallbacks, len(pixels))
        return unpack_bits(words, hash_size * hash_size)
    else:
        bits, fallbacks = _methods.whash_bits(pixels, hash_size)
    if fallbacks:
        logger.debug("%s: %d of %d images recomputed exactly", method, fallbacks, len(pixels))
    return bits


def _chunk_len(h: int, w: int, c: int) -> int:
    return max(1, _CHUNK_BYTES // max(1, h * w * max(c, 8)))


#: Stacks at least this long use the multi-threaded (prange) kernels, when numba has
#: more than one thread; below it, thread start-up costs more than it saves.
_PARALLEL_MIN = 2048
#: Images per step of the fused path at most, and the input bytes per step (bounds the
#: contiguous copy of a strided stack and the resized-pixel buffer for phash/whash).
_FUSED_STEP = 1 << 16
_FUSED_BYTES = 1 << 26


def _use_parallel(n: int) -> bool:
    from .._numba import num_threads  # imported late: numba costs ~0.5 s to import

    return n >= _PARALLEL_MIN and num_threads() > 1


def hash_stack(stack: np.ndarray, method: str, hash_size: int, progress: bool = False) -> np.ndarray:
    """Packed words ``(N, W)`` of a validated stack ``(N, H, W[, C])``.

    A composite code (``"phash+dhash"``) is each part's words side by side, in the order
    named: the pixels are in memory already, so each part resizes them itself.
    """
    parts = method_parts(method)
    if len(parts) > 1:
        return np.concatenate([hash_stack(stack, p, hash_size, progress) for p in parts], axis=1)
    n, h, w = stack.shape[:3]
    bits_total = hash_size * hash_size
    out = np.zeros((n, packed_words(bits_total)), dtype=np.uint64)
    if n == 0:
        return out
    if h == 0 or w == 0:
        raise ValueError(f"images has an empty image shape {stack.shape}")
    tw, th = _methods.resize_target(method, hash_size, w, h)
    if pillow_pass_order() != "pil":
        return _hash_stack_fused(stack, method, hash_size, tw, th, out, progress)
    from tqdm.auto import tqdm

    step = _chunk_len(h, w, stack.shape[3] if stack.ndim == 4 else 1)
    with tqdm(total=n, disable=not progress, desc=f"{method} hashing", unit="img") as bar:
        for start in range(0, n, step):
            gray = stack_to_gray(stack[start:start + step])
            small = resize_stack(gray, tw, th)
            out[start:start + step] = pack_bits(bits_from_resized(small, method, hash_size))
            bar.update(len(gray))
    return out


def _hash_stack_fused(stack, method, hash_size, tw, th, out, progress) -> np.ndarray:
    """The fused numba path: grayscale + exact resize (+ ahash/dhash bits) in one kernel pass."""
    from tqdm.auto import tqdm

    from torch_dedup.hashing import _kernels

    if stack.ndim == 3:
        stack = stack[:, :, :, None]
    mode = {"ahash": _kernels.MODE_AHASH, "dhash": _kernels.MODE_DHASH}.get(method, _kernels.MODE_PIXELS)
    n = stack.shape[0]
    step = max(1, min(_FUSED_STEP, _FUSED_BYTES // max(1, stack[0].nbytes)))
    bar = tqdm(total=n, desc=f"{method} hashing", unit="img") if progress else None
    for start in range(0, n, step):
        part = np.ascontiguousarray(stack[start:start + step])
        parallel = _use_parallel(len(part))
        if mode != _kernels.MODE_PIXELS:
            fused_gray_resize(part, tw, th, mode, out[start:start + len(part)], parallel=parallel)
        else:
            small = fused_gray_resize(part, tw, th, mode, parallel=parallel)
            if method == "phash":
                words, fallbacks = _methods.phash_words(small, hash_size, parallel=parallel)
            else:
                bits, fallbacks = _methods.whash_bits(small, hash_size)
                words = pack_bits(bits)
            if fallbacks:
                logger.debug("%s: %d of %d images recomputed exactly", method, fallbacks, len(small))
            out[start:start + len(part)] = words
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    return out
