"""The pipelines docs/webdataset.md shows, run as written on 2 torch.distributed ranks (gloo) x 2
DataLoader workers: the union of what the ranks see is the plan's kept set, each sample once; with
the equal-counts recipe every rank yields the same number of batches, none repeated.

The snippets are read from the doc itself, so a change to the doc is tested. To know which
sample is which, ``decode`` and ``to_tuple`` are replaced by stages that keep ``(__url__, __key__)``;
the sharding, shuffling, filtering and batching stages run as written.
"""

from __future__ import annotations

import collections
import json
import os
import re
import traceback
from pathlib import Path

import pytest

from ddp_utils import run_ranks
from torch_dedup.wds import plan_shards
from torch_dedup.wds.synthetic import make_demo_shards

pytestmark = [pytest.mark.slow,  # two spawned ranks, each with two DataLoader workers
              pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

WORLD, WORKERS = 2, 2
DOC = Path(__file__).resolve().parents[1] / "docs" / "webdataset.md"


def doc_snippet(needle: str) -> str:
    """The python block of docs/webdataset.md that contains ``needle``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    found = [b for b in blocks if needle in b]
    assert len(found) == 1, f"{len(found)} python blocks of {DOC} contain {needle!r}"
    return found[0]


def _same(sample):
    return sample


def _identity(sample):
    return sample["__url__"], sample["__key__"]


def _identity_wds():
    """webdataset, with decode and to_tuple replaced by stages that keep each sample's identity
    (module-level functions: DataLoader workers are spawned and pickle the pipeline)."""
    import types

    import webdataset as wds

    ns = types.SimpleNamespace(**{k: getattr(wds, k) for k in dir(wds) if not k.startswith("__")})
    ns.decode = lambda *a, **k: wds.map(_same)
    ns.to_tuple = lambda *a, **k: wds.map(_identity)
    return ns


def _ids(batch) -> list[tuple[str, str]]:
    urls, keys = batch  # webdataset's default collation: one list per tuple field
    return list(zip(urls, keys))


def _run_rank(rank: int, out: str, init: str, urls: list, plan_path: str) -> None:
    import torch
    import torch.distributed as dist

    from torch_dedup.wds import ShardPlan, dedup_filter

    report: dict = {}
    try:
        # webdataset's split_by_node reads RANK/WORLD_SIZE in DataLoader workers (no process group there)
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD))
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
        plan = ShardPlan.load(plan_path)
        env = {"wds": _identity_wds(), "dedup_filter": dedup_filter, "urls": urls, "plan": plan,
               "world_size": dist.get_world_size(), "num_workers": WORKERS}
        exec(doc_snippet("wds.DataPipeline("), env)
        loader = torch.utils.data.DataLoader(env["pipe"], batch_size=None, num_workers=WORKERS,
                                             multiprocessing_context="fork")
        report["seen"] = [i for b in loader for i in _ids(b)]
        exec(doc_snippet("split_kept_counts"), env)
        loader = torch.utils.data.DataLoader(env["pipe"], batch_size=None, num_workers=WORKERS,
                                             multiprocessing_context="fork")
        batches = [_ids(b) for b in loader]
        report["equal_batches"] = len(batches)
        report["equal_seen"] = [i for b in batches for i in b]
        report["batch_sizes"] = sorted({len(b) for b in batches})
        counts = torch.tensor([len(batches)])
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)  # a rank with fewer batches would stall DDP here
        report["max_batches"] = int(counts)
        dist.barrier()
    except BaseException:
        report["error"] = traceback.format_exc()
    finally:
        (Path(out) / f"report_{rank}.json").write_text(json.dumps(report))
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    urls = make_demo_shards(out / "shards", n_shards=10, per_shard=70, dup_fraction=0.3, no_image_every=17,
                            size=32, seed=21)
    plan = plan_shards(urls, 6, workers=0, progress=False, out=out / "dedup.tdplan")
    reports = run_ranks(_run_rank, (str(out), f"file://{out / 'rendezvous'}", urls, plan.path), out,
                        nprocs=WORLD, timeout_s=240)
    return plan, reports


def test_documented_pipeline_on_2_ranks_x_2_workers_sees_the_kept_set_once(ranks):
    plan, reports = ranks
    union = collections.Counter(tuple(i) for r in reports for i in r["seen"])
    kept = collections.Counter(plan.kept())
    assert plan.n_removed > 0 and all(r["seen"] for r in reports)
    assert max(union.values()) == 1, "a sample seen twice in one epoch"
    assert union == kept


def test_equal_counts_recipe_gives_every_rank_the_same_batches(ranks):
    plan, reports = ranks
    counts = plan.split_kept_counts(WORLD, WORKERS)
    want = WORKERS * (int(counts.min()) // 64)
    assert counts.max() > counts.min()  # the shards do differ: without the recipe the ranks would too
    assert [r["equal_batches"] for r in reports] == [want, want] and want > 0
    assert all(r["max_batches"] == want and r["batch_sizes"] == [64] for r in reports)
    union = collections.Counter(tuple(i) for r in reports for i in r["equal_seen"])
    assert max(union.values()) == 1 and set(union) <= set(plan.kept())
    # without with_epoch the ranks' shares differ (what the recipe fixes)
    assert len({len(r["seen"]) for r in reports}) == 2


def test_split_kept_counts_follows_split_by_node_and_worker(tmp_path):
    urls = make_demo_shards(tmp_path, n_shards=5, per_shard=9, dup_fraction=0.4, seed=3)
    plan = plan_shards(urls, 6, workers=0, progress=False)
    per_shard = collections.Counter(u for u, _ in plan.kept())
    counts = plan.split_kept_counts(2, 2)
    for rank in range(2):
        mine = urls[rank::2]
        for worker in range(2):
            assert counts[rank, worker] == sum(per_shard[u] for u in mine[worker::2])
    assert counts.sum() == plan.n_kept
    with pytest.raises(ValueError, match="no shard"):
        plan.split_kept_counts(3, 2)
    with pytest.raises(ValueError, match="world_size"):
        plan.split_kept_counts(0)
