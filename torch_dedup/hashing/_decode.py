"""Open, decode and shrink one image the way imagehash does, ready for the batched methods.

Each function returns the ``uint8`` pixels imagehash would hash: ``image.convert('L')``
then ``resize(target, LANCZOS)``, both done by Pillow itself (exact by definition). The
functions are top-level and take only picklable arguments, so the hashing worker
processes (:mod:`._workers`) can run them.

EXIF orientation is *not* applied: imagehash hashes the pixels as stored, and so do we.

Decompression bombs: an image over ``PIL.Image.MAX_IMAGE_PIXELS`` is a decode failure
(an :class:`~torch_dedup.errors.ImageDecodeError`, or a recorded failure under
``on_error="skip"``). Pillow itself raises only over twice the limit and merely warns
between 1x and 2x; we turn that warning into the failure too, so that the result never
depends on the caller's warning filters. Raise ``Image.MAX_IMAGE_PIXELS`` (or set it to
``None``) to hash such images on purpose; worker processes receive the caller's value
with every request.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from torch_dedup._checks import method_parts
from torch_dedup.hashing._methods import resize_target
from torch_dedup.hashing._stack import hash_stack

__all__ = ["decode_batch", "hash_files", "load_file", "load_pixels", "load_pixels_parts", "prepare_pil"]

_LANCZOS = Image.Resampling.LANCZOS


def _open(path) -> Image.Image:
    """``Image.open`` with Pillow's decompression-bomb *warning* (1x-2x the limit) raised as an error.

    Pillow checks the size from the header alone, so a bomb fails here, before any pixel is decoded.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def prepare_pil(image: Image.Image, method: str, hash_size: int) -> np.ndarray:
    """``image.convert('L').resize(target, LANCZOS)`` as a ``uint8`` array ``(h, w)``."""
    width, height = image.size
    target = resize_target(method, hash_size, width, height)
    gray = image.convert("L").resize(target, _LANCZOS)
    return np.asarray(gray, dtype=np.uint8).copy()


def load_file(path: str | os.PathLike, method: str, hash_size: int, fast_decode: bool = False) -> np.ndarray:
    """Open ``path`` and return the resized grayscale pixels imagehash would hash.

    Args:
        path: image file (any format Pillow reads).
        method: hash method (decides the target size).
        hash_size: hash size.
        fast_decode: let JPEG decoding skip work with ``Image.draft('L', target)``:
            libjpeg decodes straight to grayscale (its own luma, not Pillow's RGB->L)
            at a reduced DCT scale no smaller than the target. Faster, but a few bits
            differ from imagehash. The target size is computed from the full size, as
            imagehash would, so whash's scale does not change.
    """
    with _open(path) as im:
        width, height = im.size
        target = resize_target(method, hash_size, width, height)
        if fast_decode:
            im.draft("L", target)
        gray = im.convert("L")
    small = gray.resize(target, _LANCZOS)
    return np.asarray(small, dtype=np.uint8).copy()


def load_pixels(path: str | os.PathLike, method: str, hash_size: int, fast_decode: bool = False) -> np.ndarray:
    """Open and decode ``path`` to the array whose Pillow ``convert('L')`` imagehash would resize.

    ``L`` and ``RGB`` images come back as stored, ``(H, W, 1)`` or ``(H, W, 3)``: the
    stacked kernels then do Pillow's integer RGB->L and the Lanczos resize exactly
    (tested), in a batch, saving Pillow's per-image ``convert`` and ``resize`` calls.
    Other modes (P, CMYK, I;16, RGBA, ...) are converted by Pillow itself, ``(H, W, 1)``.
    With ``fast_decode``, JPEGs are drafted as in :func:`load_file`.
    """
    with _open(path) as im:
        width, height = im.size
        if fast_decode:
            im.draft("L", resize_target(method, hash_size, width, height))
        if width * height > _PIL_RESIZE_MIN_PIXELS:
            # Big images: Pillow's own convert + resize (exact by definition) beats the
            # stacked kernel, whose win is on small images; the stack then needs no resize.
            target = resize_target(method, hash_size, width, height)  # from the undrafted size, as load_file
            return np.asarray(im.convert("L").resize(target, _LANCZOS), dtype=np.uint8)[:, :, None]
        if im.mode not in ("L", "RGB"):
            im = im.convert("L")
        arr = np.asarray(im)
    return arr[:, :, None] if arr.ndim == 2 else arr


