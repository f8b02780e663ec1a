"""Pillow-exact grayscale conversion and Lanczos resize of stacked ``uint8`` images.

imagehash runs ``image.convert('L').resize(size, Image.LANCZOS)`` before hashing. For
8-bit images Pillow does both in fixed-point integer arithmetic, so the result is
reproducible bit for bit on a whole stack at once:

* ``RGB -> L`` (Pillow ``Convert.c``, ``rgb2l``/``rgba2l``):
  ``L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16``; alpha is ignored.
* Resize (Pillow ``Resample.c``, ``ImagingResampleInner``): per axis, ``precompute_coeffs``
  builds Lanczos-3 weights in double precision, normalises each output's weights to sum
  to one, then ``normalize_coeffs_8bpc`` rounds them to integers with
  ``PRECISION_BITS = 32 - 8 - 2 = 22`` fractional bits. A horizontal pass, then a vertical
  pass each compute ``clip8((1 << 21) + sum(pixel * k) >> 22)`` in ``int``. An axis whose
  size does not change is not resampled at all (``need_horizontal``/``need_vertical``),
  and an unchanged size returns a copy.
* Pass order: horizontal then vertical, except that Pillow 13 (python-pillow/Pillow#9549,
  read off the shipped ``ImagingResample`` machine code) runs the vertical pass first when
  the height shrinks by more than twice as many pixels as the width
  (``in_h - out_h > 2 * (in_w - out_w)``, both axes resampled). Because the intermediate
  image is rounded to 8 bits, the order changes results, so :func:`pillow_pass_order`
  checks once, lazily, which rule the installed Pillow follows.

We rebuild the same integer weights (:func:`lanczos_matrix`) as a dense ``(out, in)``
matrix and apply it with a float64 matrix product. That product is exact: every term is
an integer, and ``|sum| <= 255 * sum|k| < 2**31 < 2**53``, so no rounding happens and the
floor-shift-clip afterwards reproduces Pillow's ``int`` arithmetic exactly. The tests
compare against ``PIL.Image.resize`` on many random sizes.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["fused_gray_resize", "lanczos_coeffs", "lanczos_matrix", "pillow_pass_order", "resize_stack", "rgb_to_l"]

PRECISION_BITS = 32 - 8 - 2
_LANCZOS_SUPPORT = 3.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@lru_cache(maxsize=256)
def lanczos_coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's integer Lanczos weights for one axis, in Pillow's own sparse layout.

    Mirrors ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` of Pillow's ``Resample.c``
    (box = whole image), operation for operation, so every weight is the same integer.

    Returns:
        ``(bounds, sizes, weights)``: per output index the first input index ``xmin``,
        the number of taps, and the ``int32`` weights ``(out_size, max_taps)`` (zero
        padded). All read-only (cached).
    """
    # (double)(in1 - in0) / outSize with in0 = 0.0f, in1 = (float)in_size
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    ss = 1.0 / filterscale
    one = float(1 << PRECISION_BITS)
    bounds = np.zeros(out_size, dtype=np.int64)
    sizes = np.zeros(out_size, dtype=np.int64)
    rows = []
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = []
        ww = 0.0
        for x in range(xmax):
            w = _lanczos(((x + xmin) - center + 0.5) * ss)
            ws.append(w)
            ww += w
        ks = []
        for w in ws:
            if ww != 0.0:
                w = w / ww
            # C's (int) cast truncates toward zero, like Python's int().
            ks.append(int(-0.5 + w * one) if w < 0 else int(0.5 + w * one))
        bounds[xx], sizes[xx] = xmin, len(ks)
        rows.append(ks)
    weights = np.zeros((out_size, max(1, int(sizes.max(initial=0)))), dtype=np.int32)
    for xx, ks in enumerate(rows):
        weights[xx, : len(ks)] = ks
    for arr in (bounds, sizes, weights):
        arr.setflags(write=False)
    return bounds, sizes, weights


