"""Dataset → hashes, computed once and then read from a sidecar (layer 3).

:func:`hash_dataset` is compute-or-load: it asks :func:`~torch_dedup.sources.source_of` how
to read the raw images and what the data's fingerprint is, looks for a sidecar made for
exactly that fingerprint and those settings, and otherwise hashes (arrays in vectorised
batches, files in a process pool) and writes one. A stale or corrupt sidecar is reported
with a WARNING, recomputed and rewritten — never used.

The pieces (:func:`hash_source_range`, :func:`sidecar_for`, :func:`load_cached`,
:func:`store_cached`) are public so that :mod:`torch_dedup.distributed_hashing` can hash one slice
per rank, gather, and let rank 0 write the sidecar. The keep decision is
:mod:`torch_dedup.planning`'s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._checks import check_int
from .errors import DedupError, ImageDecodeError
from .dataset_fits import with_fit
from .hashing import check_fit
from .hashing.api import HashResult, hash_array, hash_bits, hash_images
from .options import DedupOptions
from .sidecar import Sidecar, hash_environment, library_versions, load_or_none, sidecar_file, sidecar_name, write_sidecar
from .sources import ImageSource, source_of

__all__ = ["DatasetHashes", "HashLookup", "decode_mode", "hash_dataset", "hash_dataset_with", "hash_source_range",
           "load_cached", "look_up_hashes", "sidecar_for", "store_cached"]

logger = logging.getLogger(__name__)

_BATCH = 4096
_PROBES = 3  # items of an items source read twice to catch randomness (a random transform, a random image_fn)


@dataclass(frozen=True, eq=False)
class DatasetHashes:
    """The hashes of a dataset and where they came from.

    Attributes:
        hashes: ``uint64`` ``(N,)`` or ``(N, W)``; rows of items that failed to hash are 0.
        valid: ``bool`` ``(N,)``: False for items that could not be hashed (``on_error="skip"``).
        failures: ``(index, source, reason)`` of each item that could not be hashed.
        labels: ``int64`` ``(N,)`` labels of the dataset, or ``None``.
        fingerprint: the source fingerprint (``None``: the source has none, nothing was cached).
        meta: provenance: method, hash_size, decode, fingerprint, source, dataset, versions.
        sidecar_path: the sidecar read or written, or ``None`` when caching was off.
        from_cache: whether the hashes were read from the sidecar.
    """

    hashes: np.ndarray
    valid: np.ndarray
    failures: tuple = ()
    labels: np.ndarray | None = None
    fingerprint: str | None = None
    meta: dict = field(default_factory=dict)
    sidecar_path: Path | None = None
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.valid.shape[0])


def decode_mode(source: ImageSource, fast_decode: bool) -> str:
    """``"fast_decode"`` when JPEG draft decoding can change this source's bits, else ``"exact"``.

    Arrays are never decoded, so their hashes (and sidecar) are the same either way.
    """
    return "fast_decode" if fast_decode and source.kind != "array" else "exact"


def _expect(source: ImageSource, method: str, hash_size: int, decode: str, fit=None) -> dict:
    out = {"fingerprint": source.fingerprint, "method": method, "hash_size": int(hash_size), "decode": decode,
           "count": source.n, "hash_env": hash_environment()}
    if fit is not None:
        out["fit"] = fit.fingerprint
    return out


def sidecar_for(source: ImageSource, method: str = "phash", hash_size: int = 8, *, decode: str = "exact",
                cache_dir: str | os.PathLike | None | bool = None, fit=None) -> Path | None:
    """Where the sidecar of ``source`` with these settings lives, or ``None`` when it is not cached.

    Args:
        source: from :func:`~torch_dedup.sources.source_of`.
        method: hash method.
        hash_size: hash size.
        decode: ``"exact"`` or ``"fast_decode"`` (see :func:`decode_mode`).
        cache_dir: folder override; ``False`` disables caching; ``None``: ``<root>/.torch_dedup``
            when writable (for an ``ImageFolder``, whose sub-folders are all classes, a hidden
            file ``<root>/.torch_dedup-<name>`` instead), else ``$TORCH_DEDUP_CACHE``, else
            ``~/.cache/torch_dedup``.
        fit: the fit of a fitted method (``colour_dct``): codes of another fit are other
            codes, so its fingerprint is part of the name.

    Returns:
        The path, or ``None`` when caching is off or the source has no fingerprint.

    Example:
        >>> import numpy as np, torch
        >>> from torch_dedup.sources import source_of
        >>> ds = torch.utils.data.TensorDataset(torch.zeros(2))
        >>> sidecar_for(source_of(ds)) is None   # no cheap fingerprint: never cached
        True
    """
    if cache_dir is False or source.fingerprint is None:
        return None
    if cache_dir is True:
        cache_dir = None
    key = source.fingerprint if fit is None else f"{source.fingerprint}\0fit={fit.fingerprint}"
    return sidecar_file(sidecar_name(key, method, int(hash_size), decode), source.root, cache_dir,
                        class_folders=source.class_folders)


def load_cached(path: str | os.PathLike | None, source: ImageSource, method: str, hash_size: int,
                decode: str = "exact", fit=None) -> Sidecar | None:
    """The sidecar at ``path`` if it exists and was made for ``source`` and these settings, else ``None``.

    A corrupt or stale file logs a WARNING naming it and the reason (then the caller recomputes).
    """
    if path is None:
        return None
    return load_or_none(path, _expect(source, method, hash_size, decode, fit))


def store_cached(path: str | os.PathLike | None, result: HashResult, source: ImageSource, method: str,
                 hash_size: int, decode: str = "exact", fit=None) -> Path | None:
    """Write ``result`` as the sidecar of ``source``; a failure to write is a WARNING, not an error.

    Returns:
        The path written, or ``None`` (no path, or the write failed).
    """
    if path is None:
        return None
    extra = {"hash_env": hash_environment(), "source": source.description, "kind": source.kind}
    if fit is not None:
        extra["fit"] = fit.fingerprint
    try:
        return write_sidecar(path, np.asarray(result.hashes), np.asarray(result.valid), result.failures,
                             method=method, hash_size=int(hash_size), fingerprint=source.fingerprint,
                             decode=decode, extra=extra)
    except OSError as exc:
        logger.warning("could not write sidecar %s (%s); hashes will be recomputed next time. "
                       "Pass cache_dir= to a writable folder.", path, exc)
        return None


def _empty_hashes(method: str, hash_size: int, n: int = 0) -> np.ndarray:
    words = -(-int(hash_bits(method, hash_size)) // 64)
    return np.zeros((n,) if words == 1 else (n, words), dtype=np.uint64)



def _progress_bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm
    # a bar for under a thousand items would flash by; only long work gets one
    return tqdm(total=total, unit="img", desc=desc, disable=not progress or total < 1000, leave=False)


def _item_source(source: str, index: int | None) -> str:
    """An in-memory item's name with its dataset index (paths stay as they are)."""
    return f"item {index}" if index is not None and source.startswith("item ") else source


