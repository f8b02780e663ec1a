"""Hashing a dataset once across a ``torch.distributed`` process group (layer 3).

:func:`hash_dataset_distributed` is :func:`~torch_dedup.dataset_hashes.hash_dataset` as a
collective: if every rank can read a valid sidecar, each does; otherwise rank ``r`` hashes
the contiguous slice ``[r*N//W, (r+1)*N//W)``, the slices are all-gathered, rank 0 writes
the sidecar, and a barrier follows. Every rank then holds the same hashes, so the same
deterministic search gives every rank the identical plan
(:func:`torch_dedup.planning.plan_dataset` chooses this path by itself under DDP). A
failure on one rank (an undecodable image with ``on_error="raise"``, a dataset that cannot be
read, a sidecar that cannot be written) is raised as the same error on every rank instead of
leaving the others waiting; :func:`agree` does the same for a step each rank runs by itself.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.distributed as dist

from .dataset_fits import dataset_fit, fit_file_for, fit_source, load_fit, needs_fit
from .dataset_hashes import DatasetHashes, hash_source_range, look_up_hashes, store_cached
from .dataset_views import DatasetViews, look_up_views, store_views, view_codes_range
from .errors import DedupError, EmptyDedupError, ImageDecodeError
from .hashing import ColourDctFit
from .hashing.api import HashResult
from .options import DedupOptions

__all__ = ["agree", "cores_per_rank", "dataset_views_distributed", "hash_dataset_distributed",
           "hash_dataset_distributed_with", "is_distributed", "with_fit_distributed"]

logger = logging.getLogger(__name__)

def is_distributed(group=None) -> bool:
    """True when ``torch.distributed`` is initialised with more than one process (in ``group``)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


# -- hashing once across a process group ------------------------------------------------------

def _gather(obj, group) -> list:
    out: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _portable(exc: BaseException) -> tuple:
    """An exception as plain data: ours have custom constructors that pickle cannot replay."""
    if isinstance(exc, ImageDecodeError):
        return ("decode", exc.source, exc.reason, exc.index)
    return (type(exc).__name__, str(exc))


#: Exceptions rebuilt as their own type on every rank (one-message constructors); others become DedupError.
_REBUILT = {cls.__name__: cls for cls in (TypeError, ValueError, OSError, FileNotFoundError, PermissionError,
                                          RuntimeError, MemoryError, IndexError, EmptyDedupError, DedupError)}


def _rebuild(err: tuple, rank: int, what: str) -> Exception:
    if err[0] == "decode":
        return ImageDecodeError(err[1], f"{err[2]} (on rank {rank})", err[3])
    cls = _REBUILT.get(err[0])
    if cls is not None:
        return cls(f"{what} failed on rank {rank}: {err[1]}")
    return DedupError(f"{what} failed on rank {rank}: {err[0]}: {err[1]}")


def _raise_if_any_failed(errors: list, mine: BaseException | None, what: str) -> None:
    """Raise the same error on every rank when any rank failed, so no rank waits for a collective forever.

    Every rank raises the error of the lowest failing rank, rebuilt from plain data (the
    failing rank chains its original exception as the cause).
    """
    for r, err in enumerate(errors):
        if err is not None:
            raise _rebuild(err, r, what) from mine
    if mine is not None:  # not gathered (cannot happen when ``errors`` holds this rank's): never swallow it
        raise mine


def agree(fn: Callable[[], Any], what: str, group=None) -> Any:
    """Run ``fn()`` on every rank of ``group`` and raise the same error on every rank if it failed on any.

    A collective (one ``all_gather_object`` of a small tuple): call it on every rank for a
    step that runs on each rank by itself, such as the search and keep decision after the
    hashes are shared, so that a failure on one rank (out of memory, a ``priority=`` that
    raises) cannot leave the other ranks waiting in their next collective.

    Args:
        fn: the step, without arguments.
        what: what the step does, for the error message (``"planning"``).
        group: the process group (``None``: the default group).

    Returns:
        ``fn()``'s result on this rank.

    Raises:
        The lowest failing rank's error, on every rank (``ImageDecodeError`` and common
        built-in types keep their type; others become :class:`~torch_dedup.errors.DedupError`).

    Example:
        >>> plan = agree(lambda: plan_from_hashes(dh, 6), "planning")  # doctest: +SKIP
    """
    result, error = None, None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, never swallowed
        error = exc
    errors = _gather(None if error is None else _portable(error), group)
    _raise_if_any_failed(errors, error, what)
    return result


def cores_per_rank(group=None) -> int:
    """This node's CPUs divided among its ranks (``LOCAL_WORLD_SIZE`` from torchrun, else the group size).

    The default for threads or processes a rank starts by itself (hashing workers, search
    threads), so that the ranks of one node do not each start one per CPU.
    """
    local = os.environ.get("LOCAL_WORLD_SIZE")
    ranks_here = int(local) if local and local.isdigit() else dist.get_world_size(group)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, ranks_here))


def _default_workers(group) -> int:
    # One core's share is hashed in the rank's own process: a single worker process only adds its start-up.
    share = cores_per_rank(group)
    return share if share > 1 else 0