#: Above this many pixels a file is converted and resized by Pillow in the decoding process.
_PIL_RESIZE_MIN_PIXELS = 128 * 128


#: Files decoded per step before their hashes are computed, and the decoded bytes at
#: which a step ends early (bounds memory for big images).
_DECODE_STEP = 512
_DECODE_BYTES = 1 << 26


def load_pixels_parts(path: str | os.PathLike, parts: Sequence[str], hash_size: int,
                      fast_decode: bool = False) -> list[np.ndarray]:
    """:func:`load_pixels` for each part of a composite code, decoding ``path`` once.

    Small images come back once, as stored, shared by every part (each part's stacked
    kernel resizes them); big ones are converted to ``L`` once and resized by Pillow to
    each part's target. With ``fast_decode`` the JPEG draft asks for the largest target
    of all parts, so no part gets less resolution than it would alone.
    """
    with _open(path) as im:
        width, height = im.size
        targets = [resize_target(p, hash_size, width, height) for p in parts]
        if fast_decode:
            im.draft("L", (max(t[0] for t in targets), max(t[1] for t in targets)))
        if width * height > _PIL_RESIZE_MIN_PIXELS:
            gray = im.convert("L")
            return [np.asarray(gray.resize(t, _LANCZOS), dtype=np.uint8)[:, :, None] for t in targets]
        if im.mode not in ("L", "RGB"):
            im = im.convert("L")
        arr = np.asarray(im)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return [arr] * len(parts)


def hash_files(
    tasks: Sequence[tuple[int, str]], method: str, hash_size: int, fast_decode: bool
) -> list[tuple[int, np.ndarray | None, str | None]]:
    """Decode and hash many files; never raises for a bad file (runs in pool workers too).

    Files are decoded up to ``_DECODE_STEP`` (or ``_DECODE_BYTES``) at a time; decoded arrays of the same shape are
    stacked and hashed by the stacked (fused numba) path, so only ``Image.open`` and the
    decode run per file in Python. A composite code (``"phash+dhash"``) decodes each file
    once for all its parts and returns the parts' words side by side.

    Returns:
        ``(index, words, None)`` with the packed ``uint64`` words ``(W,)`` on success, or
        ``(index, None, reason)`` on failure, in the order of ``tasks``.
    """
    parts = method_parts(method)
    out: list[tuple[int, np.ndarray | None, str | None]] = []
    pos = 0
    while pos < len(tasks):
        failed: dict[int, tuple] = {}
        words: dict[int, list] = {}
        groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}  # (part, shape) -> (index, pixels)
        nbytes = 0
        part = []
        while pos < len(tasks) and len(part) < _DECODE_STEP and nbytes < _DECODE_BYTES:
            index, path = tasks[pos]
            pos += 1
            part.append(index)
            try:
                if len(parts) == 1:
                    arrays = [load_pixels(path, method, hash_size, fast_decode)]
                else:
                    arrays = load_pixels_parts(path, parts, hash_size, fast_decode)
            except Exception as exc:  # any decoder failure is reported per file, not raised here
                failed[index] = (index, None, f"{type(exc).__name__}: {exc}")
                continue
            nbytes += sum({id(a): a.nbytes for a in arrays}.values())
            words[index] = [None] * len(parts)
            for k, arr in enumerate(arrays):
                groups.setdefault((k, arr.shape), []).append((index, arr))
        for (k, _), items in groups.items():
            rows = hash_stack(np.stack([a for _, a in items]), parts[k], hash_size)
            for (index, _), row in zip(items, rows):
                words[index][k] = row
        for index in part:
            if index in failed:
                out.append(failed[index])
            else:
                w = words[index]
                out.append((index, w[0] if len(w) == 1 else np.concatenate(w), None))
    return out

def decode_batch(
    tasks: Sequence[tuple[int, str]], method: str, hash_size: int, fast_decode: bool
) -> list[tuple[int, np.ndarray | None, str | None]]:
    """Decode many files; never raises for a bad file.

    Returns:
        ``(index, pixels, None)`` on success or ``(index, None, reason)`` on failure, in
        the order of ``tasks``.
    """
    out: list[tuple[int, np.ndarray | None, str | None]] = []
    for index, path in tasks:
        try:
            out.append((index, load_file(path, method, hash_size, fast_decode), None))
        except Exception as exc:  # any decoder failure is reported per file, not raised here
            out.append((index, None, f"{type(exc).__name__}: {exc}"))
    return out
