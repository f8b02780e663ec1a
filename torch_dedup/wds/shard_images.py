"""Images of chosen samples of a :class:`ShardPlan`, for reports: each shard read at most once.

Shards are streams, so there is no cheap random access to sample ``i``. :class:`ShardImages`
is told up front which corpus indices will be asked for (a report shows a few hundred),
reads a shard the first time one of its samples is asked for, and keeps only the wanted
images' bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import numpy as np

from torch_dedup.errors import PlanError

from .shard_plan import ShardPlan
from .shard_urls import shard_name
from .tar_samples import iter_tar_samples

__all__ = ["SampleNames", "ShardImages"]


class ShardImages:
    """``image_of(i)`` for a shard plan: the PIL image of corpus sample ``i``.

    Args:
        plan: the :class:`ShardPlan`.
        wanted: the corpus indices that will be asked for.

    Raises:
        ValueError: (on call) an index not in ``wanted`` or without an image.
        PlanError: (on call) the shard no longer holds the keys the plan lists.

    Example:
        >>> image_of = ShardImages(plan, [0, 5])  # doctest: +SKIP
        >>> image_of(5).size  # doctest: +SKIP
        (64, 64)
    """

    def __init__(self, plan: ShardPlan, wanted: Iterable[int]):
        self.plan = plan
        self.wanted = {int(i) for i in wanted}
        self._bytes: dict[int, bytes] = {}
        self._read: set[int] = set()

    def __call__(self, i: int):
        from PIL import Image

        i = int(i)
        if i not in self.wanted:
            raise ValueError(f"sample {i} was not among the wanted indices given to ShardImages")
        s = int(np.searchsorted(self.plan.shard_offsets, i, side="right")) - 1
        if s not in self._read:
            self._load(s)
        if i not in self._bytes:
            url, key = self.plan.sample(i)
            raise ValueError(f"sample {key!r} of shard {url} has no image member "
                             f"(suffixes {self.plan.settings['image_exts']})")
        return Image.open(io.BytesIO(self._bytes[i]))

    def _load(self, s: int) -> None:
        url, a = self.plan.shards[s]["url"], int(self.plan.shard_offsets[s])
        keys, exts = self.plan.shard_keys(s), tuple(self.plan.settings["image_exts"])
        for j, sample in enumerate(iter_tar_samples(url)):
            if j >= len(keys) or sample.key != keys[j]:
                raise PlanError(self.plan.path or "<ShardPlan>",
                                f"shard {url!r} sample {j} is {sample.key!r}, not what the plan lists: the shard "
                                "changed since the plan was made; hash and plan again")
            if a + j in self.wanted and sample.complete:
                ext = next((e for e in exts if e in sample.files), None)
                if ext is not None:
                    self._bytes[a + j] = sample.files[ext][1]
            if j + 1 == len(keys):
                break
        self._read.add(s)


class SampleNames(Sequence):
    """``names[i]`` = ``"shard-000003.tar:000042"`` for corpus sample ``i`` (built on demand)."""

    def __init__(self, plan: ShardPlan):
        self.plan = plan

    def __len__(self) -> int:
        return self.plan.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        url, key = self.plan.sample(int(i))
        return f"{shard_name(url)}:{key}"
