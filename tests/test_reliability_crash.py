"""Crash safety: SIGKILL at random points while writing plans, shard plans and rewritten shards, and
while hashing shards; what is left is the old valid file or the new valid one, never a partial file
that is later used, and a rerun completes the work. (Sidecar writes: tests/test_sidecar.py.)
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from torch_dedup.errors import PlanError
from torch_dedup.hamming.cluster import find_duplicates
from torch_dedup.plan import DedupPlan
from torch_dedup.wds.synthetic import make_demo_shards

#: Crash points per kill loop; docs/reliability.md reports these counts.
KILLS = 5


def _kill_loop(script: str, args: list[str], check, seed: int, max_delay: float) -> list[str]:
    """Start ``script`` KILLS times, SIGKILL it after a random delay once it says ready, call ``check()``."""
    rng = random.Random(seed)
    outcomes = []
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline().strip()
        assert line == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, max_delay))
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        proc.stdout.close()
        proc.stderr.close()
        outcomes.append(check())
    print(f"kill loop outcomes: {outcomes}")  # docs/reliability.md quotes these
    return outcomes


# ------------------------------------------------------------------ DedupPlan.save

_PLAN_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from torch_dedup.hamming.cluster import find_duplicates
    path = sys.argv[1]
    h = np.random.default_rng(0).integers(0, 2**16, size=100_000).astype(np.uint64)
    plans = [find_duplicates(h, threshold=t) for t in (0, 1)]
    print("ready", flush=True)
    k = 0
    while True:
        plans[k % 2].save(path)
        k += 1
""")


@pytest.mark.slow  # subprocess kill loop
def test_sigkill_while_saving_a_plan(tmp_path):
    target = tmp_path / "p.tdplan"
    h = np.random.default_rng(0).integers(0, 2**16, size=100_000).astype(np.uint64)
    want = {t: find_duplicates(h, threshold=t).keep for t in (0, 1)}

    def check():
        assert all(p.name.endswith(".tmp") for p in tmp_path.iterdir() if p != target)
        if not target.exists():
            return "absent"
        plan = DedupPlan.load(target)  # a partial file would raise here
        np.testing.assert_array_equal(plan.keep, want[plan.threshold])
        return f"valid t={plan.threshold}"

    outcomes = _kill_loop(_PLAN_WRITER, [str(target)], check, seed=1, max_delay=2.5)
    assert len(outcomes) == KILLS and any(o.startswith("valid") for o in outcomes)


# ------------------------------------------------------------------ ShardPlan.save and rewrite

@pytest.fixture(scope="module")
def shard_plan(tmp_path_factory):
    from torch_dedup.wds import plan_shards

    root = tmp_path_factory.mktemp("shards")
    urls = make_demo_shards(root, n_shards=3, per_shard=120, seed=5)
    plan = plan_shards(urls, threshold=6, out=root / "dedup.tdplan", progress=False)
    return root / "dedup.tdplan", plan


_SHARD_PLAN_WRITER = textwrap.dedent("""
    import sys
    from torch_dedup.wds import ShardPlan
    src, dst = sys.argv[1], sys.argv[2]
    plan = ShardPlan.load(src)
    print("ready", flush=True)
    while True:
        plan.save(dst)
""")


@pytest.mark.slow  # subprocess kill loop
def test_sigkill_while_saving_a_shard_plan(tmp_path, shard_plan):
    from torch_dedup.wds import ShardPlan

    src, plan = shard_plan
    target = tmp_path / "copy.tdplan"

    def check():
        if not target.exists():
            return "absent"
        got = ShardPlan.load(target)
        np.testing.assert_array_equal(got.drop, plan.drop)
        return "valid"

    outcomes = _kill_loop(_SHARD_PLAN_WRITER, [str(src), str(target)], check, seed=2, max_delay=1.0)
    assert len(outcomes) == KILLS


_REWRITER = textwrap.dedent("""
    import sys
    from torch_dedup.wds import rewrite_shards
    plan, out = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    while True:
        rewrite_shards(plan, out, maxcount=20, overwrite=True)
""")


def _samples(url):
    from torch_dedup.wds import iter_tar_samples

    return [(s.key, sorted((k, v[1]) for k, v in s.files.items())) for s in iter_tar_samples(url)]


@pytest.mark.slow  # subprocess kill loop
def test_sigkill_while_rewriting_shards_then_rerun_completes(tmp_path, shard_plan):
    from torch_dedup.wds import hash_shards, rewrite_shards

    plan_path, plan = shard_plan
    ref = rewrite_shards(plan_path, tmp_path / "ref", maxcount=20)
    want = {Path(p).name: _samples(p) for p in ref.shards}
    out = tmp_path / "out"

    def check():
        shards = sorted(out.glob("shard-*.tar")) if out.exists() else []
        for p in shards:  # every file under a shard name is complete (iter_tar_samples raises on a torn tar)
            assert _samples(str(p)) == want[p.name], p
        return f"{len(shards)} complete shards"

    outcomes = _kill_loop(_REWRITER, [str(plan_path), str(out)], check, seed=3, max_delay=3.0)
    assert len(outcomes) == KILLS
    # the rerun finishes the work and cleans what the killed writers left
    res = rewrite_shards(plan_path, out, maxcount=20, overwrite=True)
    assert [Path(p).name for p in res.shards] == sorted(want)
    assert {Path(p).name: _samples(p) for p in res.shards} == want
    assert not [p for p in out.iterdir() if p.name.startswith(".torch_dedup-rewrite-")]
    # the sidecars that are present are used only when they match: hashes equal the plan's
    h = hash_shards(sorted(str(p) for p in out.glob("shard-*.tar")), progress=False)
    got = np.concatenate([np.asarray(sc.hashes)[sc.valid] for sc in h.sidecars])
    np.testing.assert_array_equal(np.sort(got), np.sort(np.asarray(plan.hashes)[~plan.drop & (plan.status == 0)]))


