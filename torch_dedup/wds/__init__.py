"""Deduplicate webdataset shards: per-shard hash sidecars, one global plan, a streaming filter
that drops exactly the planned samples, and deduplicated shard rewriting.

::

    import webdataset as wds
    from torch_dedup.wds import dedup_filter, plan_shards

    plan = plan_shards("shards/shard-{000000..000099}.tar", threshold=6, out="shards/dedup.tdplan")
    ds = (wds.WebDataset("shards/shard-{000000..000099}.tar", shardshuffle=100)
          .compose(dedup_filter(plan)).decode("pil").to_tuple("jpg", "cls"))

Layer 4: the only place torch_dedup imports webdataset (lazily, inside the functions).
"""

from __future__ import annotations

from torch_dedup.errors import PlanError

from .filter import DedupFilter, dedup_filter
from .rewrite import RewriteResult, rewrite_shards
from .shard_fit import fit_shards
from .shard_plan import ShardPlan
from .shard_planning import plan_shards
from .shard_sidecar import ShardSidecar, read_shard_sidecar, shard_sidecar_paths
from .shards import DEFAULT_IMAGE_EXTS, ShardHashes, hash_shard, hash_shards
from .tar_samples import ShardReadError, iter_tar_samples

__all__ = [
    "DEFAULT_IMAGE_EXTS",
    "DedupFilter",
    "PlanError",
    "RewriteResult",
    "ShardHashes",
    "ShardPlan",
    "ShardReadError",
    "ShardSidecar",
    "dedup_filter",
    "fit_shards",
    "hash_shard",
    "hash_shards",
    "iter_tar_samples",
    "plan_shards",
    "read_shard_sidecar",
    "rewrite_shards",
    "shard_sidecar_paths",
]
