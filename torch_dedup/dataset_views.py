"""A dataset's view codes: the codes of K views of every item, made once and cached (layer 3).

``plan_dataset(ds, method=M, views="shift")`` gives every item, besides its own code, the
codes of its views (shifted, cropped or rotated versions, :mod:`torch_dedup.hashing.views`)
with the same method (and, for ``colour_dct``, the dataset's fit), and plans with
:func:`~torch_dedup.hamming.views.find_duplicates_views`: a copy shifted by a few pixels or
cropped is near one of the original's views though far from its own code. The view codes are
stored in a checked file beside the sidecars, keyed on the source's fingerprint, the fit's
fingerprint, the view set and its version; a stale, corrupt or edited file is a WARNING and
a recomputation. :func:`dataset_views` codes in this process;
:func:`torch_dedup.distributed_hashing.dataset_views_distributed` is the same as a
``torch.distributed`` collective (a share per rank, one file).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._store import read_store_expecting, write_store
from .errors import ImageDecodeError, StoreError
from ._checks import method_bits
from .hashing.views import VIEWS_VERSION, view_codes, view_count
from .options import DedupOptions
from .sidecar import hash_environment, sidecar_file
from .sources import ImageSource, source_of

__all__ = ["VIEW_SUFFIX", "DatasetViews", "dataset_views", "look_up_views", "store_views", "view_codes_range",
           "view_file_for"]

logger = logging.getLogger(__name__)

VIEW_SUFFIX = ".tdviews"
_KIND = "view-codes"
_BATCH = 4096  # items whose view features are held at once (K x 133 float32 each)


@dataclass(frozen=True, eq=False)
class DatasetViews:
    """The view codes of a dataset.

    Attributes:
        codes: ``uint64`` ``(N, K, W)``: K view codes per item (rows of failed items are 0).
        valid: ``bool`` ``(N,)``: False where the item could not be read.
        failures: ``(index, source, reason)`` of each unreadable item.
        name: the view set (``"shift"``).
        path: the file read or written, or ``None`` when caching was off.
        from_cache: whether the codes were read from it.
    """

    codes: np.ndarray
    valid: np.ndarray
    failures: tuple
    name: str
    path: Path | None
    from_cache: bool


def view_file_for(source: ImageSource, options: DedupOptions) -> Path | None:
    """Where the view codes of ``source`` for ``options`` are stored (``None``: not cached)."""
    if options.cache_dir is False or source.fingerprint is None:
        return None
    key = "\0".join((source.fingerprint, options.method, str(options.hash_size), _fit_id(options),
                     str(options.views), VIEWS_VERSION))
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=10).hexdigest()
    name = f"{options.method}{options.hash_size}-{options.views}-views-{digest}{VIEW_SUFFIX}"
    cache_dir = None if options.cache_dir is True else options.cache_dir
    return sidecar_file(name, source.root, cache_dir, class_folders=source.class_folders)


def _fit_id(options: DedupOptions) -> str:
    return "none" if options.fit is None else options.fit.fingerprint


def _expect(source: ImageSource, options: DedupOptions) -> dict:
    return {"fingerprint": source.fingerprint, "method": options.method, "hash_size": options.hash_size,
            "fit": _fit_id(options), "views": options.views, "views_version": VIEWS_VERSION,
            "count": source.n, "hash_env": hash_environment()}


def _load(path: Path | None, source: ImageSource, options: DedupOptions) -> DatasetViews | None:
    if path is None or not Path(path).exists():
        return None
    try:
        meta, arrays = read_store_expecting(path, _KIND, _expect(source, options))
        codes, valid = arrays["codes"], arrays["valid"].astype(bool)
        words = -(-method_bits(options.method, options.hash_size) // 64)
        if codes.shape != (source.n, view_count(options.views), words) or valid.shape != (source.n,):
            raise StoreError(str(path), f"arrays of shape {codes.shape} / {valid.shape} do not fit {source.n} items")
        if meta.get("on_error") == "skip" and options.on_error == "raise" and not valid.all():
            return None  # made while skipping failures: a raise run must meet them itself
        failures = tuple((int(i), str(s), str(r)) for i, s, r in meta.get("failures", []))
    except (StoreError, KeyError, TypeError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        logger.warning("ignoring view codes file %s: %s; they will be computed again", path, reason)
        return None
    return DatasetViews(codes, valid, failures, options.views, Path(path), True)


def _items(source: ImageSource, start: int, stop: int, on_error: str, failures: list):
    """``(items, positions)`` of ``start..stop-1`` as the hashing reads them: a stacked array, paths, or
    ``image_fn`` results (an item whose reader raises is a failure, or raised with ``on_error="raise"``)."""
    if source.kind == "array":
        return source.array_batch(start, stop), np.arange(start, stop)
    if source.kind == "files":
        return list(source.paths(start, stop)), np.arange(start, stop)
    items, pos = [], []
    for i in range(start, stop):
        try:
            items.append(source.item(i))
        except Exception as exc:  # the user's reader: any error is this item's failure
            reason = f"{type(exc).__name__}: {exc}"
            if on_error == "raise":
                raise ImageDecodeError(f"item {i}", reason, i) from exc
            failures.append((i, f"item {i}", reason))
            continue
        pos.append(i)
    return items, np.array(pos, dtype=np.int64)


def _named(source: str, i: int, pos: np.ndarray) -> str:
    """An in-memory item's name by its place in the dataset, not in the batch (paths stay as they are)."""
    return f"item {int(pos[i])}" if source == f"item {i}" else source


