"""DedupSampler: a drop-in sampler over the items a :class:`~torch_dedup.plan.DedupPlan` keeps.

The sampler hashes nothing itself: it obtains a plan once (computed, read from a sidecar,
or loaded from a saved plan file; see :func:`torch_dedup.planning.plan_dataset`) and then behaves
exactly like :class:`torch.utils.data.DistributedSampler` over a dataset of ``len(kept)``
items, mapped through ``plan.kept_indices``. With one replica that is a seeded
``RandomSampler`` (or dataset order with ``shuffle=False``).

It is resumable mid-epoch: :meth:`DedupSampler.state_dict` records how many indices the
current epoch has yielded, and :meth:`DedupSampler.load_state_dict` makes the next
iteration continue from there, which is the protocol torchdata's ``StatefulDataLoader``
speaks.

Layer 4.
"""

from __future__ import annotations

import hashlib
import logging
import math
import operator
import os
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .options import DedupOptions, options_from
from .planning import resolve_plan
from .errors import DedupError, EmptyDedupError

__all__ = ["DedupSampler"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


def _digest_of(kept: np.ndarray) -> str:
    """A short digest of a kept-index array: tells two plans' keep sets apart cheaply."""
    return hashlib.blake2b(np.ascontiguousarray(kept, dtype=np.int64).tobytes(), digest_size=12).hexdigest()


def _replicas_and_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Resolve ``num_replicas``/``rank`` like ``DistributedSampler``, with one process as the default."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        if initialised:
            num_replicas = dist.get_world_size()
        elif rank is not None:
            raise ValueError(
                f"rank={rank} was given without num_replicas and torch.distributed is not initialised; "
                f"pass num_replicas= too (the world size), or initialise the process group first."
            )
        else:
            num_replicas = 1
    if rank is None:
        if initialised:
            rank = dist.get_rank()
        elif num_replicas == 1:
            rank = 0
        else:
            raise ValueError(
                f"num_replicas={num_replicas} was given without rank and torch.distributed is not "
                f"initialised; pass rank= in [0, {num_replicas - 1}], or initialise the process group."
            )
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
        raise ValueError(f"num_replicas={num_replicas!r} must be an int >= 1 (the number of processes).")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank={rank!r} must be an int in [0, {num_replicas - 1}].")
    if rank >= num_replicas or rank < 0:
        raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
    return int(num_replicas), int(rank)


class DedupSampler(Sampler[int]):
    """Sample only the items that survive near-duplicate removal.

    Builds a :class:`~torch_dedup.plan.DedupPlan` once (under DDP, hashes are computed once
    across ranks and every rank derives the identical plan), then yields the kept indices
    exactly as :class:`~torch.utils.data.DistributedSampler` would yield the positions of a
    dataset of ``len(kept)`` items: shuffled with ``torch.Generator().manual_seed(seed + epoch)``,
    padded by repeating from the start (or trimmed with ``drop_last``), rank ``r`` taking
    every ``num_replicas``-th position from ``r``. Without distribution it is a seeded
    random sampler over the kept items.

    Args:
        ds: a map-style dataset (has ``__len__`` and ``__getitem__``).
        threshold: Hamming distance at or below which two items are near-duplicates.
        method: hash method (``"phash"``, ``"dhash"``, ``"ahash"``, ``"whash"``).
        hash_size: hash side length (8 gives 64-bit hashes).
        policy: ``"greedy"`` or ``"components"``.
        per_class: only items of the same label can be duplicates of each other.
        labels: per-item labels overriding the dataset's own.
        priority: per-item keep score (higher kept first).
        against: another dataset (e.g. the test set); items near-duplicating it are removed.
        image_fn: ``image_fn(i) -> raw image of item i`` (PIL image, array, tensor or path)
            for datasets with no fast path.
        cache_dir: where hash sidecars go (default: beside the data, else the user cache).
        on_error: ``"raise"`` or ``"skip"`` for undecodable images.
        fingerprint: a string identifying the data, needed to cache the hashes of datasets
            read through ``image_fn`` or ``ds[i]`` (they have no cheap automatic fingerprint).
        workers: decode processes for image files (``None``: automatic, in-process for
            small datasets; under DDP this node's cores divided among its ranks).
        options: all the dedup settings above as one :class:`~torch_dedup.options.DedupOptions`
            (then leave the individual settings at their defaults).
        shuffle: shuffle the kept indices every epoch (``False``: dataset order).
        seed: base seed; epoch ``e`` uses ``seed + e``. Must be the same on every rank.
        num_replicas: number of processes (default: the world size when distributed, else 1).
        rank: this process's rank (default: the distributed rank, else 0).
        drop_last: drop the tail so the kept count divides evenly instead of padding.
        plan: a ready :class:`~torch_dedup.plan.DedupPlan` or the path of a saved one; then
            no hashing happens, and a plan made for another dataset is refused.
        progress: show a progress bar while hashing.

    Raises:
        TypeError: ``ds`` is an ``IterableDataset`` or has no ``__len__``.
        ValueError: a bad option (the message names it and the valid range).
        EmptyDedupError: the dataset is empty, or nothing (for this rank) would remain.
        PlanError: ``plan`` was made for another dataset or cannot be read.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> import torch
        >>> ds = TensorDataset(torch.zeros(4, 8, 8, dtype=torch.uint8))
        >>> sampler = DedupSampler(ds, threshold=0, progress=False)  # doctest: +SKIP
        >>> loader = DataLoader(ds, batch_size=2, sampler=sampler)  # doctest: +SKIP
        >>> for epoch in range(3):  # doctest: +SKIP
        ...     sampler.set_epoch(epoch)
        ...     for batch in loader: ...
    """

    def __init__(self, ds, threshold: int = 6, *, method: str = "phash", hash_size: int = 8,
                 policy: str = "greedy", per_class: bool = False, labels=None, priority=None,
                 against=None, image_fn=None, cache_dir: str | os.PathLike | None = None,
                 on_error: str = "raise", fingerprint: str | None = None, workers: int | None = None,
                 options: DedupOptions | None = None, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False,
                 plan=None, progress: bool = True) -> None:
        # Validate the cheap arguments before any hashing starts.
        num_replicas, rank = _replicas_and_rank(num_replicas, rank)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed={seed!r} must be an int (the same on every rank).")
        given = dict(threshold=threshold, method=method, hash_size=hash_size, policy=policy, per_class=per_class,
                     labels=labels, priority=priority, against=against, image_fn=image_fn, cache_dir=cache_dir,
                     on_error=on_error, progress=progress, fingerprint=fingerprint, workers=workers)
        options = options_from(options, given, type(self).__name__)
        resolved = resolve_plan(ds, options, plan=plan, owner=type(self).__name__)
        self._plan = resolved.plan
        self._kept = np.ascontiguousarray(resolved.plan.kept_indices, dtype=np.int64)
        self._kept.setflags(write=False)
        self._n = int(resolved.plan.n)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_replicas = num_replicas
        self.rank = rank
        self._epoch = 0
        self._yielded = 0           # where the running epoch started (see _yielded_now)
        self._live = None           # (start, count, list iterator) of the running epoch
        self._resume_at: int | None = None  # offset the next iteration starts from (load_state_dict)
        self._digest: str | None = None
        n_kept = len(self._kept)
        if drop_last and n_kept % num_replicas != 0:
            self.num_samples = math.ceil((n_kept - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n_kept / num_replicas)
        self.total_size = self.num_samples * num_replicas
        if self.num_samples <= 0:
            raise EmptyDedupError(
                f"{type(self).__name__}: only {n_kept} item(s) kept for num_replicas={num_replicas} "
                f"with drop_last=True, so every rank would get nothing; use drop_last=False, fewer "
                f"replicas, or a lower threshold (now {resolved.plan.threshold})."
            )

    # -- the plan ------------------------------------------------------------------------

    @property
    def plan(self):
        """The :class:`~torch_dedup.plan.DedupPlan` this sampler follows.

        Raises:
            DedupError: in a pickled copy (the plan stays in the process that built it).
        """
        if self._plan is None:
            raise DedupError(
                f"this {type(self).__name__} is an unpickled copy and does not carry its DedupPlan "
                f"(only the kept indices travel, to keep pickling cheap); read .plan in the process "
                f"that built the sampler, or save it there with sampler.plan.save(path)."
            )
        return self._plan

    @property
    def kept_indices(self) -> np.ndarray:
        """Sorted ``int64`` indices of the kept items in the underlying dataset (read-only)."""
        return self._kept

    @property
    def epoch(self) -> int:
        """The epoch whose order the next iteration yields (see :meth:`set_epoch`)."""
        return self._epoch

    # -- iteration -----------------------------------------------------------------------

    def _positions(self) -> torch.Tensor:
        """This rank's positions into ``kept`` for the current epoch, as DistributedSampler picks them."""
        n_kept = len(self._kept)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self._epoch)
            order = torch.randperm(n_kept, generator=g)
        else:
            order = torch.arange(n_kept)
        if not self.drop_last:
            pad = self.total_size - n_kept
            if pad > 0:
                # same as DistributedSampler: repeat the list from its start until it fits
                order = torch.cat([order, order.repeat(math.ceil(pad / n_kept))[:pad]])
        else:
            order = order[: self.total_size]
        return order[self.rank: self.total_size: self.num_replicas]

    def epoch_indices(self) -> np.ndarray:
        """The dataset indices this rank yields in the current epoch, in order (``int64``)."""
        return self._kept[self._positions().numpy()]

    def __iter__(self) -> Iterator[int]:
        # Report the new epoch's start at once (a state_dict taken before the first index
        # must not describe the previous epoch), but consume a loaded resume offset only
        # when iteration really starts: loaders create and discard iterators on the way.
        self._yielded = self._resume_at if self._resume_at is not None else 0
        self._live = None
        return self._run()

    def _run(self) -> Iterator[int]:
        start = self._resume_at if self._resume_at is not None else 0
        self._resume_at = None
        rest = self.epoch_indices()[start:].tolist()
        it = iter(rest)
        # Counting per item in Python would make an epoch ~2x slower than RandomSampler; the
        # list iterator knows how much it has left, so state_dict derives the count from it.
        self._live = (start, len(rest), it)
        yield from it

    def _yielded_now(self) -> int:
        if self._resume_at is not None:
            return self._resume_at
        if self._live is not None:
            start, total, it = self._live
            return start + total - operator.length_hint(it)
        return self._yielded

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose shuffled order the next iteration yields.

        Call it before every epoch with the same value on every rank, as with
        ``DistributedSampler``. Setting another epoch than a loaded mid-epoch state's
        discards that state's resume offset (a new epoch starts from its beginning).

        Args:
            epoch: the epoch number (an int).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise ValueError(f"epoch={epoch!r} must be an int.")
        if int(epoch) != self._epoch:
            self._resume_at = None
            self._yielded = 0
            self._live = None
        self._epoch = int(epoch)

    # -- checkpointing -------------------------------------------------------------------

    def _kept_digest(self) -> str:
        if self._digest is None:
            self._digest = _digest_of(self._kept)
        return self._digest

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler stands: enough to resume mid-epoch without repeating or skipping.

        Returns:
            ``{"version", "epoch", "seed", "yielded", "num_samples", "num_replicas", "shuffle",
            "drop_last", "n", "n_kept", "kept_digest"}``; ``yielded`` counts the indices this
            rank's running epoch has handed out. Plain ints, strings and bools only.
        """
        yielded = self._yielded_now()
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "seed": self.seed,
            "yielded": int(yielded),
            "num_samples": self.num_samples,
            "num_replicas": self.num_replicas,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "n": self._n,
            "n_kept": len(self._kept),
            "kept_digest": self._kept_digest(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration continues the saved epoch.

        A state saved mid-epoch restores its epoch and seed, and the next ``iter()`` yields
        the rest of that epoch. A state saved after its epoch finished starts the next
        iteration afresh, at the epoch last given to :meth:`set_epoch`.

        Args:
            state_dict: a dict from :meth:`state_dict` of a sampler over the same plan.

        Raises:
            ValueError: the state is malformed, or was saved with another keep set, world
                size, ``shuffle`` or ``drop_last`` (resuming it would repeat or skip items).
        """
        if not isinstance(state_dict, dict) or "yielded" not in state_dict:
            raise ValueError(
                f"state_dict must be a dict from DedupSampler.state_dict() with a 'yielded' key, "
                f"got {type(state_dict).__name__} with keys {sorted(state_dict) if isinstance(state_dict, dict) else None}."
            )
        yielded = state_dict["yielded"]
        if isinstance(yielded, bool) or not isinstance(yielded, (int, np.integer)) or yielded < 0:
            raise ValueError(f"state_dict['yielded']={yielded!r} must be an int >= 0.")
        mine = self.state_dict()
        for key in ("n", "n_kept", "kept_digest", "num_replicas", "shuffle", "drop_last"):
            if key in state_dict and state_dict[key] != mine[key]:
                raise ValueError(
                    f"cannot resume: state_dict[{key!r}]={state_dict[key]!r} but this sampler has "
                    f"{key}={mine[key]!r}; the state was saved with another plan or setup. Build the "
                    f"sampler with the same dataset, plan and options (num_replicas, shuffle, drop_last)."
                )
        if yielded > self.num_samples:
            raise ValueError(
                f"state_dict['yielded']={yielded} exceeds this rank's {self.num_samples} samples per epoch."
            )
        self.seed = int(state_dict.get("seed", self.seed))
        if yielded == self.num_samples:
            # a finished epoch: the next iteration is a fresh one, as without the restart
            self._resume_at = None
            self._yielded = 0
            self._live = None
            return
        self._epoch = int(state_dict.get("epoch", self._epoch))
        self._resume_at = int(yielded)
        self._yielded = int(yielded)
        self._live = None

    # -- pickling: kept indices and small state only ------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_plan"] = None
        # a running epoch travels as its count (iterators do not pickle)
        state["_yielded"], state["_live"] = self._yielded_now(), None
        return state

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self._n}, kept={len(self._kept)}, shuffle={self.shuffle}, "
                f"seed={self.seed}, epoch={self._epoch}, num_replicas={self.num_replicas}, "
                f"rank={self.rank}, drop_last={self.drop_last})")
