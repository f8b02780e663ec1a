"""Open, decode and shrink one image the way imagehash does, ready for the batched methods.

Each function returns the ``uint8`` pixels imagehash would hash: ``image.convert('L')``
then ``resize(target, LANCZOS)``, both done by Pillow itself (exact by definition). The
functions are top-level and take only picklable arguments, so a ``spawn`` process pool
can run them (:func:`decode_batch`).

EXIF orientation is *not* applied: imagehash hashes the pixels as stored, and so do we.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from torch_dedup.hashing._methods import resize_target

__all__ = ["decode_batch", "load_file", "prepare_pil"]

_LANCZOS = Image.Resampling.LANCZOS


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
    with Image.open(path) as im:
        width, height = im.size
        target = resize_target(method, hash_size, width, height)
        if fast_decode:
            im.draft("L", target)
        gray = im.convert("L")
    small = gray.resize(target, _LANCZOS)
    return np.asarray(small, dtype=np.uint8).copy()


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
