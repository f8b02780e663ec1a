"""The streaming filter: drop exactly the planned samples from a webdataset pipeline.

Each sample names its shard in ``__url__`` and itself in ``__key__``; the filter looks the
pair up in the :class:`~torch_dedup.wds.shard_plan.ShardPlan` and drops the sample when the
plan says so. The decision depends on nothing but the sample, so it is the same whatever
order the shards come in, however often a shard repeats (``resampled=True``), and however
shards are split over nodes and DataLoader workers. Put it right after the source, before
decoding: dropped samples are then never decoded, and the cost per sample is two dict
lookups.
"""

from __future__ import annotations

import logging
import os

from torch_dedup.errors import PlanError

from .shard_plan import ShardPlan
from .shard_urls import is_local, shard_fingerprint, shard_id, shard_name

__all__ = ["UNKNOWN_POLICIES", "DedupFilter", "dedup_filter"]

logger = logging.getLogger(__name__)

UNKNOWN_POLICIES = ("error", "pass", "drop")
_MATCH = ("id", "name")


class DedupFilter:
    """A webdataset pipeline stage that drops the samples a :class:`ShardPlan` drops.

    Use :func:`dedup_filter` to make one. Instances are picklable (DataLoader workers get
    a copy each) and keep per-process counters ``n_seen`` and ``n_dropped`` (samples seen and
    dropped by this copy; over one full pass of the shards, ``n_dropped == plan.n_removed``).
    """

    def __init__(self, plan: ShardPlan, *, unknown: str = "error", match: str = "id", verify: bool = True,
                 max_cached_shards: int = 64):
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown={unknown!r} must be one of {UNKNOWN_POLICIES}: 'error' refuses samples "
                             "the plan does not know, 'pass' lets them through, 'drop' drops them")
        if match not in _MATCH:
            raise ValueError(f"match={match!r} must be 'id' (the shard's absolute path or URL) or 'name' "
                             "(its file name, for shards that moved or are read through another URL)")
        if isinstance(max_cached_shards, bool) or not isinstance(max_cached_shards, int) or max_cached_shards < 1:
            raise ValueError(f"max_cached_shards={max_cached_shards!r} must be an int >= 1")
        self.plan = plan
        self.unknown = unknown
        self.match = match
        self.verify = bool(verify)
        self.max_cached_shards = max_cached_shards
        field = "id" if match == "id" else "name"
        self._index: dict[str, int] = {}
        for s, sh in enumerate(plan.shards):
            if sh[field] in self._index:
                raise PlanError(plan.path or "<ShardPlan>",
                                f"two shards share the {field} {sh[field]!r}; use match='id'")
            self._index[sh[field]] = s
        self._reset()

    def _reset(self) -> None:
        self._decisions: dict[str, dict | None] = {}  # __url__ -> key -> drop (None: unknown shard)
        self.n_seen = 0
        self.n_dropped = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_decisions"] = {}
        return state

    def _where(self) -> str:
        return self.plan.path or "<ShardPlan>"

    def _open(self, url: str) -> dict | None:
        ident = shard_id(url) if self.match == "id" else shard_name(url)
        s = self._index.get(ident)
        if s is None:
            if self.unknown == "error":
                raise PlanError(self._where(), f"sample from shard {url!r}, which this plan does not know "
                                               f"(it covers {len(self.plan.shards)} shards, e.g. "
                                               f"{self.plan.shards[0]['url'] if self.plan.shards else None!r}); "
                                               "make the plan for these shards, match shards by file name with "
                                               "match='name', or pass unknown='pass'/'drop'")
            logger.warning("shard %s is not in the plan; its samples are %s", url,
                           "passed" if self.unknown == "pass" else "dropped")
            decisions = None
        else:
            sh = self.plan.shards[s]
            if self.verify and is_local(url):
                try:
                    now = shard_fingerprint(url)
                except OSError:
                    now = None
                if now is not None and now != sh["fingerprint"]:
                    raise PlanError(self._where(), f"shard {url!r} changed since the plan was made (fingerprint "
                                                   f"{now!r}, plan has {sh['fingerprint']!r}); hash and plan "
                                                   "again, or pass verify=False if only its mtime changed")
            keys = self.plan.shard_keys(s)
            decisions = dict(zip(keys, self.plan.shard_drop(s).tolist()))
        if len(self._decisions) >= self.max_cached_shards:
            self._decisions.pop(next(iter(self._decisions)))
        self._decisions[url] = decisions
        return decisions

    def __call__(self, src):
        """Filter an iterator of webdataset samples (dicts with ``__url__`` and ``__key__``)."""
        cache = self._decisions
        unknown = self.unknown
        for sample in src:
            try:
                url, key = sample["__url__"], sample["__key__"]
            except (KeyError, TypeError):
                raise ValueError("dedup_filter needs samples with '__url__' and '__key__' (webdataset dicts); "
                                 "place it before stages that drop them, such as to_tuple() or batched()") from None
            decisions = cache[url] if url in cache else self._open(url)
            self.n_seen += 1
            if decisions is None:
                if unknown == "drop":
                    self.n_dropped += 1
                    continue
                yield sample
                continue
            drop = decisions.get(key)
            if drop is None:
                if unknown == "error":
                    raise PlanError(self._where(), f"sample {key!r} of shard {url!r} is not in the plan: the shard "
                                                   "changed since the plan was made; hash and plan again, or pass "
                                                   "unknown='pass'/'drop'")
                drop = unknown == "drop"
            if drop:
                self.n_dropped += 1
                continue
            yield sample

    def __repr__(self) -> str:
        return (f"DedupFilter({len(self.plan.shards)} shards, {self.plan.n_removed} of {self.plan.n} samples "
                f"dropped, unknown={self.unknown!r}, match={self.match!r})")


def dedup_filter(plan: ShardPlan | str | os.PathLike, *, unknown: str = "error", match: str = "id",
                 verify: bool = True) -> DedupFilter:
    """A pipeline stage that drops exactly the samples ``plan`` drops and passes all others unchanged.

    Args:
        plan: a :class:`ShardPlan` or the path of a saved one.
        unknown: what to do with a sample the plan does not know (its shard or key is not in
            it): ``"error"`` (default: raise :class:`~torch_dedup.errors.PlanError`),
            ``"pass"`` or ``"drop"``.
        match: recognise shards by ``"id"`` (absolute path, or the URL for remote shards) or
            by file ``"name"`` (shards copied elsewhere or read through ``pipe:``/``s3:``).
        verify: check each local shard's size and mtime against the plan the first time it is
            seen (one ``stat`` per shard per process).

    Returns:
        A :class:`DedupFilter`; use it as ``wds.WebDataset(urls, ...).compose(f)`` or as a
        stage of ``wds.DataPipeline``, before ``to_tuple``/``batched`` (it reads ``__url__``
        and ``__key__``), ideally before ``decode`` (dropped samples are then never decoded).

    Raises:
        PlanError: the plan file is unreadable, or (while iterating) a sample it does not know.

    Example:
        >>> import webdataset as wds
        >>> ds = (wds.WebDataset("shards/shard-{000000..000009}.tar", shardshuffle=100)
        ...       .compose(dedup_filter("shards/dedup.tdplan"))
        ...       .decode("pil").to_tuple("jpg", "cls"))  # doctest: +SKIP
    """
    if not isinstance(plan, ShardPlan):
        plan = ShardPlan.load(plan)
    return DedupFilter(plan, unknown=unknown, match=match, verify=verify)
