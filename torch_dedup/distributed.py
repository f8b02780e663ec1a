"""Getting a dataset's DedupPlan for a torch consumer, once per process group.

:func:`resolve_plan` is the one place where :class:`~torch_dedup.sampler.DedupSampler`
and :class:`~torch_dedup.dataset.DedupDataset` turn their options into a plan: it refuses
datasets that cannot be planned, loads a saved plan (checking it was made for this
dataset) or computes one, and logs one INFO line.

Under DDP (``torch.distributed`` initialised with more than one process) the hashes are
computed once for the whole group by :func:`hash_dataset_distributed`: if every rank can
read a valid sidecar, each does; otherwise rank ``r`` hashes the contiguous slice
``[r*N//W, (r+1)*N//W)``, the slices are all-gathered, rank 0 writes the sidecar, and a
barrier follows. Every rank then runs the same deterministic search on the same hashes,
so all ranks hold the identical plan. A failure on one rank (an undecodable image with
``on_error="raise"``) is raised on every rank instead of leaving the others waiting.

Layer 4 (torch.distributed).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch.distributed as dist

from .errors import DedupError, EmptyDedupError, ImageDecodeError
from .hashing.api import METHODS, HashResult, hash_bits
from .index import DatasetHashes, check_labels, decode_mode, hash_source_range, load_cached, plan_dataset, \
    plan_from_hashes, sidecar_for, store_cached
from .plan import DedupPlan
from .sidecar import library_versions
from .sources import source_of

__all__ = ["PlanOptions", "ResolvedPlan", "hash_dataset_distributed", "is_distributed",
           "plan_dataset_distributed", "resolve_plan"]

logger = logging.getLogger(__name__)

_POLICIES = ("greedy", "components")


def is_distributed(group=None) -> bool:
    """True when ``torch.distributed`` is initialised with more than one process (in ``group``)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


