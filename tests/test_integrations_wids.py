"""DedupSampler over a ``wids.ShardListDataset`` (webdataset's indexed shard reader), with the shard plan
from :mod:`torch_dedup.wds`, on real shards written by :func:`torch_dedup.wds.synthetic.make_demo_shards`."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

wids = pytest.importorskip("wids")
from torch.utils.data import DataLoader  # noqa: E402

from torch_dedup import DedupSampler  # noqa: E402
from torch_dedup.plan import DedupPlan  # noqa: E402
from torch_dedup.wds import plan_shards  # noqa: E402
from torch_dedup.wds.synthetic import make_demo_shards  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("wids")
    urls = make_demo_shards(out, n_shards=3, per_shard=30, dup_fraction=0.3, seed=4)
    plan = plan_shards(urls, threshold=6, progress=False, out=out / "plan.tdplan")
    return urls, plan, out / "plan.tdplan"


def _wids(urls):
    counts = []
    for u in urls:
        with tarfile.open(u) as tar:
            counts.append(len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()}))
    return wids.ShardListDataset([{"url": u, "nsamples": c} for u, c in zip(urls, counts)],
                                 transformations=[], cache_dir=str(Path(urls[0]).parent / "cache"))


@pytest.mark.parametrize("how", ["object", "file"])
def test_sampler_over_wids_follows_the_shard_plan(shards, how):
    urls, shard_plan, path = shards
    ds = _wids(urls)
    assert len(ds) == shard_plan.n
    plan = shard_plan.as_dedup_plan() if how == "object" else DedupPlan.load(path)
    assert plan.n_kept < plan.n  # near-duplicates are removed
    sampler = DedupSampler(ds, plan=plan, seed=2)
    assert sorted(sampler) == plan.kept_indices.tolist()
    # item i of the wids dataset is corpus sample i of the plan: same shard, same key
    for i in plan.kept_indices[:40].tolist():
        url, key = shard_plan.sample(i)
        assert ds[i]["__key__"] == key and ds[i]["__shard__"] == url
    # and a DataLoader reads exactly the kept samples
    loader = DataLoader(ds, batch_size=None, sampler=sampler, collate_fn=lambda s: s["__key__"])
    keys = list(loader)
    assert sorted(keys) == sorted(shard_plan.sample(i)[1] for i in plan.kept_indices.tolist())


def test_split_by_rank_covers_the_kept_samples(shards):
    urls, shard_plan, _ = shards
    ds = _wids(urls)
    plan = shard_plan.as_dedup_plan()
    parts = [list(DedupSampler(ds, plan=plan, num_replicas=2, rank=r)) for r in range(2)]
    assert set(parts[0]) | set(parts[1]) == set(plan.kept_indices.tolist())
    assert len(parts[0]) == len(parts[1])