def _check(options: DedupOptions) -> None:
    if options.views is None or (options.method == "colour_dct" and options.fit is None):
        raise ValueError("dataset_views needs options with views= (and for colour_dct the dataset's fit=, which "
                         "plan_dataset makes)")


def look_up_views(ds, options: DedupOptions) -> tuple[ImageSource, Path | None, DatasetViews | None]:
    """``(source, file, views)``: the dataset's source, its view codes file, and the codes read from it
    when current (``None``: compute them)."""
    _check(options)
    source = source_of(ds, options.image_fn, fingerprint=options.fingerprint)
    path = view_file_for(source, options)
    found = None if options.refresh else _load(path, source, options)
    if found is not None:
        logger.debug("view codes hit: %s", path)
    return source, path, found


def view_codes_range(source: ImageSource, options: DedupOptions, start: int, stop: int, progress: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, list]:
    """``(codes (stop-start, K, W), valid, failures)`` of items ``start..stop-1`` (failures by dataset index).

    Raises:
        ImageDecodeError: an unreadable item with ``on_error="raise"`` (named by its dataset index).
    """
    k = view_count(options.views)
    words = -(-method_bits(options.method, options.hash_size) // 64)
    codes = np.zeros((stop - start, k, words), np.uint64)
    valid = np.zeros(stop - start, bool)
    failures: list = []
    from tqdm.auto import tqdm

    bar = tqdm(total=stop - start, disable=not progress, unit="img", desc=f"{options.method} {options.views} views")
    with bar:
        for b0 in range(start, stop, _BATCH):
            b1 = min(stop, b0 + _BATCH)
            items, pos = _items(source, b0, b1, options.on_error, failures)
            if len(pos):
                try:
                    got, ok, fails = view_codes(items, options.views, options.method, options.hash_size,
                                                fit=options.fit, on_error=options.on_error)
                except ImageDecodeError as exc:  # its index counts in this batch: make it the dataset's
                    if exc.index is None:
                        raise
                    raise ImageDecodeError(_named(exc.source, exc.index, pos), exc.reason,
                                           int(pos[exc.index])) from exc
                codes[pos - start] = got
                valid[pos - start] = ok
                failures += [(int(pos[i]), _named(s, i, pos), r) for i, s, r in fails]
            bar.update(b1 - b0)
    failures.sort(key=lambda f: f[0])
    return codes, valid, failures


def store_views(path: Path | None, source: ImageSource, options: DedupOptions, codes: np.ndarray,
                valid: np.ndarray, failures: list) -> DatasetViews:
    """Write the view codes file (a WARNING when it cannot be written) and return the codes."""
    written = None
    if path is not None:
        meta = {**_expect(source, options), "on_error": options.on_error, "source": source.description,
                "failures": [list(f) for f in failures]}
        try:
            written = write_store(path, _KIND, meta, {"codes": codes, "valid": valid.astype(np.uint8)})
        except OSError as exc:
            logger.warning("could not write view codes file %s (%s); they will be computed again next time. "
                           "Pass cache_dir= to a writable folder.", path, exc)
    logger.debug("view codes of %s: %d items x %d views, %d failed, stored in %s", source.description, source.n,
                 codes.shape[1], len(failures), written)
    return DatasetViews(codes, valid, tuple(failures), options.views, written, False)


def dataset_views(ds, options: DedupOptions) -> DatasetViews:
    """The view codes of ``ds`` for ``options`` (``views`` set, ``fit`` made): read from the file, or made.

    In this process; :func:`torch_dedup.distributed_hashing.dataset_views_distributed` is the
    same as a ``torch.distributed`` collective (each rank codes a share).

    Args:
        ds: the map-style dataset.
        options: ``views`` set, the method (``colour_dct`` with its ``fit`` made); ``cache_dir``,
            ``refresh``, ``on_error``, ``image_fn``, ``fingerprint``, ``progress`` as for hashing.

    Returns:
        :class:`DatasetViews`.

    Raises:
        ImageDecodeError: an unreadable item with ``on_error="raise"``.
        ValueError: ``options`` without ``views`` or without a fit.
    """
    source, path, found = look_up_views(ds, options)
    if found is not None:
        return found
    codes, valid, failures = view_codes_range(source, options, 0, source.n,
                                              progress=options.progress and source.n >= 1000)
    return store_views(path, source, options, codes, valid, failures)