@dataclass(frozen=True)
class PlanOptions:
    """The dedup options a consumer takes, checked before any hashing starts.

    The fields are those of :func:`~torch_dedup.index.plan_dataset` (see there).

    Raises:
        ValueError: ``threshold`` out of ``[0, hash bits]``, unknown ``policy`` or ``method``,
            a bad ``hash_size`` or ``on_error``.
    """

    threshold: int = 6
    method: str = "phash"
    hash_size: int = 8
    policy: str = "greedy"
    per_class: bool = False
    labels: Any = None
    priority: Any = None
    against: Any = None
    image_fn: Callable[[int], Any] | None = None
    cache_dir: str | os.PathLike | None | bool = None
    on_error: str = "raise"
    progress: bool = True
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not a hash method; use one of {tuple(METHODS)}")
        if isinstance(self.hash_size, bool) or not isinstance(self.hash_size, (int, np.integer)) \
                or self.hash_size < 2:
            raise ValueError(f"hash_size={self.hash_size!r} must be an int >= 2 (8 gives 64-bit hashes)")
        bits = int(hash_bits(self.method, int(self.hash_size)))
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, np.integer)) \
                or not 0 <= self.threshold <= bits:
            raise ValueError(f"threshold={self.threshold!r} must be an int in [0, {bits}] for {bits}-bit "
                             f"{self.method} hashes (the paper's useful range is about 0..12)")
        if self.policy not in _POLICIES:
            raise ValueError(f"policy={self.policy!r} must be one of {_POLICIES}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={self.on_error!r} must be 'raise' or 'skip'")
        if self.fingerprint is not None and not isinstance(self.fingerprint, str):
            raise ValueError(f"fingerprint={self.fingerprint!r} must be a string that changes whenever the data does")
        if self.image_fn is not None and not callable(self.image_fn):
            raise ValueError(f"image_fn={self.image_fn!r} must be a callable image_fn(i) -> raw image of item i")

    def plan_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`~torch_dedup.index.plan_dataset`."""
        # not dataclasses.asdict: it deep-copies values, and against= may be a whole dataset
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ResolvedPlan:
    """A plan and how it was obtained.

    Attributes:
        plan: the :class:`~torch_dedup.plan.DedupPlan`.
        how: ``"given"``, ``"loaded"`` (from a plan file), ``"sidecar"`` (hashes read from
            a sidecar) or ``"computed"`` (hashes computed now).
        seconds: wall time spent obtaining it.
    """

    plan: DedupPlan
    how: str
    seconds: float


def _check_dataset(ds, owner: str) -> int:
    from torch.utils.data import IterableDataset
    if isinstance(ds, IterableDataset):
        raise TypeError(
            f"{owner} needs a map-style dataset, but {type(ds).__name__} is an IterableDataset (a stream "
            f"has no length or random access to sample from). Deduplicate streams with the webdataset "
            f"filter torch_dedup.wds, or wrap the data in a map-style Dataset.")
    try:
        n = len(ds)
    except TypeError:
        raise TypeError(
            f"{owner} needs a map-style dataset with __len__ and __getitem__; {type(ds).__name__} has no "
            f"__len__. For streams use the webdataset filter torch_dedup.wds.") from None
    if n == 0:
        raise EmptyDedupError(f"{owner}: {type(ds).__name__} is empty (len 0); there is nothing to sample.")
    return n


def _given_plan(ds, n: int, plan, options: PlanOptions) -> tuple[DedupPlan, str]:
    if isinstance(plan, (str, os.PathLike)):
        plan, how = DedupPlan.load(plan), "loaded"
    elif isinstance(plan, DedupPlan):
        how = "given"
    else:
        raise TypeError(f"plan={plan!r} must be a DedupPlan or the path of a saved one (DedupPlan.save), "
                        f"got {type(plan).__name__}")
    # Only the fingerprint is read here (cheap: a digest of arrays or of file stats), no image.
    try:
        fingerprint = source_of(ds, options.image_fn, fingerprint=options.fingerprint).fingerprint
    except (TypeError, ValueError) as exc:
        logger.debug("no fingerprint for %s (%s); checking the plan by length only", type(ds).__name__, exc)
        fingerprint = None
    plan.check_compatible(n, fingerprint)
    return plan, how


def resolve_plan(ds, options: PlanOptions, *, plan=None, owner: str = "DedupSampler") -> ResolvedPlan:
    """Obtain the plan a consumer follows: the given one (checked) or a new one (DDP-aware).

    Args:
        ds: the map-style dataset.
        options: the dedup options (ignored for hashing when ``plan`` is given).
        plan: ``None`` (compute), a :class:`~torch_dedup.plan.DedupPlan`, or a saved plan's path.
        owner: the consumer's name, for messages.

    Returns:
        A :class:`ResolvedPlan`.

    Raises:
        TypeError: ``ds`` is an ``IterableDataset``, has no ``__len__``, or ``plan`` is of a bad type.
        EmptyDedupError: ``ds`` is empty, or the plan keeps nothing.
        PlanError: the plan was made for another dataset, or its file is unusable.

    Example:
        >>> resolved = resolve_plan(ds, PlanOptions(threshold=4))  # doctest: +SKIP
        >>> resolved.plan.n_kept, resolved.how  # doctest: +SKIP
    """
    n = _check_dataset(ds, owner)
    t0 = time.perf_counter()
    if plan is not None:
        plan, how = _given_plan(ds, n, plan, options)
    elif is_distributed():
        plan = plan_dataset_distributed(ds, **options.plan_kwargs())
        how = "sidecar" if plan.provenance.get("from_cache") else "computed"
    else:
        plan = plan_dataset(ds, **options.plan_kwargs())
        how = "sidecar" if plan.provenance.get("from_cache") else "computed"
    seconds = time.perf_counter() - t0
    if plan.n_kept == 0:
        raise EmptyDedupError(
            f"{owner}: the plan keeps none of the {plan.n} items of {type(ds).__name__} ("
            f"{int(np.count_nonzero(plan.failed))} failed to hash, {int(np.count_nonzero(plan.leaked))} leaked "
            f"into against=); fix the failing images, or loosen against= / the threshold (now {plan.threshold}).")
    sidecar = {"sidecar": "sidecar hit", "computed": "sidecar miss" if plan.provenance.get("sidecar")
               else "no sidecar", "loaded": "plan file", "given": "plan given"}[how]
    logger.info("%s: %s %d -> %d items kept (%.1f%% removed), threshold %d, %s, %.2f s, %s",
                owner, type(ds).__name__, plan.n, plan.n_kept, 100.0 * plan.ratio, plan.threshold,
                plan.policy, seconds, sidecar)
    return ResolvedPlan(plan, how, seconds)


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


def _raise_if_any_failed(errors: list, mine: BaseException | None, what: str) -> None:
    """Raise on every rank when any rank failed, so no rank waits for a collective forever."""
    if mine is not None:
        raise mine
    for r, err in enumerate(errors):
        if err is None:
            continue
        if err[0] == "decode":
            raise ImageDecodeError(err[1], f"{err[2]} (on rank {r})", err[3])
        raise DedupError(f"{what} failed on rank {r}: {err[0]}: {err[1]}")


def _default_workers(group) -> int:
    # Ranks on one node share its cores; torchrun says how many ranks that is.
    local = os.environ.get("LOCAL_WORLD_SIZE")
    ranks_here = int(local) if local and local.isdigit() else dist.get_world_size(group)
    return max(1, (os.cpu_count() or 1) // max(1, ranks_here))


def hash_dataset_distributed(ds, method: str = "phash", hash_size: int = 8, *,
                             image_fn: Callable[[int], Any] | None = None,
                             cache_dir: str | os.PathLike | None | bool = None, on_error: str = "raise",
                             workers: int | None = None, fast_decode: bool = False, progress: bool = True,
                             refresh: bool = False, fingerprint: str | None = None,
                             group=None) -> DatasetHashes:
    """:func:`~torch_dedup.index.hash_dataset` for a process group: each item hashed once in the group.

    Must be called by every rank of ``group`` with the same arguments (a collective).
    Ranks that can read a valid sidecar use it; when none can, each rank hashes its
    contiguous slice, the slices are all-gathered, rank 0 writes the sidecar, and all
    ranks wait at a barrier. When only some ranks can read the sidecar (node-local
    disks), the first such rank broadcasts the hashes.

    Args:
        ds: the map-style dataset (the same data on every rank).
        method: hash method. hash_size: hash size.
        image_fn, cache_dir, on_error, fast_decode, progress, refresh, fingerprint: as in
            :func:`~torch_dedup.index.hash_dataset`.
        workers: decode processes per rank for file datasets (``None``: this node's cores
            divided among its ranks, from ``LOCAL_WORLD_SIZE``).
        group: the process group (``None``: the default group).

    Returns:
        A :class:`~torch_dedup.index.DatasetHashes`, identical on every rank.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialised.
        DedupError: ranks see different data (length or fingerprint), or hashing failed on a rank.
        ImageDecodeError: an undecodable image with ``on_error="raise"`` (on every rank).

    Example:
        >>> dist.init_process_group("gloo")  # doctest: +SKIP
        >>> h = hash_dataset_distributed(ds, progress=False)  # doctest: +SKIP
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("hash_dataset_distributed needs torch.distributed initialised "
                           "(dist.init_process_group); use torch_dedup.index.hash_dataset in one process")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    t0 = time.perf_counter()
    source = source_of(ds, image_fn, fingerprint=fingerprint)
    seen = _gather((source.n, source.fingerprint), group)
    if len(set(seen)) != 1:
        raise DedupError(f"ranks see different datasets (length, fingerprint) per rank: {seen}; every rank "
                         f"must build the sampler over the same data")
    decode = decode_mode(source, fast_decode)
    path = sidecar_for(source, method, hash_size, decode=decode, cache_dir=cache_dir)
    meta = {"method": method, "hash_size": int(hash_size), "decode": decode, "fingerprint": source.fingerprint,
            "source": source.description, "dataset": type(ds).__name__, "n": source.n,
            "versions": library_versions()}
    cached = None if refresh else load_cached(path, source, method, hash_size, decode)
    hits = _gather(cached is not None, group)
    if any(hits):
        src = hits.index(True)
        if all(hits):
            hashes, valid, failures, created = cached.hashes, cached.valid, tuple(cached.failures), \
                cached.meta.get("created")
        else:
            box = [(cached.hashes, cached.valid, tuple(cached.failures), cached.meta.get("created"))
                   if cached is not None and rank == src else None]
            dist.broadcast_object_list(box, src=dist.get_global_rank(group, src) if group is not None else src,
                                       group=group)
            hashes, valid, failures, created = box[0]
        if failures and on_error == "raise":
            i, where, why = failures[0]
            raise ImageDecodeError(where, f"{why} (recorded in sidecar {path})", i)
        logger.debug("rank %d: sidecar hit %s", rank, path)
        return DatasetHashes(hashes, valid, failures, source.labels, source.fingerprint,
                             {**meta, "sidecar": str(path), "created": created}, path, True)

    start, stop = rank * source.n // world, (rank + 1) * source.n // world
    part, error = None, None
    try:
        part = hash_source_range(source, start, stop, method, hash_size, on_error=on_error,
                                 workers=_default_workers(group) if workers is None else workers,
                                 fast_decode=fast_decode, progress=progress and rank == 0)
    except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, never swallowed
        error = exc
    parts = _gather((None, None, None, _portable(error)) if error is not None
                    else (part.hashes, part.valid, tuple(part.failures), None), group)
    _raise_if_any_failed([p[3] for p in parts], error, "hashing")
    hashes = np.concatenate([np.asarray(p[0]) for p in parts])
    valid = np.concatenate([np.asarray(p[1]) for p in parts])
    failures = tuple(f for p in parts for f in p[2])
    written = None
    if rank == 0:
        written = store_cached(path, HashResult(hashes, valid, failures, method, int(hash_size)),
                               source, method, hash_size, decode)
    box = [None if written is None else str(written)]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    dist.barrier(group=group)
    written = None if box[0] is None else Path(box[0])
    meta["sidecar"] = box[0]
    logger.debug("rank %d hashed items [%d, %d) of %d in %.2f s", rank, start, stop, source.n,
                 time.perf_counter() - t0)
    return DatasetHashes(hashes, valid, failures, source.labels, source.fingerprint, meta, written, False)