def hash_dataset_distributed(ds, method: str = "phash", hash_size: int = 8, *,
                             image_fn: Callable[[int], Any] | None = None,
                             cache_dir: str | os.PathLike | None | bool = None, on_error: str = "raise",
                             workers: int | None = None, fast_decode: bool = False, progress: bool = True,
                             refresh: bool = False, fingerprint: str | None = None,
                             group=None) -> DatasetHashes:
    """:func:`~torch_dedup.dataset_hashes.hash_dataset` for a process group: each item hashed once in the group.

    Must be called by every rank of ``group`` with the same arguments (a collective).
    Ranks that can read a valid sidecar use it; when none can, each rank hashes its
    contiguous slice, the slices are all-gathered, rank 0 writes the sidecar, and all
    ranks wait at a barrier. When only some ranks can read the sidecar (node-local
    disks), the first such rank broadcasts the hashes.

    Args:
        ds: the map-style dataset (the same data on every rank).
        method: hash method. hash_size: hash size.
        image_fn, cache_dir, on_error, fast_decode, progress, refresh, fingerprint: as in
            :func:`~torch_dedup.dataset_hashes.hash_dataset`.
        workers: decode processes per rank for file datasets (``None``: :func:`cores_per_rank`,
            this node's cores divided among its ranks; in the rank's own process when that is 1).
        group: the process group (``None``: the default group).

    Returns:
        A :class:`~torch_dedup.dataset_hashes.DatasetHashes`, identical on every rank.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialised.
        DedupError: ranks see different data (length or fingerprint), or hashing failed on a rank.
        ImageDecodeError: an undecodable image with ``on_error="raise"`` (on every rank).

    Example:
        >>> dist.init_process_group("gloo")  # doctest: +SKIP
        >>> h = hash_dataset_distributed(ds, progress=False)  # doctest: +SKIP
    """
    options = DedupOptions(method=method, hash_size=hash_size, image_fn=image_fn, cache_dir=cache_dir,
                           on_error=on_error, workers=workers, fast_decode=fast_decode, progress=progress,
                           refresh=refresh, fingerprint=fingerprint)
    return hash_dataset_distributed_with(ds, options, group)


