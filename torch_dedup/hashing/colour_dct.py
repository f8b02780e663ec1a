"""Colour DCT features: the per-image half of the whitened colour DCT codes, without weights.

:func:`colour_dct_features`: per image, YCbCr at 32x32, the orthonormal 2-D DCT-II of each
channel, and its low frequencies without the DC term: Y 8x8 and Cb, Cr 6x6 each,
``63 + 35 + 35 = 133`` float32 numbers (:data:`COLOUR_DCT_DIMS`). Depends on the image alone,
bit for bit from every input kind; :data:`COLOUR_DCT_VERSION` names the definition. This module
holds the features, the resampling and DCT basis, and the pixel reading.

The dataset half, the fit that whitens features and turns them into sign codes, and the
Hamming threshold <-> cosine conversions are in :mod:`torch_dedup.hashing.colour_dct_fit`
(which imports this module, never the other way). See docs/hashing.md, "Whitened colour DCT
codes (colour_dct)".
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from torch_dedup._checks import check_bool
from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing import _colour_dct_kernels as _k
from torch_dedup.hashing._decode import _open
from torch_dedup.hashing._inputs import (
    is_torch_tensor,
    tensor_to_numpy,
    to_channels_last,
    validate_stack,
)

__all__ = ["COLOUR_DCT_DIMS", "COLOUR_DCT_VERSION", "colour_dct_features"]

#: Names the feature definition (size, colour transform, resample, DCT block) and the
#: meaning of a fit's arrays (2: signed square root before the weights). Stored with every
#: fit; it changes whenever a feature value or a code bit could change.
COLOUR_DCT_VERSION = "colour_dct/2"
_SIZE = 32
_Y_KEEP = 8
_C_KEEP = 6
#: Feature dimensions: Y 8x8 and Cb, Cr 6x6 each, DC dropped.
COLOUR_DCT_DIMS = (_Y_KEEP * _Y_KEEP - 1) + 2 * (_C_KEEP * _C_KEEP - 1)
#: Images per kernel call at most (bounds the stacked copy of a list of images).
_STEP = 4096
#: Stacks at least this long use numba's threads (below, starting them costs more).
_PARALLEL_MIN = 2048
#: Images of at least this many pixels are featured one by one as they are read, not stacked.
_ALONE_PIXELS = 64 * 64
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


# --------------------------------------------------------------------------- features


@lru_cache(maxsize=1)
def _dct_basis() -> np.ndarray:
    """Orthonormal DCT-II rows ``(32, 32)``: ``C[u, x] = a_u cos(pi (2x + 1) u / 64)``."""
    x = np.arange(_SIZE, dtype=np.float64)
    u = np.arange(_SIZE, dtype=np.float64)[:, None]
    basis = np.cos(np.pi * (2 * x + 1) * u / (2 * _SIZE)) * math.sqrt(2.0 / _SIZE)
    basis[0] = math.sqrt(1.0 / _SIZE)
    out = basis.astype(np.float32)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=1)
def _dct_basis_t() -> np.ndarray:
    """The first 8 DCT rows transposed, ``(32, 8)`` (the second stage reads them by column)."""
    out = np.ascontiguousarray(_dct_basis()[:_Y_KEEP].T)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=64)
def _resample(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow-style antialiased triangle (bilinear) weights from ``n_in`` to 32 samples.

    Returns ``(start, count, weights)``: output ``j`` is ``sum_k weights[j, k] *
    in[start[j] + k]`` for ``k < count[j]``. Down-scaling widens the triangle to the
    scale (an area-like average); up-scaling is linear interpolation.
    """
    scale = n_in / _SIZE
    fscale = max(scale, 1.0)
    support = fscale
    starts, rows = [], []
    for j in range(_SIZE):
        centre = (j + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        x = np.arange(lo, hi, dtype=np.float64)
        w = np.maximum(0.0, 1.0 - np.abs((x - centre + 0.5) / fscale))
        total = w.sum()
        if total <= 0:  # cannot happen for n_in >= 1; keeps the weights finite regardless
            w = np.ones_like(w)
            total = w.sum()
        starts.append(lo)
        rows.append(w / total)
    width = max(len(r) for r in rows)
    weights = np.zeros((_SIZE, width), dtype=np.float32)
    for j, r in enumerate(rows):
        weights[j, :len(r)] = r
    count = np.array([len(r) for r in rows], dtype=np.int64)
    return np.array(starts, dtype=np.int64), count, weights


def _stack_features(stack: np.ndarray, out: np.ndarray) -> None:
    """Features of a contiguous ``(N, H, W, C)`` uint8 stack (C 1 or 3) into ``out`` ``(N, D)``."""
    n, h, w = stack.shape[:3]
    if n == 0:
        return
    xs, xn, xw = _resample(w)
    ys, yn, yw = _resample(h)
    same = h == _SIZE and w == _SIZE
    parallel = n >= _PARALLEL_MIN and _num_threads() > 1
    kernel = _k.features_kernel_parallel if parallel else _k.features_kernel
    kernel(stack, same, xs, xn, xw, ys, yn, yw, _dct_basis(), _dct_basis_t(), _Y_KEEP, _C_KEEP, out)


def _num_threads() -> int:
    from torch_dedup._numba import (
        num_threads,  # imported late: numba costs ~0.5 s to import
    )

    return num_threads()


def _channels(arr: np.ndarray) -> np.ndarray:
    """``(..., H, W, C)`` uint8 -> C-contiguous with C 1 (grey: L, LA) or 3 (RGB, RGBA without alpha)."""
    c = arr.shape[-1]
    if c == 2:
        arr = arr[..., :1]
    elif c == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def _pil_pixels(image: Image.Image) -> np.ndarray:
    """A PIL image as ``(H, W, 1)`` grey or ``(H, W, 3)`` RGB uint8, the way every input is read.

    Grey modes (``1``, ``L``, ``LA``, 16-bit and float) are taken through Pillow's
    ``convert("L")``, everything else (``P``, ``RGBA``, ``CMYK``, ``YCbCr``, ...) through
    ``convert("RGB")``; alpha is dropped, not composited (as ``convert("L")`` does for hashes).
    """
    if image.mode == "RGB" or image.mode == "L":
        arr = np.asarray(image)
    elif image.mode in _GREY_MODES:
        arr = np.asarray(image.convert("L"))
    else:
        arr = np.asarray(image.convert("RGB"))
    if 0 in arr.shape[:2]:
        raise ValueError(f"empty image of size {image.size}")
    return arr[:, :, None] if arr.ndim == 2 else arr


def _file_pixels(path: str) -> np.ndarray:
    with _open(path) as im:  # the hashing layer's open: decompression bombs fail the same way
        return _pil_pixels(im)


def _item_pixels(item: Any, i: int) -> np.ndarray:
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            return _file_pixels(path)
        except Exception as exc:  # any decoder failure becomes one clear error naming the file
            raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}", i) from exc
    if isinstance(item, Image.Image):
        try:
            return _pil_pixels(item)
        except Exception as exc:  # a broken lazy image
            raise ImageDecodeError(f"item {i}", f"{type(exc).__name__}: {exc}", i) from exc
    if isinstance(item, np.ndarray) or is_torch_tensor(item):
        what = f"images[{i}]"
        arr = tensor_to_numpy(item, what, stacked=False) if is_torch_tensor(item) else to_channels_last(item, what)
        return _channels(arr[:, :, None] if arr.ndim == 2 else arr)
    raise ValueError(
        f"images[{i}] has unsupported type {type(item).__name__}; expected a PIL image, "
        f"a path (str/Path), a uint8 numpy array or a torch tensor"
    )