def _against_hashes(against, method: str, hash_size: int, common: dict, group) -> tuple:
    items = list(against) if isinstance(against, (list, tuple)) else [against]
    resolved = []
    for item in items:
        if isinstance(item, (np.ndarray, DatasetHashes)):
            resolved.append(item)
        else:
            resolved.append(hash_dataset_distributed(item, method, hash_size, group=group, **common))
    parts = [r if isinstance(r, np.ndarray) else r.hashes[r.valid] for r in resolved]
    prints = [None if isinstance(r, np.ndarray) else r.fingerprint for r in resolved]
    widths = {p.shape[1:] for p in parts}
    if len(widths) > 1:
        raise ValueError(f"against= holds hashes of different widths {sorted(widths)}; hash everything with "
                         f"the same method and hash_size")
    return np.concatenate(parts), prints


def plan_dataset_distributed(ds, threshold: int = 6, *, method: str = "phash", hash_size: int = 8,
                             policy: str = "greedy", per_class: bool = False,
                             labels: Sequence[int] | np.ndarray | None = None, priority=None, against=None,
                             image_fn: Callable[[int], Any] | None = None,
                             cache_dir: str | os.PathLike | None | bool = None, on_error: str = "raise",
                             workers: int | None = None, progress: bool = True, sweep_max: int | None = None,
                             fast_decode: bool = False, fingerprint: str | None = None,
                             group=None) -> DedupPlan:
    """:func:`~torch_dedup.index.plan_dataset` for a process group: hash once, same plan on every rank.

    A collective: every rank calls it with the same arguments. Datasets given in
    ``against=`` are hashed the same way (once across the group).

    Args:
        ds, threshold, method, hash_size, policy, per_class, labels, priority, against,
            image_fn, cache_dir, on_error, workers, progress, sweep_max, fast_decode,
            fingerprint: as in :func:`~torch_dedup.index.plan_dataset`.
        group: the process group (``None``: the default group).

    Returns:
        The :class:`~torch_dedup.plan.DedupPlan`, identical on every rank.

    Raises:
        ValueError: bad options. DedupError / ImageDecodeError: see :func:`hash_dataset_distributed`.

    Example:
        >>> plan = plan_dataset_distributed(ds, threshold=6, progress=False)  # doctest: +SKIP
    """
    PlanOptions(threshold=threshold, method=method, hash_size=hash_size, policy=policy, on_error=on_error)
    common = dict(cache_dir=cache_dir, on_error=on_error, workers=workers, fast_decode=fast_decode,
                  progress=progress)
    dh = hash_dataset_distributed(ds, method, hash_size, image_fn=image_fn, fingerprint=fingerprint,
                                  group=group, **common)
    labels = check_labels(labels if labels is not None else dh.labels, len(dh), per_class, type(ds).__name__)
    against_hashes, against_prints = (None, [])
    if against is not None:
        against_hashes, against_prints = _against_hashes(against, method, hash_size, common, group)
    return plan_from_hashes(dh, threshold, policy=policy, per_class=per_class, labels=labels, priority=priority,
                            against=against_hashes, against_fingerprints=against_prints, sweep_max=sweep_max)