def _hash_one_by_one(images: list, items: np.ndarray, method: str, hash_size: int, on_error: str,
                     fast_decode: bool, fit=None) -> HashResult:
    """Hash ``images`` singly; ``items`` are their dataset indices (for errors). Failures use batch positions."""
    hashes = _empty_hashes(method, hash_size, len(images))
    valid = np.zeros(len(images), dtype=bool)
    failures = []
    for j, img in enumerate(images):
        i = int(items[j])
        try:
            one = hash_images([img], method, hash_size, on_error="raise", fast_decode=fast_decode, fit=fit)
        except (ImageDecodeError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"
            source = _item_source(exc.source, i) if isinstance(exc, ImageDecodeError) else f"item {i}"
            if on_error == "raise":
                raise ImageDecodeError(source, reason, i) from exc
            failures.append((j, source, reason))
            continue
        hashes[j] = one.hashes[0]
        valid[j] = True
    return HashResult(hashes=hashes, valid=valid, failures=tuple(failures), method=method, hash_size=int(hash_size))


def _check_repeatable(source: ImageSource, images: list, items: list[int], method: str, hash_size: int,
                      fit=None) -> None:
    """Read ``items`` a second time; an image that hashes differently means the reads are random.

    Raises:
        DedupError: an item's two reads differ (a random transform or ``image_fn``).
    """
    for img, i in zip(images, items):
        try:
            again = source.item(i)
            pair = hash_images([img, again], method, hash_size, on_error="raise", progress=False, fit=fit)
        except Exception:  # noqa: BLE001 - an unreadable item is reported by the hashing that follows
            continue
        first, second = np.asarray(pair.hashes)[0], np.asarray(pair.hashes)[1]
        if not np.array_equal(first, second):
            raise DedupError(
                f"{source.description}: item {i} read twice gave two different images, so something in the "
                f"dataset is random (a transform such as RandomCrop, or a random image_fn) and its hashes, and "
                f"which items are kept, would change on every run. Pass image_fn=lambda i: <the stored image of "
                f"item i>, or hash a copy of the dataset built without its random transforms.")


def _hash_items(source: ImageSource, start: int, stop: int, method: str, hash_size: int, on_error: str,
                workers: int, fast_decode: bool, progress: bool, batch_size: int, fit=None
                ) -> tuple[np.ndarray, np.ndarray, list]:
    hashes = _empty_hashes(method, hash_size, stop - start)
    valid = np.zeros(stop - start, dtype=bool)
    failures: list = []
    with _progress_bar(stop - start, progress, "hashing items") as bar:
        for b0 in range(start, stop, batch_size):
            b1 = min(stop, b0 + batch_size)
            images, where = [], []
            for i in range(b0, b1):
                try:
                    images.append(source.item(i))
                    where.append(i - start)
                except Exception as exc:  # noqa: BLE001 - any loader failure is this item's failure
                    if on_error == "raise":
                        raise ImageDecodeError(f"item {i}", f"{type(exc).__name__}: {exc}", i) from exc
                    failures.append((i, f"item {i}", f"{type(exc).__name__}: {exc}"))
            if images and b0 == start:
                _check_repeatable(source, images[:_PROBES], [start + w for w in where[:_PROBES]], method, hash_size,
                                  fit)
            if images:
                where = np.asarray(where, dtype=np.int64)
                try:
                    res = hash_images(images, method, hash_size, on_error=on_error, workers=workers,
                                      fast_decode=fast_decode, progress=False, fit=fit)
                except (ImageDecodeError, ValueError):
                    # Some item cannot be hashed (an unreadable image, an empty or odd array);
                    # redo this batch one by one so the failure is pinned to its item.
                    res = _hash_one_by_one(images, where + start, method, hash_size, on_error, fast_decode, fit)
                hashes[where] = res.hashes
                valid[where] = res.valid
                failures.extend((int(where[j]) + start, _item_source(src, int(where[j]) + start), why)
                                for j, src, why in res.failures)
            bar.update(b1 - b0)
    failures.sort(key=lambda f: f[0])
    return hashes, valid, failures


def hash_source_range(source: ImageSource, start: int = 0, stop: int | None = None, method: str = "phash",
                      hash_size: int = 8, *, on_error: str = "raise", workers: int | None = None,
                      fast_decode: bool = False, progress: bool = False, batch_size: int = _BATCH,
                      fit=None) -> HashResult:
    """Hash items ``start..stop-1`` of a source (one rank's share under DDP).

    Args:
        source: from :func:`~torch_dedup.sources.source_of`.
        start: first item.
        stop: one past the last item (default: the end).
        method: hash method.
        hash_size: hash size.
        on_error: ``"raise"`` (first undecodable image raises ``ImageDecodeError``) or
            ``"skip"`` (recorded in ``failures``, ``valid`` False).
        workers: decode processes for file sources (``None``: ``os.cpu_count()``, or 0 below
            2,048 files, where starting processes costs more than it saves); paths returned by
            ``image_fn`` use them only when given; arrays are hashed in this process.
        fast_decode: JPEG draft decoding for files (faster, changes some bits).
        progress: show a tqdm bar.
        batch_size: items per vectorised batch.
        fit: the fit of a fitted method (``colour_dct``), the same on every rank.

    Returns:
        A ``HashResult`` of ``stop - start`` rows whose ``failures`` carry *absolute* item
        indices (so per-rank results concatenate directly).

    Example:
        >>> import numpy as np, torch
        >>> from torch_dedup.sources import source_of
        >>> class Toy(torch.utils.data.Dataset):
        ...     data = np.zeros((10, 28, 28), np.uint8)
        ...     def __len__(self): return 10
        ...     def __getitem__(self, i): return self.data[i], 0
        >>> hash_source_range(source_of(Toy()), 2, 5).hashes.shape
        (3,)
    """
    stop = source.n if stop is None else stop
    if not 0 <= start <= stop <= source.n:
        raise ValueError(f"range [{start}, {stop}) must satisfy 0 <= start <= stop <= n={source.n}")
    DedupOptions(method=method, hash_size=hash_size, on_error=on_error, workers=workers, fit=fit)  # validates them
    check_fit(method, hash_size, fit)  # a fitted method must have its fit by now
    check_int("batch_size", batch_size, 1)
    failures: list = []
    if stop == start:
        hashes, valid = _empty_hashes(method, hash_size), np.zeros(0, bool)
    elif source.kind == "array":
        parts = []
        with _progress_bar(stop - start, progress, "hashing arrays") as bar:
            for b0 in range(start, stop, batch_size):
                b1 = min(stop, b0 + batch_size)
                parts.append(np.asarray(hash_array(source.array_batch(b0, b1), method, hash_size, fit=fit)))
                bar.update(b1 - b0)
        hashes, valid = np.concatenate(parts), np.ones(stop - start, dtype=bool)
    elif source.kind == "files":
        try:
            res = hash_images(source.paths(start, stop), method, hash_size, on_error=on_error,
                              # all cores by default: hash_images itself stays in this process below
                              # hashing.POOL_MIN_FILES files, the library's one pool threshold
                              workers=(os.cpu_count() or 1) if workers is None else int(workers),
                              fast_decode=fast_decode, progress=progress, batch_size=batch_size, fit=fit)
        except ImageDecodeError as exc:  # its index counts from start: make it the dataset's
            if exc.index is None or start == 0:
                raise
            raise ImageDecodeError(exc.source, exc.reason, exc.index + start) from exc
        hashes, valid = np.asarray(res.hashes), np.asarray(res.valid)
        failures = [(int(i) + start, s, r) for i, s, r in res.failures]
    else:
        # image_fn may return paths: decode them in workers only when asked to (pools cost seconds to start)
        hashes, valid, failures = _hash_items(source, start, stop, method, hash_size, on_error,
                                              0 if workers is None else int(workers), fast_decode, progress,
                                              batch_size, fit)
    return HashResult(hashes=hashes, valid=valid, failures=tuple(failures), method=method, hash_size=int(hash_size))


def hash_dataset(ds, method: str = "phash", hash_size: int = 8, *, image_fn: Callable[[int], Any] | None = None,
                 cache_dir: str | os.PathLike | None | bool = None, on_error: str = "raise",
                 workers: int | None = None, fast_decode: bool = False, progress: bool = True,
                 refresh: bool = False, fingerprint: str | None = None, fit=None) -> DatasetHashes:
    """Perceptual hashes of every item of a map-style dataset, computed once and then read from a sidecar.

    In one process; under DDP, :func:`torch_dedup.planning.plan_dataset` (and the sampler)
    hash once across the ranks instead (:mod:`torch_dedup.distributed_hashing`).

    Args:
        ds: the dataset (torchvision MNIST family/CIFAR/SVHN, ImageFolder, Subset, any
            dataset with ``image_fn``, or one whose ``ds[i][0]`` is the raw image).
        method: ``"phash"``, ``"dhash"``, ``"ahash"`` or ``"whash"``.
        hash_size: hash side (8 gives 64 bits).
        image_fn: ``image_fn(i) -> image`` giving the raw image of item ``i`` (see
            :func:`~torch_dedup.sources.source_of`).
        cache_dir: sidecar folder; ``None`` picks one (see :func:`sidecar_for`); ``False``: no cache.
        on_error: ``"raise"`` or ``"skip"`` undecodable images.
        workers: decode processes for file datasets (``None``: all cores, but in-process
            below ``hashing.POOL_MIN_FILES`` files).
        fast_decode: JPEG draft decoding (faster; changes some bits; cached separately).
        progress: tqdm bar while hashing.
        refresh: ignore an existing sidecar, recompute and rewrite it.
        fingerprint: a string identifying the data; needed to cache ``image_fn``/``ds[i]``
            datasets (they have no cheap automatic fingerprint), mixed in for the others.
        fit: for ``method="colour_dct"``: the fit to code with; ``None`` fits on ``ds`` once
            (stored beside its sidecars, :mod:`torch_dedup.dataset_fits`).

    Returns:
        A :class:`DatasetHashes`.

    Raises:
        ValueError: a bad option. TypeError: an ``IterableDataset`` (use ``torch_dedup.wds``).
        ImageDecodeError: an undecodable image with ``on_error="raise"``.

    Example:
        >>> import torchvision, torch_dedup.embedded as s, tempfile
        >>> root = tempfile.mkdtemp(); _ = s.materialize_fashion_mnist(root)  # doctest: +SKIP
        >>> ds = torchvision.datasets.FashionMNIST(root, train=False)  # doctest: +SKIP
        >>> h = hash_dataset(ds, progress=False)  # doctest: +SKIP
        >>> h.hashes.shape, h.from_cache  # doctest: +SKIP
        ((10000,), False)
    """
    options = DedupOptions(method=method, hash_size=hash_size, image_fn=image_fn, cache_dir=cache_dir,
                           on_error=on_error, workers=workers, fast_decode=fast_decode, progress=progress,
                           refresh=refresh, fingerprint=fingerprint, fit=fit)
    return hash_dataset_with(ds, options)


def _base_is_worth_hashing(view: ImageSource, base: ImageSource) -> bool:
    """Whether a view with no base sidecar yet should hash (and cache) its whole base.

    In-memory arrays hash near a million images a second, so their base always is; for files
    and items, when the view holds at least half the base (hashing the base costs at most
    twice as much, and every later view of it is then a free slice).
    """
    return base.kind == "array" or 2 * view.n >= base.n


@dataclass(frozen=True, eq=False)
class HashLookup:
    """Where the hashes of a dataset with given options live, and whether a valid sidecar holds them.

    For a view of a base dataset (a ``Subset``, ``random_split`` part, ``DedupDataset`` or a
    ``ConcatDataset`` of them), ``source`` is the *base*: its sidecar is read or written, and
    :meth:`from_sidecar`/:meth:`computed` slice out the view's items.

    Attributes:
        source: what is hashed and cached: the dataset's source, or its base's.
        decode: ``"exact"`` or ``"fast_decode"``.
        path: the sidecar's path, or ``None`` when not cached.
        meta: provenance the resulting :class:`DatasetHashes` carries.
        cached: the valid sidecar read, or ``None`` (missing, stale, corrupt, or refresh).
        view: the requested dataset's source when ``source`` is its base, else ``None``.
    """

    source: ImageSource
    decode: str
    path: Path | None
    meta: dict
    cached: Sidecar | None
    view: ImageSource | None = None

    def _hashes_for(self, hashes, valid, failures):
        """The requested dataset's rows, labels and fingerprint (a view's slice of its base's)."""
        if self.view is None:
            return np.asarray(hashes), np.asarray(valid), tuple(failures), self.source.labels, self.source.fingerprint
        idx = self.view.base_indices
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        mine = []
        for i, src, why in failures:  # a base item may appear at several positions of the view
            lo, hi = np.searchsorted(ordered, i, "left"), np.searchsorted(ordered, i, "right")
            mine.extend((int(pos), src, why) for pos in order[lo:hi].tolist())
        mine.sort(key=lambda f: f[0])
        return (np.asarray(hashes)[idx], np.asarray(valid)[idx], tuple(mine), self.view.labels,
                self.view.fingerprint)

    def from_sidecar(self, hashes, valid, failures, created, on_error: str) -> DatasetHashes:
        """The :class:`DatasetHashes` of a sidecar's arrays; raises on recorded failures under ``"raise"``.

        Raises:
            ImageDecodeError: the sidecar (of an ``on_error="skip"`` run) records failures of
                the requested items.
        """
        hashes, valid, failures, labels, fingerprint = self._hashes_for(hashes, valid, failures)
        if failures and on_error == "raise":
            i, src, why = failures[0]
            raise ImageDecodeError(src, f"{why} (recorded in sidecar {self.path})", i)
        return DatasetHashes(hashes, valid, failures, labels, fingerprint,
                             {**self.meta, "sidecar": str(self.path), "created": created}, self.path, True)

    def computed(self, result: HashResult, written: Path | None, on_error: str = "skip") -> DatasetHashes:
        """The :class:`DatasetHashes` of freshly computed hashes (``written``: the sidecar stored, if any).

        Raises:
            ImageDecodeError: with ``on_error="raise"``, a requested item failed to hash (a
                view's base is hashed with failures recorded, so that only the view's own
                items can fail it).
        """
        hashes, valid, failures, labels, fingerprint = self._hashes_for(result.hashes, result.valid,
                                                                        result.failures)
        if failures and on_error == "raise":
            i, src, why = failures[0]
            raise ImageDecodeError(src, why, i)
        meta = {**self.meta, "sidecar": None if written is None else str(written)}
        return DatasetHashes(hashes, valid, failures, labels, fingerprint, meta, written, False)


def look_up_hashes(ds, options: DedupOptions) -> HashLookup:
    """Find the sidecar of ``ds`` for ``options`` and read it when valid (no image is read).

    A view of a base dataset (``Subset``, ``random_split``, ``DedupDataset``, a
    ``ConcatDataset`` of parts of one dataset) uses its base's sidecar: read when valid, else
    the base is hashed and cached when that is worth it (:func:`_base_is_worth_hashing`);
    otherwise only the view's items are hashed and nothing is cached (an INFO line says how
    to cache them).

    Raises:
        TypeError: ``ds`` cannot be read as images (see :func:`~torch_dedup.sources.source_of`).
        ValueError: a fitted method without its fit (call :func:`~torch_dedup.dataset_fits.with_fit` first).
    """
    check_fit(options.method, options.hash_size, options.fit)
    source = source_of(ds, options.image_fn, fingerprint=options.fingerprint)
    decode = decode_mode(source, options.fast_decode)
    fit = options.fit
    meta = {"method": options.method, "hash_size": options.hash_size, "decode": decode,
            "fingerprint": source.fingerprint, "source": source.description, "dataset": type(ds).__name__,
            "n": source.n, "versions": library_versions()}
    if fit is not None:
        meta["fit"] = fit.fingerprint
    base = source.base
    if base is not None and base.fingerprint is not None and options.cache_dir is not False:
        path = sidecar_for(base, options.method, options.hash_size, decode=decode, cache_dir=options.cache_dir,
                           fit=fit)
        cached = None if options.refresh else load_cached(path, base, options.method, options.hash_size, decode,
                                                          fit)
        if cached is not None or _base_is_worth_hashing(source, base):
            return HashLookup(base, decode, path, {**meta, "base": base.description}, cached, view=source)
        logger.info("%s holds %d of the %d items of %s, which has no sidecar yet: hashing only those items, "
                    "uncached. Run hash_dataset on the whole dataset once to cache every subset of it.",
                    source.description, source.n, base.n, base.description)
        return HashLookup(source, decode, None, meta, None)
    path = sidecar_for(source, options.method, options.hash_size, decode=decode, cache_dir=options.cache_dir,
                       fit=fit)
    if path is None and options.cache_dir is not False:
        logger.info("%s has no cheap content fingerprint; its hashes are not cached. Pass fingerprint='...' "
                    "(a string that changes when the data does) to cache them.", source.description)
    cached = None if options.refresh else load_cached(path, source, options.method, options.hash_size, decode, fit)
    return HashLookup(source, decode, path, meta, cached)


def hash_dataset_with(ds, options: DedupOptions) -> DatasetHashes:
    """:func:`hash_dataset` with its settings as one :class:`~torch_dedup.options.DedupOptions` (in one process).

    Raises:
        As :func:`hash_dataset`.
    """
    options = with_fit(ds, options)  # a fitted method's fit first: the sidecar is keyed on it
    found = look_up_hashes(ds, options)
    if found.cached is not None:
        logger.debug("sidecar hit: %s", found.path)
        c = found.cached
        return found.from_sidecar(c.hashes, c.valid, c.failures, c.meta.get("created"), options.on_error)
    # a view's base is hashed with failures recorded: only the view's own items may fail it
    on_error = "skip" if found.view is not None else options.on_error
    res = hash_source_range(found.source, 0, found.source.n, options.method, options.hash_size,
                            on_error=on_error, workers=options.workers, fast_decode=options.fast_decode,
                            progress=options.progress, fit=options.fit)
    written = store_cached(found.path, res, found.source, options.method, options.hash_size, found.decode,
                           options.fit)
    return found.computed(res, written, options.on_error)