# ------------------------------------------------------------------ hash_shards killed, then resumed

_SHARD_HASHER = textwrap.dedent("""
    import sys
    from torch_dedup.wds import hash_shards
    urls, sc_dir = sys.argv[1].split(","), sys.argv[2]
    print("ready", flush=True)
    hash_shards(urls, sidecar_dir=sc_dir, workers=0, progress=False, refresh=True)
    while True:
        hash_shards(urls, sidecar_dir=sc_dir, workers=0, progress=False, refresh=True)
""")


@pytest.mark.slow  # subprocess kill loop
def test_sigkill_while_hashing_shards_then_resume(tmp_path, caplog):
    from torch_dedup.wds import hash_shards

    urls = make_demo_shards(tmp_path / "s", n_shards=4, per_shard=150, seed=9)
    ref = hash_shards(urls, sidecar_dir=tmp_path / "ref", workers=0, progress=False)
    sc_dir = tmp_path / "sc"

    def check():
        with caplog.at_level(logging.WARNING):
            h = hash_shards(urls, sidecar_dir=sc_dir, workers=0, progress=False)
        assert "ignoring shard sidecar" not in caplog.text  # no torn sidecar was ever seen
        for a, b in zip(h.sidecars, ref.sidecars):
            np.testing.assert_array_equal(a.hashes, b.hashes)
        n = len(h.cached)
        for p in sc_dir.iterdir():  # make the next round start from scratch again
            p.unlink()
        return f"{n} of {len(urls)} shards reused"

    outcomes = _kill_loop(_SHARD_HASHER, [",".join(urls), str(sc_dir)], check, seed=4, max_delay=2.0)
    assert len(outcomes) == KILLS


# ------------------------------------------------------------------ damaged shard sidecars and plans

@pytest.mark.parametrize("how", ["truncated", "bitflip", "appended", "zeroed"])
def test_damaged_shard_sidecar_warns_and_recomputes(tmp_path, caplog, how):
    from torch_dedup.wds import hash_shards

    urls = make_demo_shards(tmp_path / "s", n_shards=1, per_shard=30, seed=2)
    first = hash_shards(urls, progress=False)
    (path,) = [p for p in Path(urls[0]).parent.rglob("*") if p.is_file() and p.suffix not in (".tar",)
               and "tdplan" not in p.name]
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "bitflip":
        data[len(data) * 2 // 3] ^= 0x10
    elif how == "appended":
        data += b"\0" * 8
    else:
        data = bytearray(len(data))
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = hash_shards(urls, progress=False)
    assert str(path) in caplog.text
    assert again.hashed == urls and again.cached == []
    np.testing.assert_array_equal(again.sidecars[0].hashes, first.sidecars[0].hashes)
    assert hash_shards(urls, progress=False).cached == urls  # rewritten, valid again


@pytest.mark.parametrize("how", ["truncated", "bitflip", "wrong_kind"])
def test_damaged_shard_plan_is_refused_naming_the_file(tmp_path, shard_plan, how):
    from torch_dedup.wds import ShardPlan, dedup_filter, rewrite_shards

    src, _ = shard_plan
    path = tmp_path / "bad.tdplan"
    if how == "wrong_kind":
        find_duplicates(np.arange(5, dtype=np.uint64), threshold=0).save(path)
    else:
        data = bytearray(Path(src).read_bytes())
        if how == "truncated":
            data = data[: len(data) - 7]
        else:
            data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    for use in (ShardPlan.load, dedup_filter, lambda p: rewrite_shards(p, tmp_path / "o")):
        with pytest.raises(PlanError) as info:
            use(path)
        assert str(path) in str(info.value)
        if how == "wrong_kind":  # a dataset's plan file: the message says what it is and how to make a shard plan
            assert "not a shard plan" in str(info.value) and "torch-dedup wds plan" in str(info.value)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ plans for another dataset

class _Arrays:
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], 0


def test_plan_of_another_dataset_is_refused_naming_the_file(tmp_path):
    from torch_dedup.dataset import DedupDataset
    from torch_dedup.planning import plan_dataset
    from torch_dedup.embedded import load_sample
    from torch_dedup.sampler import DedupSampler

    images = load_sample(40)[0]
    a, same_n, longer = _Arrays(images[:20]), _Arrays(images[20:40]), _Arrays(images[:30])
    path = tmp_path / "a.tdplan"
    plan_dataset(a, threshold=4, cache_dir=False, progress=False).save(path)
    for other, needle in ((same_n, "fingerprint"), (longer, "20 items")):
        for consumer in (DedupSampler, DedupDataset):
            with pytest.raises(PlanError) as info:
                consumer(other, plan=str(path), progress=False)
            assert str(path) in str(info.value) and needle in str(info.value)
    assert len(DedupSampler(a, plan=str(path), progress=False)) > 0   # the right dataset is fine
