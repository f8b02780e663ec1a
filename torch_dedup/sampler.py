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
import sys
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .options import DedupOptions, options_from
from .planning import resolve_plan
from .errors import DedupError, EmptyDedupError

__all__ = ["DedupSampler"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
_CALLER_DEPTH = 8  # frames above the sampler searched for a framework that shards again


def _accelerate_shards() -> bool:
    """Whether an ``accelerate`` Accelerator/PartialState with more than one process lives in this
    process: its ``prepare(loader)`` shards every loader's batches by rank itself.

    Looked up in ``sys.modules`` only: a process that never imported accelerate is not using it.
    """
    state = sys.modules.get("accelerate.state")
    partial = getattr(state, "PartialState", None) if state is not None else None
    shared = getattr(partial, "_shared_state", None)
    try:
        return bool(shared) and int(shared.get("num_processes", 1)) > 1
    except (AttributeError, TypeError, ValueError):
        return False


def _resharding_caller(frame) -> str | None:
    """The name of a framework wrapper among the callers that splits our output by rank again, else None.

    Lightning/Fabric's ``DistributedSamplerWrapper`` (and any other ``DistributedSampler`` that
    iterates a sampler) and accelerate's ``BatchSamplerShard`` both consume the whole output of
    the sampler they wrap and hand each rank a share of it.
    """
    for _ in range(_CALLER_DEPTH):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if owner is not None and not isinstance(owner, DedupSampler):
            kind = type(owner)
            if isinstance(owner, DistributedSampler) or kind.__name__ in ("BatchSamplerShard", "_DatasetSamplerWrapper"):
                return f"{kind.__module__}.{kind.__qualname__}"
        frame = frame.f_back
    return None


def _env_world_size() -> int:
    """The world size a launcher (torchrun, Lightning, accelerate) announced in the environment, else 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _digest_of(kept: np.ndarray) -> str:
    """A short digest of a kept-index array: tells two plans' keep sets apart cheaply."""
    return hashlib.blake2b(np.ascontiguousarray(kept, dtype=np.int64).tobytes(), digest_size=12).hexdigest()


def _replicas_and_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int] | None:
    """Check explicit ``num_replicas``/``rank``; ``None`` when both are left to the process group."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None and rank is None:
        return None  # followed live: see DedupSampler.num_replicas
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


class DedupSampler(DistributedSampler):
    """Sample only the items that survive near-duplicate removal.

    Builds a :class:`~torch_dedup.plan.DedupPlan` once (under DDP, hashes are computed once
    across ranks and every rank derives the identical plan), then yields the kept indices
    exactly as :class:`~torch.utils.data.DistributedSampler` would yield the positions of a
    dataset of ``len(kept)`` items: shuffled with ``torch.Generator().manual_seed(seed + epoch)``,
    padded by repeating from the start (or trimmed with ``drop_last``), rank ``r`` taking
    every ``num_replicas``-th position from ``r``. Without distribution it is a seeded
    random sampler over the kept items.

    It is a :class:`~torch.utils.data.DistributedSampler` (a subclass), so frameworks that
    insert their own distributed sampler unless one is there already (PyTorch Lightning's
    ``Trainer``, Fabric) keep it and call :meth:`set_epoch`, instead of splitting its
    already split output again. Left to itself (``num_replicas``/``rank`` not given), it
    follows the process group *when it is iterated*, so a sampler built before the group
    exists (a Lightning datamodule's ``__init__``, before ``Accelerator()``) still splits
    by the right world size. ``shard=False`` yields the whole kept order, identical on every
    rank, for a framework that shards the loader itself (``accelerate``'s ``prepare``); that
    is the default while an ``accelerate`` state with several processes exists. A sampler
    iterated by a framework wrapper that splits by rank again raises instead of losing data.
    See docs/integrations.md.

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
        views: ``"shift"`` (or ``"shift+rotate"``): also code shifted and cropped views of
            every item, so shifted or cropped copies are found (``DedupOptions.views``;
            docs/hashing.md, "Views").
        options: all the dedup settings above as one :class:`~torch_dedup.options.DedupOptions`
            (then leave the individual settings at their defaults).
        shuffle: shuffle the kept indices every epoch (``False``: dataset order).
        seed: base seed; epoch ``e`` uses ``seed + e``. Must be the same on every rank.
        num_replicas: number of processes (default: the world size of the process group at
            iteration time, 1 without one).
        rank: this process's rank (default: the process group's rank at iteration time, else 0).
        shard: ``True``: each rank yields its own share, as ``DistributedSampler`` does;
            ``False``: every rank yields the whole kept order (the same on every rank; planning
            and hashing still split across ranks) for a framework that shards by itself, such as
            ``accelerator.prepare(loader)``; ``None`` (default): ``False`` while an
            ``accelerate`` state with more than one process exists in this process (checked
            at every ``len``/``iter``), else ``True``.
        drop_last: drop the tail so the kept count divides evenly instead of padding.
        plan: a ready :class:`~torch_dedup.plan.DedupPlan` or the path of a saved one; then
            no hashing happens, and a plan made for another dataset is refused.
        progress: show a progress bar while hashing.

    Raises:
        TypeError: ``ds`` is an ``IterableDataset`` or has no ``__len__``.
        ValueError: a bad option (the message names it and the valid range).
        EmptyDedupError: the dataset is empty, or nothing (for this rank) would remain.
        DedupError: at iteration, when a framework wrapper (Lightning's
            ``DistributedSamplerWrapper``, accelerate's ``BatchSamplerShard``) splits this
            already split sampler by rank again; the message names the fix (``shard=False``).
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
                 views: str | None = None, options: DedupOptions | None = None, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False,
                 plan=None, progress: bool = True, shard: bool | None = None) -> None:
        # Validate the cheap arguments before any hashing starts.
        fixed = _replicas_and_rank(num_replicas, rank)
        if shard not in (None, True, False):
            raise ValueError(f"shard={shard!r} must be True (split by rank), False (the whole kept order on every "
                             f"rank, for a framework that shards itself) or None (automatic).")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed={seed!r} must be an int (the same on every rank).")
        given = dict(threshold=threshold, method=method, hash_size=hash_size, policy=policy, per_class=per_class,
                     labels=labels, priority=priority, against=against, image_fn=image_fn, cache_dir=cache_dir,
                     on_error=on_error, progress=progress, fingerprint=fingerprint, workers=workers, views=views)
        options = options_from(options, given, type(self).__name__)
        resolved = resolve_plan(ds, options, plan=plan, owner=type(self).__name__)
        if fixed is None and not (dist.is_available() and dist.is_initialized()) \
                and _env_world_size() > 1 and resolved.how == "computed":
            logger.warning(
                "%s was built before torch.distributed was initialised in a %d-process run, so this process "
                "hashed the whole dataset by itself. It still splits the kept items by rank when iterated. To "
                "hash once across the ranks, build it after the process group exists (Lightning: in setup() or "
                "*_dataloader(); accelerate: after Accelerator()), or pass plan=plan_dataset(...) made there.",
                type(self).__name__, _env_world_size())
        self._plan = resolved.plan
        self.dataset = ds
        self._kept = np.ascontiguousarray(resolved.plan.kept_indices, dtype=np.int64)
        self._kept.setflags(write=False)
        self._n = int(resolved.plan.n)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self._fixed = fixed
        self._shard = shard
        self._warned_unsharded = False
        self._epoch = 0
        self._yielded = 0           # where the running epoch started (see _yielded_now)
        self._live = None           # (start, count, list iterator) of the running epoch
        self._resume_at: int | None = None  # offset the next iteration starts from (load_state_dict)
        self._digest: str | None = None
        self._threshold = resolved.plan.threshold
        self._sizes()  # an impossible split fails here, not at the first batch

    # -- the split: followed live unless fixed -------------------------------------------

    @property
    def sharded(self) -> bool:
        """Whether this sampler splits the kept items by rank now (see ``shard``)."""
        if self._shard is not None:
            return self._shard
        if self._fixed is not None:
            return True
        return not _accelerate_shards()

    def _world(self) -> tuple[int, int]:
        if not self.sharded:
            return 1, 0
        if self._fixed is not None:
            return self._fixed
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    @property
    def num_replicas(self) -> int:
        """How many shares the kept items are split into now (1 when not sharded)."""
        return self._world()[0]

    @property
    def rank(self) -> int:
        """Which share this process yields now (0 when not sharded)."""
        return self._world()[1]

    def _sizes(self) -> tuple[int, int, int, int]:
        """``(num_replicas, rank, num_samples, total_size)`` for the split in force now."""
        replicas, rank = self._world()
        n_kept = len(self._kept)
        if self.drop_last and n_kept % replicas != 0:
            num_samples = math.ceil((n_kept - replicas) / replicas)
        else:
            num_samples = math.ceil(n_kept / replicas)
        if num_samples <= 0:
            raise EmptyDedupError(
                f"{type(self).__name__}: only {n_kept} item(s) kept for num_replicas={replicas} "
                f"with drop_last=True, so every rank would get nothing; use drop_last=False, fewer "
                f"replicas, or a lower threshold (now {self._threshold})."
            )
        return replicas, rank, num_samples, num_samples * replicas

    @property
    def num_samples(self) -> int:
        """Indices this rank yields per epoch."""
        return self._sizes()[2]

    @property
    def total_size(self) -> int:
        """Indices all ranks together yield per epoch (kept count plus padding, or less the dropped tail)."""
        return self._sizes()[3]

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
        """The epoch whose order the next iteration yields (see :meth:`set_epoch`; assigning calls it)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.set_epoch(value)

    # -- iteration -----------------------------------------------------------------------

    def _positions(self) -> torch.Tensor:
        """This rank's positions into ``kept`` for the current epoch, as DistributedSampler picks them."""
        replicas, rank, _, total_size = self._sizes()
        n_kept = len(self._kept)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self._epoch)
            order = torch.randperm(n_kept, generator=g)
        else:
            order = torch.arange(n_kept)
        if not self.drop_last:
            pad = total_size - n_kept
            if pad > 0:
                # same as DistributedSampler: repeat the list from its start until it fits
                order = torch.cat([order, order.repeat(math.ceil(pad / n_kept))[:pad]])
        else:
            order = order[: total_size]
        return order[rank: total_size: replicas]

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

    def _check_caller(self, frame) -> None:
        """Refuse a second split by a framework wrapper; warn when no one splits an unsharded sampler."""
        wrapper = _resharding_caller(frame)
        replicas = self.num_replicas
        if wrapper is not None and replicas > 1:
            raise DedupError(
                f"{type(self).__name__} already splits the kept items across {replicas} ranks, and {wrapper} is "
                f"splitting its output by rank again: each rank would train on 1/{replicas} of its share and the "
                f"rest of the kept items would never be seen. Build it with shard=False (every rank yields the "
                f"whole kept order and {wrapper.rpartition('.')[2]} splits it), or stop the framework from "
                f"wrapping it (Lightning: Trainer(use_distributed_sampler=False)). See docs/integrations.md.")
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if wrapper is None and replicas == 1 and world > 1 and not self._warned_unsharded:
            self._warned_unsharded = True
            why = "shard=False was given" if self._shard is False else "an accelerate state with several processes exists"
            logger.warning(
                "%s yields the whole kept order on each of the %d ranks (%s), but no framework wrapper splits it "
                "by rank: every kept item is seen %d times per epoch. Pass the loader through "
                "accelerator.prepare(), or build the sampler with shard=True.",
                type(self).__name__, world, why, world)

    def _run(self) -> Iterator[int]:
        self._check_caller(sys._getframe(1))
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
        state["dataset"] = None  # DistributedSampler's attribute; the loader carries the dataset itself
        # a running epoch travels as its count (iterators do not pickle)
        state["_yielded"], state["_live"] = self._yielded_now(), None
        return state

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self._n}, kept={len(self._kept)}, shuffle={self.shuffle}, "
                f"seed={self.seed}, epoch={self._epoch}, num_replicas={self.num_replicas}, "
                f"rank={self.rank}, drop_last={self.drop_last}, shard={self._shard})")
