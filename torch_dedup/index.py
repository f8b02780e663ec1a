"""Dataset → hashes (computed once, then read from a sidecar) → :class:`~torch_dedup.plan.DedupPlan`.

:func:`hash_dataset` is compute-or-load: it asks :func:`~torch_dedup.sources.source_of` how
to read the raw images and what the data's fingerprint is, looks for a sidecar made for
exactly that fingerprint and those settings, and otherwise hashes (arrays in vectorised
batches, files in a process pool) and writes one. A stale or corrupt sidecar is reported
with a WARNING, recomputed and rewritten — never used.

:func:`plan_dataset` adds the search and the keep decision. The pieces
(:func:`hash_source_range`, :func:`sidecar_for`, :func:`load_cached`, :func:`store_cached`)
are public so that distributed code can hash one slice per rank, gather, and let rank 0
write the sidecar.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ImageDecodeError
from .hamming.cluster import find_duplicates
from .hashing.api import METHODS, HashResult, hash_array, hash_bits, hash_images
from .plan import DedupPlan
from .sidecar import Sidecar, hash_environment, library_versions, load_or_none, sidecar_file, sidecar_name, write_sidecar
from .sources import ImageSource, labels_of, source_of

__all__ = ["DatasetHashes", "check_labels", "decode_mode", "hash_dataset", "hash_source_range", "load_cached",
           "plan_dataset", "plan_from_hashes", "sidecar_for", "store_cached"]

logger = logging.getLogger(__name__)

_ON_ERROR = ("raise", "skip")
_BATCH = 4096
_POOL_MIN_FILES = 2048  # below this, decoding in-process beats spawning a pool


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


def _check_settings(method: str, hash_size: int, on_error: str, workers) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not a hash method; use one of {tuple(METHODS)}")
    if isinstance(hash_size, bool) or not isinstance(hash_size, (int, np.integer)) or hash_size < 2:
        raise ValueError(f"hash_size={hash_size!r} must be an int >= 2 (8 gives 64-bit hashes)")
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error={on_error!r} must be one of {_ON_ERROR}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 0):
        raise ValueError(f"workers={workers!r} must be None (automatic) or an int >= 0 (0: in this process)")


def decode_mode(source: ImageSource, fast_decode: bool) -> str:
    """``"fast_decode"`` when JPEG draft decoding can change this source's bits, else ``"exact"``.

    Arrays are never decoded, so their hashes (and sidecar) are the same either way.
    """
    return "fast_decode" if fast_decode and source.kind != "array" else "exact"


def _expect(source: ImageSource, method: str, hash_size: int, decode: str) -> dict:
    return {"fingerprint": source.fingerprint, "method": method, "hash_size": int(hash_size), "decode": decode,
            "count": source.n, "hash_env": hash_environment()}


def sidecar_for(source: ImageSource, method: str = "phash", hash_size: int = 8, *, decode: str = "exact",
                cache_dir: str | os.PathLike | None | bool = None) -> Path | None:
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
    return sidecar_file(sidecar_name(source.fingerprint, method, int(hash_size), decode), source.root, cache_dir,
                        class_folders=source.class_folders)


def load_cached(path: str | os.PathLike | None, source: ImageSource, method: str, hash_size: int,
                decode: str = "exact") -> Sidecar | None:
    """The sidecar at ``path`` if it exists and was made for ``source`` and these settings, else ``None``.

    A corrupt or stale file logs a WARNING naming it and the reason (then the caller recomputes).
    """
    if path is None:
        return None
    return load_or_none(path, _expect(source, method, hash_size, decode))


def store_cached(path: str | os.PathLike | None, result: HashResult, source: ImageSource, method: str,
                 hash_size: int, decode: str = "exact") -> Path | None:
    """Write ``result`` as the sidecar of ``source``; a failure to write is a WARNING, not an error.

    Returns:
        The path written, or ``None`` (no path, or the write failed).
    """
    if path is None:
        return None
    extra = {"hash_env": hash_environment(), "source": source.description, "kind": source.kind}
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


def _auto_workers(n_files: int) -> int:
    """All cores for many files; none for a few, where starting worker processes costs more than it saves."""
    return 0 if n_files < _POOL_MIN_FILES else (os.cpu_count() or 1)


def _progress_bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm
    # a bar for under a thousand items would flash by; only long work gets one
    return tqdm(total=total, unit="img", desc=desc, disable=not progress or total < 1000, leave=False)


def _item_source(source: str, index: int | None) -> str:
    """An in-memory item's name with its dataset index (paths stay as they are)."""
    return f"item {index}" if index is not None and source.startswith("item ") else source