@lru_cache(maxsize=256)
def lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's integer Lanczos weights for one axis, as a dense ``(out, in)`` float64 matrix.

    The same integers as :func:`lanczos_coeffs`, scattered into a dense matrix. The
    returned array is read-only (it is cached).
    """
    bounds, sizes, weights = lanczos_coeffs(in_size, out_size)
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        mat[xx, bounds[xx]:bounds[xx] + sizes[xx]] = weights[xx, : sizes[xx]]
    mat.setflags(write=False)
    return mat


def _vertical_first(h: int, w: int, height: int, width: int, rule: str) -> bool:
    if rule != "pillow13" or w == width or h == height:
        return False
    return (h - height) > 0 and (h - height) > 2 * (w - width)


def resize_stack(images: np.ndarray, width: int, height: int, rule: str | None = None) -> np.ndarray:
    """Resize a ``(N, H, W)`` uint8 stack to ``(N, height, width)`` exactly like Pillow LANCZOS.

    Args:
        images: ``uint8`` array ``(N, H, W)`` (mode ``L`` images).
        width: target width (Pillow's ``size[0]``).
        height: target height (Pillow's ``size[1]``).
        rule: pass-order rule, ``"classic"`` (always horizontal first) or ``"pillow13"``;
            ``None`` uses the installed Pillow's (:func:`pillow_pass_order`).

    Returns:
        ``uint8`` array ``(N, height, width)``; a copy when the size is unchanged.
    """
    n, h, w = images.shape
    if (w, h) == (width, height):
        return images.copy()
    if rule is None:
        rule = pillow_pass_order()
    if rule == "pil":
        return _resize_with_pil(images, width, height)
    if _vertical_first(h, w, height, width, rule):
        return _resize_horizontal(_resize_vertical(images, height), width)
    out = images
    if w != width:
        out = _resize_horizontal(out, width)
    if h != height:
        out = _resize_vertical(out, height)
    return out


@lru_cache(maxsize=1)
def pillow_pass_order() -> str:
    """Which resize pass order the installed Pillow uses (probed once, on first use).

    Returns ``"classic"`` (horizontal pass first, Pillow <= 12), ``"pillow13"``
    (vertical first when the height shrinks much more than the width), or ``"pil"`` when
    neither emulation reproduces Pillow on the probe images; then every resize is handed
    to Pillow itself, image by image (slow but still exact).
    """
    from PIL import Image

    rng = np.random.default_rng(12345)
    probes = [(46, 46, 26, 44), (54, 37, 25, 36), (52, 42, 34, 29), (29, 31, 45, 57), (32, 32, 8, 9)]
    matches = {"classic": True, "pillow13": True}
    for h, w, height, width in probes:
        img = rng.integers(0, 256, (1, h, w), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(img[0]).resize((width, height), Image.Resampling.LANCZOS))
        for rule in matches:
            if matches[rule] and not np.array_equal(resize_stack(img, width, height, rule)[0], ref):
                matches[rule] = False
    if matches["pillow13"] and not matches["classic"]:
        return "pillow13"
    if matches["classic"] and not matches["pillow13"]:
        return "classic"
    logger.warning(
        "the installed Pillow's LANCZOS resize matches neither known pass order; hashing of "
        "stacked arrays falls back to Pillow's own resize (exact, but slower)"
    )
    return "pil"


def _resize_with_pil(images: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((images.shape[0], height, width), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.LANCZOS))
    return out


def _clip8(acc: np.ndarray) -> np.ndarray:
    from torch_dedup.hashing._kernels import shift_clip_kernel

    out = np.empty(acc.shape, dtype=np.uint8)
    shift_clip_kernel(acc.reshape(-1), out.reshape(-1))
    return out


def _resize_horizontal(images: np.ndarray, width: int) -> np.ndarray:
    n, h, w = images.shape
    mat_h = lanczos_matrix(w, width)
    acc = images.reshape(n * h, w).astype(np.float64) @ mat_h.T
    return _clip8(acc).reshape(n, h, width)


def _resize_vertical(images: np.ndarray, height: int) -> np.ndarray:
    n, h, w = images.shape
    mat_v = lanczos_matrix(h, height)
    # (height, h) @ (h, w) per image: contract the row axis with one big product.
    flat = np.ascontiguousarray(images.transpose(1, 0, 2)).reshape(h, n * w).astype(np.float64)
    acc = mat_v @ flat
    out = _clip8(acc).reshape(height, n, w).transpose(1, 0, 2)
    return np.ascontiguousarray(out)


def rgb_to_l(images: np.ndarray) -> np.ndarray:
    """Pillow's ``convert('L')`` of RGB/RGBA pixels: ``(..., 3|4)`` uint8 -> ``(...)`` uint8.

    ``L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16`` (ITU-R 601-2 luma in 16-bit fixed
    point); the alpha channel, if any, is ignored, as Pillow does.
    """
    from torch_dedup.hashing._kernels import rgb_to_l_kernel

    shape = images.shape
    flat = np.ascontiguousarray(images).reshape(-1, shape[-1])
    out = np.empty(flat.shape[0], dtype=np.uint8)
    rgb_to_l_kernel(flat, out)
    return out.reshape(shape[:-1])


def fused_gray_resize(
    stack: np.ndarray, width: int, height: int, mode: int, words: np.ndarray | None = None,
    parallel: bool = False,
) -> np.ndarray | None:
    """Grayscale + resize (+ ahash/dhash) of a ``(N, H, W, C)`` uint8 stack in one numba pass.

    Exactly Pillow's ``convert('L').resize((width, height), LANCZOS)``, with the pass order
    of :func:`pillow_pass_order` (which must not be ``"pil"``; the caller checks).

    Args:
        stack: C-contiguous ``uint8`` ``(N, H, W, C)``, C in 1..4 (C <= 2: channel 0 is L).
        width: target width.
        height: target height.
        mode: ``_kernels.MODE_PIXELS`` (return the pixels), ``MODE_AHASH`` or ``MODE_DHASH``
            (pack bits into ``words``; the target must be ``(s, s)`` / ``(s + 1, s)``).
        words: ``uint64`` ``(N, W)`` output for the hash modes.
        parallel: split the images over numba's threads.

    Returns:
        ``uint8`` ``(N, height, width)`` in pixel mode, else None.
    """
    from torch_dedup.hashing import _kernels

    n, h, w, _ = stack.shape
    rule = pillow_pass_order()
    need_h, need_v = w != width, h != height
    hb, hs, hw = lanczos_coeffs(w, width) if need_h else _NO_PASS
    vb, vs, vw = lanczos_coeffs(h, height) if need_v else _NO_PASS
    vfirst = _vertical_first(h, w, height, width, rule)
    pixels = np.empty((n, height, width) if mode == _kernels.MODE_PIXELS else (0, 1, 1), dtype=np.uint8)
    if words is None:
        words = np.empty((0, 1), dtype=np.uint64)
    kernel = _kernels.fused_stack_kernel_parallel if parallel else _kernels.fused_stack_kernel
    kernel(stack, hb, hs, hw, vb, vs, vw, need_h, need_v, vfirst, mode, words, pixels)
    return pixels if mode == _kernels.MODE_PIXELS else None


_NO_PASS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 1), np.int32))
