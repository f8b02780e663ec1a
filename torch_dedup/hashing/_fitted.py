"""Codes of the fitted methods (``colour_dct``) from images, with the failure handling of ``hash_images``.

A fitted method's code is ``fit.codes(features(image))``: the features depend on the image
alone, the fit on the dataset it was made on (:mod:`torch_dedup.hashing.colour_dct_fit`). The
hashing API routes ``method="colour_dct"`` here; this module only adds what ``hash_images``
promises for every method: ``on_error`` (a failing item is pinned to its index, the others
are coded), ``valid`` and ``failures``, and one check that the fit matches the code length.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing._inputs import is_torch_tensor
from torch_dedup.hashing.colour_dct import COLOUR_DCT_DIMS, colour_dct_features
from torch_dedup.hashing.colour_dct_fit import ColourDctFit

__all__ = ["check_fit", "fitted_codes", "read_colour_dct_features"]


def check_fit(method: str, hash_size: int, fit: Any, *, required: bool = True) -> None:
    """``fit`` is a fit for ``method`` at ``hash_size`` (or ``None`` for the other methods).

    ``required=False``: a fitted method may go without a fit yet (the options of a dataset
    whose fit is made later, on the dataset).

    Raises:
        ValueError: a fitted method without a fit, a fit for another method, or a fit whose
            code length is not ``hash_size ** 2``.
    """
    if method != "colour_dct":
        if fit is not None:
            raise ValueError(f"fit= applies to method='colour_dct' only; method={method!r} hashes each image by "
                             f"itself. Drop fit=, or pass method='colour_dct'.")
        return
    if fit is None:
        if not required:
            return
        raise ValueError("method='colour_dct' needs fit=: its codes live in a space fitted to the data. Fit once on "
                         "a sample of the dataset, fit = torch_dedup.hashing.fit_colour_dct_images(images), and "
                         "pass the same fit for every set you compare; plan_dataset, DedupSampler and the CLI "
                         "fit on the dataset by themselves.")
    if not isinstance(fit, ColourDctFit):
        raise ValueError(f"fit={fit!r} must be a torch_dedup.hashing.ColourDctFit (from fit_colour_dct_images), "
                         f"got {type(fit).__name__}")
    if fit.bits != hash_size * hash_size:
        raise ValueError(f"fit= makes {fit.bits}-bit codes but hash_size={hash_size} asks for "
                         f"{hash_size * hash_size}; pass hash_size={int(round(fit.bits ** 0.5))} or a fit made "
                         f"with bits={hash_size * hash_size}")


def _one(item: Any, i: int) -> np.ndarray:
    """Features of item ``i`` alone, its errors naming it by its place in the input."""
    try:
        return colour_dct_features([item])[0]
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"item {i}" if exc.source == "item 0" else exc.source, exc.reason, i) from exc
    except ValueError as exc:  # a bad type, dtype or shape: an error in the input, as hash_images says it
        raise ValueError(str(exc).replace("images[0]", f"images[{i}]")) from exc


def read_colour_dct_features(images: Any, *, on_error: str = "raise", progress: bool = False, batch_size: int = 4096,
                  desc: str = "colour_dct features") -> tuple[np.ndarray, np.ndarray, tuple]:
    """``(features (N, D) float32, valid (N,) bool, failures)`` of ``images`` (colour DCT features).

    ``images`` is what :func:`~torch_dedup.hashing.hash_images` takes. A stacked array or
    tensor is read at once (it cannot fail item by item); a sequence in batches, and a
    batch that fails is redone item by item so that a failure is pinned to its index
    (``on_error="skip"``: recorded, its row 0; ``"raise"``: an ``ImageDecodeError``
    naming it). An input of a bad type, dtype or shape is a ``ValueError`` either way.
    """
    if isinstance(images, np.ndarray) or is_torch_tensor(images):
        feats = colour_dct_features(images, progress=progress)
        return feats, np.ones(len(feats), bool), ()
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise ValueError(f"images must be a sequence of images or a stacked array, got a single "
                         f"{type(images).__name__}; wrap it in a list: hash_images([image])")
    items = list(images)
    n = len(items)
    feats = np.zeros((n, COLOUR_DCT_DIMS), dtype=np.float32)
    valid = np.ones(n, dtype=bool)
    failures: list[tuple[int, str, str]] = []
    from tqdm.auto import tqdm

    with tqdm(total=n, disable=not progress, desc=desc, unit="img") as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            try:
                feats[start:stop] = colour_dct_features(items[start:stop])
            except (ImageDecodeError, ValueError):
                for i in range(start, stop):
                    try:
                        feats[i] = _one(items[i], i)
                    except ImageDecodeError as exc:
                        if on_error == "raise":
                            raise
                        valid[i] = False
                        failures.append((i, exc.source, exc.reason))
            bar.update(stop - start)
    return feats, valid, tuple(failures)


def fitted_codes(images: Any, method: str, hash_size: int, fit: ColourDctFit, *, on_error: str = "raise",
                 progress: bool = False, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``(words (N, W) uint64, valid (N,) bool, failures)`` of ``images`` coded with ``fit``
    (features by :func:`read_colour_dct_features`; rows of failed items are 0)."""
    check_fit(method, hash_size, fit)
    feats, valid, failures = read_colour_dct_features(images, on_error=on_error, progress=progress, batch_size=batch_size,
                                           desc=f"{method} features")
    words = fit.codes(feats).reshape(len(feats), -1)
    words[~valid] = 0
    return words, valid, failures