def _hash_one_by_one(images: list, items: np.ndarray, method: str, hash_size: int, on_error: str,
                     fast_decode: bool) -> HashResult:
    """Hash ``images`` singly; ``items`` are their dataset indices (for errors). Failures use batch positions."""
    hashes = _empty_hashes(method, hash_size, len(images))
    valid = np.zeros(len(images), dtype=bool)
    failures = []
    for j, img in enumerate(images):
        i = int(items[j])
        try:
            one = hash_images([img], method, hash_size, on_error="raise", fast_decode=fast_decode)
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


def _hash_items(source: ImageSource, start: int, stop: int, method: str, hash_size: int, on_error: str,
                workers: int, fast_decode: bool, progress: bool, batch_size: int
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
            if images:
                where = np.asarray(where, dtype=np.int64)
                try:
                    res = hash_images(images, method, hash_size, on_error=on_error, workers=workers,
                                      fast_decode=fast_decode, progress=False)
                except (ImageDecodeError, ValueError):
                    # Some item cannot be hashed (an unreadable image, an empty or odd array);
                    # redo this batch one by one so the failure is pinned to its item.
                    res = _hash_one_by_one(images, where + start, method, hash_size, on_error, fast_decode)
                hashes[where] = res.hashes
                valid[where] = res.valid
                failures.extend((int(where[j]) + start, _item_source(src, int(where[j]) + start), why)
                                for j, src, why in res.failures)
            bar.update(b1 - b0)
    failures.sort(key=lambda f: f[0])
    return hashes, valid, failures


def hash_source_range(source: ImageSource, start: int = 0, stop: int | None = None, method: str = "phash",
                      hash_size: int = 8, *, on_error: str = "raise", workers: int | None = None,
                      fast_decode: bool = False, progress: bool = False, batch_size: int = _BATCH) -> HashResult:
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
    _check_settings(method, hash_size, on_error, workers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    failures: list = []
    if stop == start:
        hashes, valid = _empty_hashes(method, hash_size), np.zeros(0, bool)
    elif source.kind == "array":
        parts = []
        with _progress_bar(stop - start, progress, "hashing arrays") as bar:
            for b0 in range(start, stop, batch_size):
                b1 = min(stop, b0 + batch_size)
                parts.append(np.asarray(hash_array(source.array_batch(b0, b1), method, hash_size)))
                bar.update(b1 - b0)
        hashes, valid = np.concatenate(parts), np.ones(stop - start, dtype=bool)
    elif source.kind == "files":
        try:
            res = hash_images(source.paths(start, stop), method, hash_size, on_error=on_error,
                              workers=_auto_workers(stop - start) if workers is None else int(workers),
                              fast_decode=fast_decode, progress=progress, batch_size=batch_size)
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
                                              batch_size)
    return HashResult(hashes=hashes, valid=valid, failures=tuple(failures), method=method, hash_size=int(hash_size))


def hash_dataset(ds, method: str = "phash", hash_size: int = 8, *, image_fn: Callable[[int], Any] | None = None,
                 cache_dir: str | os.PathLike | None | bool = None, on_error: str = "raise",
                 workers: int | None = None, fast_decode: bool = False, progress: bool = True,
                 refresh: bool = False, fingerprint: str | None = None) -> DatasetHashes:
    """Perceptual hashes of every item of a map-style dataset, computed once and then read from a sidecar.

    Args:
        ds: the dataset (torchvision MNIST family/CIFAR/SVHN, ImageFolder, Subset, any
            dataset with ``image_fn``, or one whose ``ds[i][0]`` is the raw image).
        method: ``"phash"``, ``"dhash"``, ``"ahash"`` or ``"whash"``.
        hash_size: hash side (8 gives 64 bits).
        image_fn: ``image_fn(i) -> image`` giving the raw image of item ``i`` (see
            :func:`~torch_dedup.sources.source_of`).
        cache_dir: sidecar folder; ``None`` picks one (see :func:`sidecar_for`); ``False``: no cache.
        on_error: ``"raise"`` or ``"skip"`` undecodable images.
        workers: decode processes for file datasets (``None``: all cores; 0 for small ones).
        fast_decode: JPEG draft decoding (faster; changes some bits; cached separately).
        progress: tqdm bar while hashing.
        refresh: ignore an existing sidecar, recompute and rewrite it.
        fingerprint: a string identifying the data; needed to cache ``image_fn``/``ds[i]``
            datasets (they have no cheap automatic fingerprint), mixed in for the others.

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
    _check_settings(method, hash_size, on_error, workers)
    source = source_of(ds, image_fn, fingerprint=fingerprint)
    decode = decode_mode(source, fast_decode)
    path = sidecar_for(source, method, hash_size, decode=decode, cache_dir=cache_dir)
    if path is None and cache_dir is not False:
        logger.info("%s has no cheap content fingerprint; its hashes are not cached. Pass fingerprint='...' "
                    "(a string that changes when the data does) to cache them.", source.description)
    meta = {"method": method, "hash_size": int(hash_size), "decode": decode, "fingerprint": source.fingerprint,
            "source": source.description, "dataset": type(ds).__name__, "n": source.n,
            "versions": library_versions()}
    cached = None if refresh else load_cached(path, source, method, hash_size, decode)
    if cached is not None:
        # The sidecar of an on_error="skip" run holds failures; "raise" must still raise on them.
        if cached.failures and on_error == "raise":
            i, src, why = cached.failures[0]
            raise ImageDecodeError(src, f"{why} (recorded in sidecar {cached.path})", i)
        logger.debug("sidecar hit: %s", path)
        return DatasetHashes(cached.hashes, cached.valid, cached.failures, source.labels, source.fingerprint,
                             {**meta, "sidecar": str(path), "created": cached.meta.get("created")}, path, True)
    res = hash_source_range(source, 0, source.n, method, hash_size, on_error=on_error, workers=workers,
                            fast_decode=fast_decode, progress=progress)
    written = store_cached(path, res, source, method, hash_size, decode)
    meta["sidecar"] = None if written is None else str(written)
    return DatasetHashes(np.asarray(res.hashes), np.asarray(res.valid), tuple(res.failures), source.labels,
                         source.fingerprint, meta, written, False)


def _hashes_of_against(against, method, hash_size, common: dict) -> tuple[np.ndarray, list]:
    """``against`` (hashes, DatasetHashes, dataset, or a list of them) → valid hashes, fingerprints."""
    items = list(against) if isinstance(against, (list, tuple)) else [against]
    parts, prints = [], []
    for item in items:
        if isinstance(item, np.ndarray):
            parts.append(item)
            prints.append(None)
            continue
        dh = item if isinstance(item, DatasetHashes) else hash_dataset(item, method, hash_size, **common)
        parts.append(dh.hashes[dh.valid])
        prints.append(dh.fingerprint)
    widths = {p.shape[1:] for p in parts}
    if len(widths) > 1:
        raise ValueError(f"against= holds hashes of different widths {sorted(widths)}; hash everything with "
                         f"the same method and hash_size")
    return np.concatenate(parts) if parts else _empty_hashes(method, hash_size), prints


def _priority_array(priority, n: int):
    if priority is None or not callable(priority):
        return priority
    return np.asarray([float(priority(i)) for i in range(n)], dtype=np.float64)


def plan_dataset(ds, threshold: int = 6, *, method: str = "phash", hash_size: int = 8, policy: str = "greedy",
                 per_class: bool = False, labels: Sequence[int] | np.ndarray | None = None, priority=None,
                 against=None, image_fn: Callable[[int], Any] | None = None,
                 cache_dir: str | os.PathLike | None | bool = None, on_error: str = "raise",
                 workers: int | None = None, progress: bool = True, sweep_max: int | None = None,
                 fast_decode: bool = False, fingerprint: str | None = None) -> DedupPlan:
    """Hash a dataset (or read its sidecar) and decide which items to keep.

    Args:
        ds: the dataset (see :func:`hash_dataset`).
        threshold: items within this Hamming distance are near-duplicates.
        method: hash method.
        hash_size: hash size.
        policy: ``"greedy"`` (no two kept items within the threshold) or ``"components"``.
        per_class: only items with the same label can be duplicates of each other.
        labels: per-item labels; default: the dataset's own (``targets``/``labels``/``samples``).
        priority: ``None`` (dataset order), an array of per-item scores, or ``priority(i) -> score``;
            higher scores are kept first.
        against: hashes, a :class:`DatasetHashes`, a dataset, or a list of these (hashed with the
            same method and size); items of ``ds`` near-duplicating any of them are removed.
        image_fn: raw image of item ``i`` (see :func:`~torch_dedup.sources.source_of`).
        cache_dir: sidecar folder (``False``: no cache).
        on_error: ``"raise"`` or ``"skip"``.
        workers: decode processes for file datasets.
        progress: tqdm bars.
        sweep_max: record the kept count for every threshold up to this one.
        fast_decode: JPEG draft decoding.
        fingerprint: identifies data for caching (see :func:`hash_dataset`).

    Returns:
        The :class:`~torch_dedup.plan.DedupPlan`; its provenance records the fingerprint,
        sidecar path, method, hash size and decode mode.

    Raises:
        ValueError: bad options, or ``per_class=True`` for a dataset without labels.

    Example:
        >>> import numpy as np, torch
        >>> from torch_dedup.embedded import load_sample
        >>> class Twice(torch.utils.data.Dataset):  # every image appears twice in a row
        ...     data = np.repeat(load_sample(4)[0], 2, axis=0)
        ...     def __len__(self): return 8
        ...     def __getitem__(self, i): return self.data[i], 0
        >>> plan = plan_dataset(Twice(), threshold=0, cache_dir=False, progress=False)
        >>> plan.kept_indices.tolist()
        [0, 2, 4, 6]
    """
    t0 = time.perf_counter()
    common = dict(cache_dir=cache_dir, on_error=on_error, workers=workers, fast_decode=fast_decode,
                  progress=progress)
    # Cheap checks first: a bad option should fail before minutes of hashing.
    _check_settings(method, hash_size, on_error, workers)
    labels = check_labels(labels if labels is not None else labels_of(ds), len(ds), per_class, type(ds).__name__)
    dh = hash_dataset(ds, method, hash_size, image_fn=image_fn, fingerprint=fingerprint, **common)
    against_hashes, against_prints = (None, [])
    if against is not None:
        against_hashes, against_prints = _hashes_of_against(against, method, hash_size, common)
    plan = plan_from_hashes(dh, threshold, policy=policy, per_class=per_class, labels=labels, priority=priority,
                            against=against_hashes, against_fingerprints=against_prints, sweep_max=sweep_max)
    # DEBUG, not INFO: consumers (DedupSampler, DedupDataset, the CLI) log the one INFO line.
    logger.debug("plan_dataset %s: %d -> %d items (%.1f%% kept), threshold %d, %s, %.2f s, sidecar %s",
                 type(ds).__name__, plan.n, plan.n_kept, 100.0 * plan.n_kept / max(plan.n, 1), threshold, policy,
                 time.perf_counter() - t0, "hit" if dh.from_cache else ("miss" if dh.sidecar_path else "off"))
    return plan


def check_labels(labels, n: int, per_class: bool, name: str = "the dataset") -> np.ndarray | None:
    """Validate per-item labels (``None`` allowed unless ``per_class``) and return them as int64."""
    if per_class and labels is None:
        raise ValueError(f"per_class=True but {name} has no targets/labels; pass labels= "
                         "(one int per item) or use per_class=False")
    if labels is None:
        return None
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape} but {name} has {n} items; pass one int label per item")
    return labels


def plan_from_hashes(dh: DatasetHashes, threshold: int = 6, *, policy: str = "greedy", per_class: bool = False,
                     labels=None, priority=None, against: np.ndarray | None = None,
                     against_fingerprints: Sequence[str | None] = (), sweep_max: int | None = None) -> DedupPlan:
    """Decide which items of an already hashed dataset to keep (the step after :func:`hash_dataset`).

    :func:`plan_dataset` and its distributed twin both end here, so the two cannot drift.

    Args:
        dh: the dataset's hashes.
        threshold, policy, per_class, priority, sweep_max: as in :func:`plan_dataset`.
        labels: per-item labels; ``None`` takes ``dh.labels``.
        against: hashes of other sets (already hashed with the same method and size).
        against_fingerprints: their fingerprints, recorded in the plan's provenance.

    Returns:
        The :class:`~torch_dedup.plan.DedupPlan`.

    Raises:
        ValueError: bad options.
    """
    n = len(dh)
    labels = check_labels(labels if labels is not None else dh.labels, n, per_class)
    provenance = {**dh.meta, "from_cache": dh.from_cache, "n_failures": len(dh.failures),
                  "against_fingerprints": list(against_fingerprints), "versions": library_versions()}
    settings = {"method": dh.meta["method"], "hash_size": int(dh.meta["hash_size"]), "decode": dh.meta["decode"]}
    return find_duplicates(dh.hashes, threshold, policy=policy, priority=_priority_array(priority, n),
                           labels=labels, per_class=per_class, against=against, valid=dh.valid,
                           sweep_max=sweep_max, provenance=provenance, settings=settings)
