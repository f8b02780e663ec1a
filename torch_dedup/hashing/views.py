"""Views of an image: shifted and cropped copies of it, and their colour DCT features.

A global code (one per image) moves when an image is shifted by a few pixels or cropped by
5-15 %, so such copies are missed at any threshold that does not also take unrelated images
(docs/hashing.md, "Why 1 % is stuck"). A *view* is a fixed geometric edit of an image: a shift
by a small fraction of its size (the uncovered strip filled with the edge pixels) or a centre
crop. A shifted or cropped copy of an image lies within a small distance of one of the
original's views, so comparing each item's views with the other items' own codes
(:mod:`torch_dedup.hamming.views`) finds copies that a single global code misses.

:data:`VIEW_SETS` names the sets of views, :data:`VIEWS_VERSION` their definitions (stored with
every cache; it changes whenever a view's pixels could change). :func:`image_views` and
:func:`stack_views` make the views of one image or of a stack, :func:`colour_dct_view_features`
their :func:`~torch_dedup.hashing.colour_dct.colour_dct_features`, bit for bit as if each view
were passed alone.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from torch_dedup._checks import check_bool, check_int, check_on_error
from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing._inputs import is_torch_tensor, tensor_to_numpy, validate_stack
from torch_dedup.hashing.colour_dct import (
    _ALONE_PIXELS,
    COLOUR_DCT_DIMS,
    _channels,
    _item_pixels,
    colour_dct_features,
)

__all__ = ["VIEWS_VERSION", "VIEW_SETS", "colour_dct_view_features", "image_views", "stack_views", "view_codes",
           "view_count"]

#: Names the view definitions of :data:`VIEW_SETS` (kinds, order, amounts, rounding, fill).
#: Stored with every cache of view codes; it changes whenever a view's pixels could change.
VIEWS_VERSION = "views/1"

#: Shift amount as a fraction of the side: 2 px on a 32x32 image, the size colour_dct codes at.
_SHIFT_FRACTION = 2 / 32
#: Side kept by the centre crop: 10 % of each side's length cut in total, 5 % per edge.
_CROP_KEEP = 0.9

#: View sets by name. A view is a tuple ``(kind, *parameters)``:
#: ``("shift", dx, dy, fraction)`` translates by ``(dx * sx, dy * sy)`` pixels with
#: ``sx = max(1, round(W * fraction))`` and ``sy = max(1, round(H * fraction))``, repeating the
#: edge pixels into the uncovered strip (positive ``dx`` moves the content right, positive
#: ``dy`` down); ``("crop", keep)`` keeps the centre ``round(keep * W) x round(keep * H)``
#: pixels, not resized.
#: ``"shift"``: the 8 shifts ``(dx, dy)`` in ``{-1, 0, 1}^2`` minus ``(0, 0)``, in this order
#: (dx, then dy, ascending), then the centre crop.
#: ``("rotate", degrees)`` turns the image about its centre (Pillow's ``rotate``, bicubic, the
#: same size, the corners filled with the image's mean colour, truncated to integers).
#: ``"shift+rotate"``: the 8 shifts by 3/32 of the side (3 px on 32x32), the centre crop, then
#: rotations by +4, -4, +8 and -8 degrees (13 views).
VIEW_SETS: dict[str, tuple] = {
    "shift": tuple(("shift", dx, dy, _SHIFT_FRACTION)
                   for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0))
             + (("crop", _CROP_KEEP),),
    "shift+rotate": tuple(("shift", dx, dy, 3 / 32)
                          for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0))
                    + (("crop", _CROP_KEEP), ("rotate", 4.0), ("rotate", -4.0), ("rotate", 8.0), ("rotate", -8.0)),
}


def _definitions(name: Any) -> tuple:
    if not isinstance(name, str) or name not in VIEW_SETS:
        valid = ", ".join(repr(k) for k in sorted(VIEW_SETS))
        raise ValueError(f"name={name!r} is not a view set; valid names: {valid}")
    return VIEW_SETS[name]


def view_count(name: str) -> int:
    """The number of views in the view set ``name``.

    Args:
        name: a key of :data:`VIEW_SETS`.

    Returns:
        How many views :func:`image_views` makes per image (9 for ``"shift"``).

    Raises:
        ValueError: ``name`` is not a view set; the message lists the valid names.

    Example:
        >>> view_count("shift")
        9
    """
    return len(_definitions(name))


def _one_view(stack: np.ndarray, view: tuple) -> np.ndarray:
    """View ``view`` of every image of a ``(N, H, W, C)`` stack, C-contiguous uint8."""
    h, w = stack.shape[1:3]
    kind = view[0]
    if kind == "shift":
        _, dx, dy, fraction = view
        sx = max(1, round(w * fraction))
        sy = max(1, round(h * fraction))
        # output pixel (y, x) is input (y - dy*sy, x - dx*sx) clamped to the image: exactly
        # an edge-padded translation, without materialising the padded copy
        rows = np.clip(np.arange(h) - dy * sy, 0, h - 1)
        cols = np.clip(np.arange(w) - dx * sx, 0, w - 1)
        return np.ascontiguousarray(stack[:, rows[:, None], cols[None, :]])
    if kind == "crop":
        keep = view[1]
        ch, cw = round(keep * h), round(keep * w)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return np.ascontiguousarray(stack[:, y0:y0 + ch, x0:x0 + cw])
    if kind == "rotate":
        out = np.empty_like(stack)
        for i in range(len(stack)):
            img = stack[i]
            fill = tuple(int(v) for v in img.reshape(-1, img.shape[2]).mean(axis=0))
            pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
            turned = pil.rotate(view[1], Image.Resampling.BICUBIC, fillcolor=fill[0] if len(fill) == 1 else fill)
            out[i] = np.asarray(turned).reshape(img.shape)
        return out
    raise ValueError(f"unknown view kind {kind!r} in {view!r}")  # only a broken VIEW_SETS gets here


def _check_pixels(arr: Any, what: str, ndim: int, shape: str) -> None:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{what} must be a numpy array {shape} uint8, got {type(arr).__name__}")  # noqa: TRY004 - as colour_dct
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} has dtype {arr.dtype}; expected uint8 {shape}. Convert it, "
                         f"e.g. (x * 255).round().astype(np.uint8).")
    if arr.ndim != ndim or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{what} has shape {arr.shape}; expected {shape} with C 1 (grey) or 3 (RGB). "
                         f"Add a channel axis to a grey image (x[..., None]) and drop alpha (x[..., :3]).")
    if 0 in arr.shape[ndim - 3:ndim - 1]:
        raise ValueError(f"{what} has an empty image shape {arr.shape}")


def image_views(pixels: np.ndarray, name: str = "shift") -> list[np.ndarray]:
    """The views of one image (:data:`VIEW_SETS`).

    Args:
        pixels: one image ``(H, W, C)`` uint8, C 1 (grey) or 3 (RGB).
        name: the view set, a key of :data:`VIEW_SETS`.

    Returns:
        ``view_count(name)`` C-contiguous uint8 arrays, in the set's order: for ``"shift"``
        the 8 shifted images (the input's shape) then the centre crop
        ``(round(0.9 H), round(0.9 W), C)``.

    Raises:
        ValueError: ``pixels`` is not a uint8 ``(H, W, C)`` array with C 1 or 3, or ``name``
            is not a view set.

    Example:
        >>> import numpy as np
        >>> views = image_views(np.zeros((32, 32, 3), np.uint8))
        >>> len(views), views[0].shape, views[-1].shape
        (9, (32, 32, 3), (29, 29, 3))
    """
    definitions = _definitions(name)
    _check_pixels(pixels, "pixels", 3, "(H, W, C)")
    one = pixels[None]
    return [_one_view(one, view)[0] for view in definitions]


def stack_views(stack: np.ndarray, name: str = "shift") -> list[np.ndarray]:
    """The views of every image of a stack; view ``k`` of image ``i`` is ``image_views(stack[i])[k]``.

    Args:
        stack: ``(N, H, W, C)`` uint8, C 1 (grey) or 3 (RGB).
        name: the view set, a key of :data:`VIEW_SETS`.

    Returns:
        ``view_count(name)`` C-contiguous uint8 stacks ``(N, h_k, w_k, C)``, one per view.

    Raises:
        ValueError: ``stack`` is not a uint8 ``(N, H, W, C)`` array with C 1 or 3, or
            ``name`` is not a view set.

    Example:
        >>> import numpy as np
        >>> [v.shape for v in stack_views(np.zeros((5, 20, 40, 1), np.uint8))][-2:]
        [(5, 20, 40, 1), (5, 18, 36, 1)]
    """
    definitions = _definitions(name)
    _check_pixels(stack, "stack", 4, "(N, H, W, C)")
    return [_one_view(stack, view) for view in definitions]


def _stack_view_rows(stack: np.ndarray, definitions: tuple, fn, out: np.ndarray) -> None:
    """``fn`` of each view stack of a ``(n, H, W, C)`` stack (C 1 or 3) into ``out`` ``(n, K, width)``.

    One view stack at a time: at most the stack and one of its views are held.
    """
    for k, view in enumerate(definitions):
        out[:, k] = np.asarray(fn(_one_view(stack, view))).reshape(len(stack), -1)


def colour_dct_view_features(images, name: str = "shift", *, on_error: str = "raise", progress: bool = False,
                             batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Colour DCT features of the views of each image.

    Row ``k`` of item ``i`` is, bit for bit, ``colour_dct_features([view_k])`` of view ``k`` of
    item ``i`` (:func:`image_views`). Each item's pixels are read once, the way
    :func:`~torch_dedup.hashing.colour_dct.colour_dct_features` reads them, at most
    ``batch_size`` items at a time.

    Args:
        images: what :func:`~torch_dedup.hashing.colour_dct.colour_dct_features` takes: a
            stacked uint8 array ``(N, H, W[, C])`` or tensor ``(N, C, H, W)``; or a sequence of
            file paths, PIL images, uint8 arrays or tensors.
        name: the view set, a key of :data:`VIEW_SETS`.
        on_error: ``"raise"``: an item that cannot be decoded raises; ``"skip"``: it is
            recorded in ``failures``, its ``valid`` is False and its rows are 0.
        progress: show a tqdm progress bar.
        batch_size: items read and featured together (bounds the pixels held at once).

    Returns:
        ``(features, valid, failures)``: ``float32`` ``(N, K, 133)`` with ``K =
        view_count(name)``, ``bool`` ``(N,)``, and a tuple of ``(index, source, reason)``
        for each skipped item.

    Raises:
        ValueError: an input of an unsupported type, dtype or shape, or a bad argument.
        ImageDecodeError: with ``on_error="raise"``, an item could not be decoded (its
            ``index`` is its position in ``images``).

    Example:
        >>> import numpy as np
        >>> feats, valid, failures = colour_dct_view_features(np.zeros((2, 32, 32, 3), np.uint8))
        >>> feats.shape, valid.tolist(), failures
        ((2, 9, 133), [True, True], ())
    """
    return _per_view(images, name, on_error, progress, batch_size, COLOUR_DCT_DIMS, np.float32,
                     colour_dct_features, "colour_dct view features", "colour_dct_view_features")


def view_codes(images, name: str = "shift", method: str = "phash", hash_size: int = 8, *, fit=None,
               on_error: str = "raise", progress: bool = False,
               batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The codes of the views of each image, with any method.

    Code ``k`` of item ``i`` is, bit for bit, ``hash_array(view_k, method, hash_size, fit=fit)``
    of view ``k`` of item ``i`` (:func:`image_views`; for ``colour_dct`` the same as
    ``fit.codes(colour_dct_view_features(...))``). Each item's pixels are read once, as
    :func:`colour_dct_view_features` reads them (RGB, or grey for grey modes).

    Args:
        images: as :func:`colour_dct_view_features`.
        name: the view set, a key of :data:`VIEW_SETS`.
        method, hash_size, fit: as :func:`~torch_dedup.hashing.hash_array`.
        on_error, progress, batch_size: as :func:`colour_dct_view_features`.

    Returns:
        ``(codes, valid, failures)``: ``uint64`` ``(N, K, W)`` (``W`` words per code; rows of
        skipped items 0), ``bool`` ``(N,)``, and ``(index, source, reason)`` per skipped item.

    Raises:
        ValueError: a bad argument or input.
        ImageDecodeError: with ``on_error="raise"``, an item could not be decoded.

    Example:
        >>> import numpy as np
        >>> codes, valid, _ = view_codes(np.zeros((2, 32, 32), np.uint8), "shift", "phash", 16)
        >>> codes.shape, codes.dtype
        ((2, 9, 4), dtype('uint64'))
    """
    from torch_dedup._checks import method_bits

    from .api import hash_array

    hash_array(np.zeros((1, 8, 8), np.uint8), method, hash_size, fit=fit)  # checks method, size and fit first
    words = -(-method_bits(method, hash_size) // 64)
    return _per_view(images, name, on_error, progress, batch_size, words, np.uint64,
                     lambda v: hash_array(v, method, hash_size, fit=fit), f"{method} view codes", "view_codes")


def _per_view(images, name, on_error, progress, batch_size, width, dtype, fn, desc, caller):
    """``(out (N, K, width), valid, failures)``: ``fn`` of every view stack of ``images``."""
    definitions = _definitions(name)
    check_on_error(on_error)
    check_bool("progress", progress)
    batch_size = check_int("batch_size", batch_size, 1)
    from tqdm.auto import tqdm

    k = len(definitions)
    if isinstance(images, np.ndarray) or is_torch_tensor(images):
        tensor = is_torch_tensor(images)
        if tensor:
            # checked on one item here, converted a batch at a time below: the whole stack
            # is never copied at once
            tensor_to_numpy(images[:1] if images.dim() == 4 else images, "images", stacked=True)
            n, shape = int(images.shape[0]), (int(images.shape[0]),) + tuple(int(d) for d in images.shape[2:4])
        else:
            validate_stack(images)
            n, shape = images.shape[0], images.shape
        if n and 0 in shape[1:3]:
            raise ValueError(f"images has an empty image shape {tuple(shape)}")
        feats = np.zeros((n, k, width), dtype=dtype)
        with tqdm(total=n, disable=not progress, desc=desc, unit="img") as bar:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                part = (tensor_to_numpy(images[start:stop], "images", stacked=True) if tensor
                        else images[start:stop])
                if part.ndim == 3:
                    part = part[..., None]
                _stack_view_rows(_channels(part), definitions, fn, feats[start:stop])
                bar.update(stop - start)
        return feats, np.ones(n, dtype=bool), ()
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise ValueError(f"images must be a sequence of images or a stacked array, got a single "  # noqa: TRY004 - as colour_dct
                         f"{type(images).__name__}; wrap it in a list: {caller}([image])")
    items = list(images)
    n = len(items)
    feats = np.zeros((n, k, width), dtype=dtype)
    valid = np.ones(n, dtype=bool)
    failures: list[tuple[int, str, str]] = []
    with tqdm(total=n, disable=not progress, desc=desc, unit="img") as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
            for i in range(start, stop):
                try:
                    pixels = _item_pixels(items[i], i)  # (H, W, 1) or (H, W, 3), read once
                except ImageDecodeError as exc:
                    if on_error == "raise":
                        raise
                    valid[i] = False
                    failures.append((i, exc.source, exc.reason))
                    continue
                if pixels.shape[0] * pixels.shape[1] >= _ALONE_PIXELS:
                    # a large image: its views coded at once, never held with a batch of others
                    _stack_view_rows(pixels[None], definitions, fn, feats[i:i + 1])
                    continue
                groups.setdefault(pixels.shape, []).append((i, pixels))
            while groups:  # one shape at a time, its items' pixels let go once stacked
                _, group = groups.popitem()
                idx = np.array([i for i, _ in group], dtype=np.int64)
                stack = np.stack([p for _, p in group])
                del group
                part = np.zeros((len(idx), k, width), dtype=dtype)
                _stack_view_rows(stack, definitions, fn, part)
                feats[idx] = part
                del stack
            bar.update(stop - start)
    return feats, valid, tuple(failures)