def colour_dct_features(images, *, progress: bool = False) -> np.ndarray:
    """Low-frequency YCbCr DCT features of images (float32, 133 per image).

    Per image: RGB (or grey) pixels, resampled to 32x32 with an antialiased triangle
    filter (none when the image is 32x32 already), converted to YCbCr with Pillow's
    ITU-R 601 weights, then the orthonormal 2-D DCT-II of each channel; kept are the
    low Y 8x8 and Cb, Cr 6x6 blocks, row-major, each without its DC term. A grey image
    has zero chroma features, exactly. Every input kind goes through the same kernel, so
    the same pixels give the same features bit for bit in memory, from a file, in
    another process, in any batch.

    Args:
        images: a stacked ``uint8`` array ``(N, H, W)``/``(N, H, W, C)`` (C 1: grey,
            2: grey + alpha, 3: RGB, 4: RGBA; alpha is ignored) or tensor ``(N, C, H, W)``;
            or a sequence of PIL images (grey modes read as ``L``, the rest as ``RGB``),
            file paths (each decoded once; EXIF orientation not applied), ``uint8`` arrays
            ``HW``/``HWC`` or tensors ``CHW`` (as :func:`~torch_dedup.hashing.hash_images`
            reads them).
        progress: show a tqdm progress bar.

    Returns:
        ``float32`` ``(N, 133)``: 63 Y, then 35 Cb, then 35 Cr coefficients.

    Raises:
        ValueError: an input of an unsupported type, dtype or shape.
        ImageDecodeError: a file or lazy PIL image could not be decoded.

    Example:
        >>> from torch_dedup.embedded import load_sample
        >>> colour_dct_features(load_sample(4)[0]).shape
        (4, 133)
    """
    check_bool("progress", progress)
    from tqdm.auto import tqdm

    if isinstance(images, np.ndarray) or is_torch_tensor(images):
        arr = tensor_to_numpy(images, "images", stacked=True) if is_torch_tensor(images) else images
        arr = validate_stack(arr)
        if arr.ndim == 3:
            arr = arr[..., None]
        n = arr.shape[0]
        if n and 0 in arr.shape[1:3]:
            raise ValueError(f"images has an empty image shape {arr.shape}")
        out = np.zeros((n, COLOUR_DCT_DIMS), dtype=np.float32)
        with tqdm(total=n, disable=not progress, desc="colour_dct features", unit="img") as bar:
            for start in range(0, n, _STEP):
                part = _channels(arr[start:start + _STEP])
                _stack_features(part, out[start:start + len(part)])
                bar.update(len(part))
        return out
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise ValueError(
            f"images must be a sequence of images or a stacked array, got a single "
            f"{type(images).__name__}; wrap it in a list: colour_dct_features([image])"
        )
    items = list(images)
    n = len(items)
    out = np.zeros((n, COLOUR_DCT_DIMS), dtype=np.float32)
    with tqdm(total=n, disable=not progress, desc="colour_dct features", unit="img") as bar:
        for start in range(0, n, _STEP):
            stop = min(n, start + _STEP)
            groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
            for i in range(start, stop):
                pixels = _item_pixels(items[i], i)
                if pixels.shape[0] * pixels.shape[1] >= _ALONE_PIXELS:
                    # a large image: featured at once, while its pixels are still in cache, and
                    # never copied into a stack (the same kernel: the same features bit for bit)
                    _stack_features(pixels[None], out[i:i + 1])
                    continue
                groups.setdefault(pixels.shape, []).append((i, pixels))
            for group in groups.values():
                idx = [i for i, _ in group]
                feats = np.zeros((len(group), COLOUR_DCT_DIMS), dtype=np.float32)
                _stack_features(np.stack([p for _, p in group]), feats)
                out[idx] = feats
            bar.update(stop - start)
    return out