def hash_dataset_distributed_with(ds, options: DedupOptions, group=None) -> DatasetHashes:
    """:func:`hash_dataset_distributed` with its settings as one :class:`~torch_dedup.options.DedupOptions`.

    A collective: every rank of ``group`` calls it with the same dataset and options.

    Raises:
        As :func:`hash_dataset_distributed`.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("hash_dataset_distributed needs torch.distributed initialised "
                           "(dist.init_process_group); use torch_dedup.hash_dataset in one process")
    options = with_fit_distributed(ds, options, group)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    t0 = time.perf_counter()
    found, error = None, None
    try:
        found = look_up_hashes(ds, options)
    except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, never swallowed
        error = exc
    info = None if found is None else (found.source.n, found.source.fingerprint,
                                       None if found.view is None else found.view.fingerprint,
                                       found.cached is not None)
    seen = _gather((info, None if error is None else _portable(error)), group)
    _raise_if_any_failed([e for _, e in seen], error, "reading the dataset")
    idents = [x[:3] for x, _ in seen]
    if len(set(idents)) != 1:
        raise DedupError(f"ranks see different datasets (length, fingerprint) per rank: {idents}; every rank "
                         f"must build the sampler over the same data")
    hits = [x[3] for x, _ in seen]
    source, cached = found.source, found.cached
    if any(hits):
        src = hits.index(True)
        if all(hits):
            arrays = (cached.hashes, cached.valid, tuple(cached.failures), cached.meta.get("created"))
        else:
            box = [(cached.hashes, cached.valid, tuple(cached.failures), cached.meta.get("created"))
                   if cached is not None and rank == src else None]
            dist.broadcast_object_list(box, src=dist.get_global_rank(group, src) if group is not None else src,
                                       group=group)
            arrays = box[0]
        logger.debug("rank %d: sidecar hit %s", rank, found.path)
        return found.from_sidecar(*arrays, on_error=options.on_error)

    start, stop = rank * source.n // world, (rank + 1) * source.n // world
    part = None
    try:
        # a view's base is hashed with failures recorded: only the view's own items may fail it
        on_error = "skip" if found.view is not None else options.on_error
        part = hash_source_range(source, start, stop, options.method, options.hash_size, on_error=on_error,
                                 workers=_default_workers(group) if options.workers is None else options.workers,
                                 fast_decode=options.fast_decode, progress=options.progress and rank == 0,
                                 fit=options.fit)
    except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, never swallowed
        error = exc
    parts = _gather((None, None, None, _portable(error)) if error is not None
                    else (part.hashes, part.valid, tuple(part.failures), None), group)
    _raise_if_any_failed([p[3] for p in parts], error, "hashing")
    hashes = np.concatenate([np.asarray(p[0]) for p in parts])
    valid = np.concatenate([np.asarray(p[1]) for p in parts])
    failures = tuple(f for p in parts for f in p[2])
    result = HashResult(hashes, valid, failures, options.method, options.hash_size)
    written, error = None, None
    if rank == 0:
        try:
            written = store_cached(found.path, result, source, options.method, options.hash_size, found.decode,
                                   options.fit)
        except Exception as exc:  # noqa: BLE001 - sent to every rank below, so none waits forever
            error = exc
    box = [(None if written is None else str(written), None if error is None else _portable(error))]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    _raise_if_any_failed([box[0][1]], error, "writing the sidecar")
    dist.barrier(group=group)
    logger.debug("rank %d hashed items [%d, %d) of %d in %.2f s", rank, start, stop, source.n,
                 time.perf_counter() - t0)
    return found.computed(result, None if box[0][0] is None else Path(box[0][0]), options.on_error)


def _root_src(group) -> int:
    return dist.get_global_rank(group, 0) if group is not None else 0


def with_fit_distributed(ds, options: DedupOptions, group=None) -> DedupOptions:
    """:func:`~torch_dedup.dataset_fits.with_fit` for a process group: one fit, the same on every rank.

    A collective (call it on every rank). When every rank reads the same valid fit file,
    each uses it; otherwise rank 0 reads or makes the fit (and stores it), and sends its
    arrays to the other ranks, who rebuild it (its fingerprint is checked on rebuild). A
    failure on rank 0 is raised on every rank. Unchanged options when no fit is needed.

    Raises:
        As :func:`~torch_dedup.dataset_fits.dataset_fit`, on every rank.
    """
    if not needs_fit(options):
        return options
    mine, error = None, None
    try:
        source = fit_source(ds, options)
        mine = None if options.refresh else load_fit(fit_file_for(source, options), source, options)
    except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, never swallowed
        error = exc
    seen = _gather((None if mine is None else mine.fingerprint, None if error is None else _portable(error)), group)
    _raise_if_any_failed([e for _, e in seen], error, "reading the fit")
    prints = {p for p, _ in seen}
    if None not in prints and len(prints) == 1:
        return options.replace(fit=mine)
    box: list = [None]
    if dist.get_rank(group) == 0:
        try:
            fit = dataset_fit(ds, options)
            box = [("fit", fit.to_arrays())]
        except Exception as exc:  # noqa: BLE001 - sent to every rank below, so none waits forever
            error = exc
            box = [("error", _portable(exc))]
    dist.broadcast_object_list(box, src=_root_src(group), group=group)
    kind, payload = box[0]
    if kind == "error":
        raise _rebuild(payload, 0, f"fitting {options.method}") from error
    arrays, meta = payload
    return options.replace(fit=ColourDctFit.from_arrays(arrays, meta))


def dataset_views_distributed(ds, options: DedupOptions, group=None) -> DatasetViews:
    """:func:`~torch_dedup.dataset_views.dataset_views` as a collective: each rank codes a share.

    Call it on every rank with the same dataset and options (the fit already shared). When
    every rank reads the same current view codes file, each does; otherwise rank ``r`` codes
    the views of items ``[r*N//W, (r+1)*N//W)``, the shares are all-gathered, rank 0 writes the
    file, and a barrier follows. Every rank returns the same codes. A failure on any rank (an
    unreadable item with ``on_error="raise"``, a file that cannot be written) is raised on
    every rank.

    Raises:
        As :func:`~torch_dedup.dataset_views.dataset_views`, on every rank; DedupError when
        the ranks see datasets of different lengths or fingerprints.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    source = path = found = error = None
    try:
        source, path, found = look_up_views(ds, options)
    except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, never swallowed
        error = exc
    info = None if source is None else (source.n, source.fingerprint, found is not None)
    seen = _gather((info, None if error is None else _portable(error)), group)
    _raise_if_any_failed([e for _, e in seen], error, "reading the view codes")
    idents = [x[:2] for x, _ in seen]
    if len(set(idents)) != 1:
        raise DedupError(f"ranks see different datasets (length, fingerprint) per rank: {idents}; every rank "
                         f"must plan over the same data")
    if all(x[2] for x, _ in seen):
        return found
    start, stop = rank * source.n // world, (rank + 1) * source.n // world
    part = None
    try:
        part = view_codes_range(source, options, start, stop, progress=options.progress and rank == 0)
    except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, never swallowed
        error = exc
    parts = _gather((None, None, None, _portable(error)) if error is not None else (*part, None), group)
    _raise_if_any_failed([p[3] for p in parts], error, "coding the views")
    codes = np.concatenate([p[0] for p in parts])
    valid = np.concatenate([p[1] for p in parts])
    failures = [f for p in parts for f in p[2]]
    result, error = None, None
    if rank == 0:
        try:
            result = store_views(path, source, options, codes, valid, failures)
        except Exception as exc:  # noqa: BLE001 - sent to every rank below, so none waits forever
            error = exc
    box = [(None if result is None or result.path is None else str(result.path),
            None if error is None else _portable(error))]
    dist.broadcast_object_list(box, src=_root_src(group), group=group)
    _raise_if_any_failed([box[0][1]], error, "writing the view codes")
    dist.barrier(group=group)
    return DatasetViews(codes, valid, tuple(failures), options.views,
                        None if box[0][0] is None else Path(box[0][0]), False)
