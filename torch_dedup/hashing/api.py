"""Public hashing API: images -> packed perceptual hashes, bit for bit equal to imagehash 4.3.

``hash_images`` accepts PIL images, file paths, ``uint8`` arrays and torch tensors (one by
one, or stacked) and returns a :class:`HashResult`; ``hash_array`` is the fast path for a
stacked ``uint8`` array. Every hash's hex string (:func:`to_hex`) equals
``str(imagehash.<method>(image, hash_size))`` (``ahash`` is ``imagehash.average_hash``).
See ``docs/hashing.md`` for the bit order and how exactness is guaranteed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from torch_dedup._checks import (FITTED_METHODS, HASH_METHODS, check_hash_size, check_int, check_method, check_on_error, method_bits,
                                 method_parts)
from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing._decode import hash_files, prepare_pil
from torch_dedup.hashing._fitted import check_fit, fitted_codes
from torch_dedup.hashing._inputs import (
    is_torch_tensor,
    tensor_to_numpy,
    to_channels_last,
    validate_stack,
)
from torch_dedup.hashing._pack import hex_to_words, pack_bits, packed_words, words_to_hex
from torch_dedup.hashing._stack import bits_from_resized, hash_stack
from torch_dedup.hashing._workers import FilePool

__all__ = ["METHODS", "POOL_MIN_FILES", "HashResult", "from_hex", "hash_array", "hash_bits", "hash_images", "to_hex"]

logger = logging.getLogger(__name__)

METHODS = HASH_METHODS


@dataclass(frozen=True, eq=False)
class HashResult:
    """Hashes of a batch of images.

    Attributes:
        hashes: ``uint64`` ``(N,)`` for hashes of up to 64 bits, else ``(N, W)`` with
            ``W = ceil(bits / 64)`` (hash size 16 -> ``(N, 4)``); failed rows are 0.
        valid: ``(N,)`` bool, False where an item failed and ``on_error="skip"``.
        failures: ``(index, source, reason)`` for every failed item, in input order.
        method: the hash method.
        hash_size: the hash size.
    """

    hashes: np.ndarray
    valid: np.ndarray
    failures: tuple
    method: str
    hash_size: int

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if dtype is not None and np.dtype(dtype) != self.hashes.dtype:
            return self.hashes.astype(dtype)
        return self.hashes.copy() if copy else self.hashes

    @property
    def bits(self) -> int:
        """Number of bits per hash."""
        return hash_bits(self.method, self.hash_size)


def hash_bits(method: str, hash_size: int) -> int:
    """Bits in one hash: ``hash_size ** 2`` for every method (64 for 8, 256 for 16), per
    part for a composite code (``"phash+dhash"`` at 8: 128).

    Example:
        >>> hash_bits("phash", 16), hash_bits("phash+dhash", 8)
        (256, 128)
    """
    _check_method(method, hash_size)
    return method_bits(method, hash_size)


def _words_of(method: str, hash_size: int) -> int:
    """Packed words of one hash: each part of a composite code fills whole words."""
    return len(method_parts(method)) * packed_words(hash_size * hash_size)


def to_hex(hashes, hash_size: int | None = None) -> list[str]:
    """Hex string of each hash, equal to ``str(imagehash.<method>(img, hash_size))``.

    Args:
        hashes: a :class:`HashResult`, or packed ``uint64`` ``(N,)``/``(N, W)``.
        hash_size: needed only for packed arrays whose bit count is not ``64 * W``
            (hash sizes other than 8 and 16); ignored for a :class:`HashResult`.

    Returns:
        One string per row.

    A composite code's :class:`HashResult` gives its parts' strings joined by ``+``
    (``str(imagehash.phash(img)) + "+" + str(imagehash.dhash(img))`` for ``"phash+dhash"``).

    Example:
        >>> to_hex(np.array([0xFF], dtype=np.uint64))
        ['00000000000000ff']
    """
    if isinstance(hashes, HashResult):
        k = len(method_parts(hashes.method))
        if k > 1:
            per = packed_words(hashes.hash_size * hashes.hash_size)
            cols = [words_to_hex(hashes.hashes[:, j * per:(j + 1) * per], hashes.hash_size ** 2) for j in range(k)]
            return ["+".join(row) for row in zip(*cols)]
        return words_to_hex(hashes.hashes, hashes.bits)
    bits = None if hash_size is None else _check_size(hash_size) ** 2
    return words_to_hex(np.asarray(hashes), bits)


def from_hex(hexes: Iterable[str], hash_size: int = 8) -> np.ndarray:
    """Parse imagehash hex strings into packed hashes (inverse of :func:`to_hex`).

    Args:
        hexes: hex strings, each of ``ceil(hash_size**2 / 4)`` digits; a composite code's
            strings join one such string per part with ``+`` (as :func:`to_hex` writes them).
        hash_size: the hash size they were made with.

    Returns:
        ``uint64`` ``(N,)`` for up to 64 bits, else ``(N, W)``.

    Raises:
        ValueError: a string of the wrong length or not hexadecimal.

    Example:
        >>> from_hex(["00000000000000ff"])
        array([255], dtype=uint64)
    """
    if isinstance(hexes, str):
        raise ValueError("hexes must be a sequence of strings, not one str; pass [hexes]")
    hexes = list(hexes)
    bits = _check_size(hash_size) ** 2
    split = [h.split("+") if isinstance(h, str) else [h] for h in hexes]
    k = {len(p) for p in split}
    if len(k) > 1:
        raise ValueError(f"hexes mix codes of {sorted(k)} parts; parse each kind of code on its own")
    if k and k.pop() > 1:
        if bits % 64:
            raise ValueError(f"composite codes need hash_size 8 or 16 (whole 64-bit words per part), got {hash_size}")
        words = np.concatenate([hex_to_words([p[j] for p in split], bits) for j in range(len(split[0]))], axis=1)
    else:
        words = hex_to_words(hexes, bits)
    return words[:, 0] if words.shape[1] == 1 else words


def hash_array(images: np.ndarray, method: str = "phash", hash_size: int = 8, *, fit=None) -> np.ndarray:
    """Hash a stacked ``uint8`` array of images (the fast, vectorised path).

    Args:
        images: ``uint8`` ``(N, H, W)`` grayscale, ``(N, H, W, 1)``, ``(N, H, W, 2)`` (LA),
            ``(N, H, W, 3)`` RGB or ``(N, H, W, 4)`` RGBA, as ``PIL.Image.fromarray`` reads them.
        method: ``"ahash"``, ``"dhash"``, ``"phash"`` or ``"whash"``, or a composite code
            such as ``"phash+dhash"`` (the parts' words side by side).
        hash_size: 8 (64-bit hashes) or 16 (256-bit); any size >= 2 imagehash supports.
        fit: for ``method="colour_dct"``, the :class:`~torch_dedup.hashing.ColourDctFit`
            whose space the codes live in (``hash_size**2`` bits); ``None`` for the others.

    Returns:
        Packed ``uint64`` hashes: ``(N,)`` for up to 64 bits, else ``(N, W)``.

    Raises:
        ValueError: unknown method, bad hash size, or wrong dtype/shape.

    Example:
        >>> from torch_dedup.embedded import load_sample
        >>> hashes = hash_array(load_sample(10)[0], "phash")
        >>> hashes.shape, hashes.dtype
        ((10,), dtype('uint64'))
    """
    _check_method(method, hash_size)
    check_fit(method, hash_size, fit)
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy ndarray, got {type(images).__name__}; use hash_images for other inputs")
    if method in FITTED_METHODS:
        return _shape_words(fitted_codes(validate_stack(images), method, hash_size, fit)[0])
    words = hash_stack(validate_stack(images), method, hash_size)
    return _shape_words(words)


def hash_images(
    images,
    method: str = "phash",
    hash_size: int = 8,
    *,
    on_error: str = "raise",
    workers: int = 0,
    fast_decode: bool = False,
    progress: bool = False,
    batch_size: int = 4096,
    fit=None,
) -> HashResult:
    """Perceptual hashes of many images, bit for bit equal to imagehash.

    Args:
        images: a sequence of PIL images, file paths (``str``/``Path``), ``uint8`` arrays
            (``HW``/``HWC``) or torch tensors (``CHW``/``HW``, ``uint8`` or float in [0, 1],
            converted like torchvision's ``to_pil_image``: ``pic.mul(255).byte()``); or one
            stacked ``uint8`` ndarray ``(N, H, W[, C])`` or tensor ``(N, C, H, W)``.
        method: ``"ahash"`` (imagehash.average_hash), ``"dhash"``, ``"phash"``, ``"whash"``,
            or a composite code such as ``"phash+dhash"``: each image is decoded once for
            all parts, the parts' words stand side by side (hash size 8 or 16), and the
            Hamming distance of two codes is the sum of the parts' distances.
        hash_size: 8 or 16 (any size >= 2; whash needs a power of two).
        on_error: ``"raise"`` raises :class:`~torch_dedup.errors.ImageDecodeError` on the
            first image that cannot be read; ``"skip"`` records it in ``failures``, sets
            ``valid`` False and leaves its hash 0.
        workers: decode files in this many worker processes (0: in this process), used
            from :data:`POOL_MIN_FILES` files on. The workers import numpy, Pillow and
            numba only (never torch or the caller's script) and end when this call
            returns. Results keep the input order.
        fast_decode: decode JPEGs with ``Image.draft`` (faster; some bits differ from
            imagehash, see docs/hashing.md).
        progress: show a tqdm progress bar.
        batch_size: items handled per step (bounds memory).
        fit: for ``method="colour_dct"`` (whitened colour DCT codes, not imagehash's),
            the :class:`~torch_dedup.hashing.ColourDctFit` made once on the dataset
            (:func:`~torch_dedup.hashing.fit_colour_dct_images`) and used for every set
            compared with it; its ``bits`` must be ``hash_size**2``. Files are decoded in
            this process for colour_dct (``workers`` and ``fast_decode`` do not apply).
            ``None`` for the other methods.

    Returns:
        A :class:`HashResult`.

    Raises:
        ValueError: bad arguments or an input of an unsupported type, dtype or shape.
        ImageDecodeError: an image could not be read and ``on_error="raise"``.

    Example:
        >>> from PIL import Image
        >>> result = hash_images([Image.new("RGB", (32, 32), "white")], "dhash")
        >>> to_hex(result)
        ['0000000000000000']
    """
    _check_method(method, hash_size)
    check_on_error(on_error)
    workers = check_int("workers", workers, 0, hint="0 decodes in this process")
    batch_size = check_int("batch_size", batch_size, 1)
    check_fit(method, hash_size, fit)
    if method in FITTED_METHODS:
        words, valid, failures = fitted_codes(images, method, hash_size, fit, on_error=on_error,
                                              progress=progress, batch_size=batch_size)
        return _result(words, valid, failures, method, hash_size)
    if isinstance(images, np.ndarray):
        words = hash_stack(validate_stack(images), method, hash_size, progress=progress)
        return _result(words, np.ones(len(words), bool), (), method, hash_size)
    if is_torch_tensor(images):
        arr = tensor_to_numpy(images, "images", stacked=True)
        words = hash_stack(validate_stack(arr), method, hash_size, progress=progress)
        return _result(words, np.ones(len(words), bool), (), method, hash_size)
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise ValueError(
            f"images must be a sequence of images or a stacked array, got a single "
            f"{type(images).__name__}; wrap it in a list: hash_images([image])"
        )
    return _hash_sequence(
        list(images), method, hash_size, on_error, workers, fast_decode, progress, batch_size
    )


# --------------------------------------------------------------------------- internals


def _check_size(hash_size) -> int:
    return check_hash_size(hash_size)


def _check_method(method: str, hash_size) -> None:
    check_hash_size(hash_size, check_method(method))


def _shape_words(words: np.ndarray) -> np.ndarray:
    return words[:, 0].copy() if words.shape[1] == 1 else words


def _result(words, valid, failures, method, hash_size) -> HashResult:
    return HashResult(_shape_words(words), valid, tuple(failures), method, int(hash_size))


#: Fewer image files than this are decoded in this process even when ``workers > 0``.
#: Measured (docs/hashing.md, ``benchmarks/bench_hashing.py --pool``): on the 2-core machine,
#: 2 workers never beat this process alone up to 32,000 CIFAR JPEGs (1.4-4x slower). Starting the worker
#: processes (each imports numpy, Pillow and numba, never torch) costs a fixed time that
#: they pay back only once the files they take off this process would have taken longer.
#: The one pool threshold of the library.
POOL_MIN_FILES = 32768


def _hash_sequence(items, method, hash_size, on_error, workers, fast_decode, progress, batch_size) -> HashResult:
    n = len(items)
    out = np.zeros((n, _words_of(method, hash_size)), dtype=np.uint64)
    valid = np.ones(n, dtype=bool)
    failures: list[tuple[int, str, str]] = []
    n_files = sum(isinstance(x, (str, os.PathLike)) for x in items) if workers > 0 else 0
    # The workers live exactly as long as this call: started here, ended on return, error or Ctrl-C.
    pool = _start_pool(workers, method, hash_size) if n_files >= POOL_MIN_FILES else None
    try:
        from tqdm.auto import tqdm

        with tqdm(total=n, disable=not progress, desc=f"{method} hashing", unit="img") as bar:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                _hash_chunk(items, start, stop, method, hash_size, on_error, fast_decode, pool, workers,
                            out, valid, failures)
                bar.update(stop - start)
    finally:
        if pool is not None:
            pool.close()
    return _result(out, valid, failures, method, hash_size)


def _start_pool(workers: int, method: str, hash_size: int) -> FilePool | None:
    """``workers`` started processes, or ``None`` (hash in this process) when none can be started here."""
    try:
        return FilePool(workers, method, hash_size).__enter__()
    except OSError as exc:  # no interpreter to start (frozen app), out of processes or memory
        logger.warning("could not start %d hashing worker processes (%s); hashing in this process instead. "
                       "Pass workers=0 to silence this.", workers, exc)
        return None


def _hash_chunk(items, start, stop, method, hash_size, on_error, fast_decode, pool, workers, out, valid, failures):
    chunk_failures: list[tuple[int, str, str]] = []
    parts = method_parts(method)
    small: dict[tuple[int, int], np.ndarray] = {}  # (index, part) -> resized pixels
    arrays: dict[tuple, list[int]] = {}  # raw-array shape -> indices (stacked fast path)
    raw: dict[int, np.ndarray] = {}
    paths: list[tuple[int, str]] = []
    for i in range(start, stop):
        item = items[i]
        if isinstance(item, (str, os.PathLike)):
            paths.append((i, os.fspath(item)))
        elif isinstance(item, Image.Image):
            try:
                # a PIL image is decoded once (its first load); each part converts and resizes it
                for k, p in enumerate(parts):
                    small[(i, k)] = prepare_pil(item, p, hash_size)
            except Exception as exc:  # a broken lazy image: report, don't crash the batch
                for k in range(len(parts)):
                    small.pop((i, k), None)
                chunk_failures.append((i, f"item {i}", f"{type(exc).__name__}: {exc}"))
        elif isinstance(item, np.ndarray) or is_torch_tensor(item):
            what = f"images[{i}]"
            arr = tensor_to_numpy(item, what, stacked=False) if is_torch_tensor(item) else to_channels_last(item, what)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            raw[i] = arr
            arrays.setdefault(arr.shape, []).append(i)
        else:
            raise ValueError(
                f"images[{i}] has unsupported type {type(item).__name__}; expected a PIL image, "
                f"a path (str/Path), a uint8 numpy array or a torch tensor"
            )
    if paths:
        sources = dict(paths)
        for index, words, reason in _decode_paths(paths, method, hash_size, fast_decode, pool, workers):
            if words is None:
                chunk_failures.append((index, sources[index], reason))
            else:
                out[index] = words
    if chunk_failures:
        chunk_failures.sort()
        if on_error == "raise":
            index, source, reason = chunk_failures[0]
            raise ImageDecodeError(source, reason, index)
        for index, _, _ in chunk_failures:
            valid[index] = False
        failures.extend(chunk_failures)
    for idx in arrays.values():
        stack = np.stack([raw[i] for i in idx])
        out[idx] = hash_stack(stack, method, hash_size)
    by_shape: dict[tuple, list[int]] = {}
    for (i, k), pixels in small.items():
        by_shape.setdefault((k, pixels.shape), []).append(i)
    per = packed_words(hash_size * hash_size)
    for (k, _), idx in by_shape.items():
        pixels = np.stack([small[(i, k)] for i in idx])
        out[idx, k * per:(k + 1) * per] = pack_bits(bits_from_resized(pixels, parts[k], hash_size))


def _decode_paths(paths, method, hash_size, fast_decode, pool, workers):
    if pool is None:
        return hash_files(paths, method, hash_size, fast_decode)
    per_task = max(1, min(256, -(-len(paths) // (4 * workers))))
    chunks = [paths[k:k + per_task] for k in range(0, len(paths), per_task)]
    results = []
    for chunk, got in zip(chunks, pool.hash_chunks(chunks, method, hash_size, fast_decode)):
        # None: its worker died (logged once by the pool); this process hashes the chunk instead
        results.extend(hash_files(chunk, method, hash_size, fast_decode) if got is None else got)
    return results
