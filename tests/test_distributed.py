"""Hashing once across a real 2-process torch.distributed (gloo, CPU) group.

The ranks run in processes started with ``torch.multiprocessing.start_processes`` (spawn);
each writes what it saw to ``tmp_path`` and the test compares them with a one-process run.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from ddp_utils import run_ranks
from resume_utils import assert_partition
from torch_dedup import hash_dataset, plan_dataset
from torch_dedup.embedded import load_sample

pytestmark = pytest.mark.slow   # two spawned ranks: ~15-30 s

WORLD = 2
N_BASE = 600


class Images(Dataset):
    """An in-memory image dataset read through ``image_fn`` (so every image access can be counted)."""

    def __init__(self):
        images, labels = load_sample(N_BASE)
        # every 5th image again, shifted by one pixel: known near-duplicates at the end
        self.data = np.concatenate([images, np.roll(images[::5], 1, axis=2)])
        self.targets = np.concatenate([labels, labels[::5]]).tolist()

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return torch.from_numpy(self.data[i].copy()), self.targets[i]


class Probe(Dataset):
    """A "test set" holding 40 of the base images; the array fast path (``.data``)."""

    def __init__(self):
        self.data = np.ascontiguousarray(load_sample(N_BASE)[0][100:140])

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], 0


def _run_rank(rank: int, out: str, init: str) -> None:
    # Everything is imported inside: this runs in a fresh spawned interpreter.
    from torch_dedup.dataset import DedupDataset
    from torch_dedup.distributed_hashing import hash_dataset_distributed
    from torch_dedup.errors import ImageDecodeError
    from torch_dedup.sampler import DedupSampler

    out = Path(out)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    report: dict = {}
    try:
        ds = Images()
        seen: list[int] = []

        def image_fn(i):
            seen.append(i)
            return ds.data[i]

        cache = out / "cache"
        # 1. nothing cached: each rank hashes its slice, rank 0 writes the sidecar
        s = DedupSampler(ds, threshold=4, image_fn=image_fn, cache_dir=cache, progress=False, seed=7,
                         fingerprint="v1")
        s.set_epoch(2)
        np.save(out / f"keep_{rank}.npy", s.plan.keep)
        np.save(out / f"epoch_{rank}.npy", np.asarray(list(s), dtype=np.int64))
        report["first_seen"] = sorted(set(seen))
        report["first_from_cache"] = bool(s.plan.provenance["from_cache"])
        report["len"] = len(s)
        # 2. again: every rank reads the sidecar, no image is touched
        seen.clear()
        again = DedupSampler(ds, threshold=4, image_fn=image_fn, cache_dir=cache, progress=False, seed=7,
                         fingerprint="v1")
        report["second_seen"] = len(seen)
        report["second_from_cache"] = bool(again.plan.provenance["from_cache"])
        report["second_same"] = bool(np.array_equal(again.plan.keep, s.plan.keep))
        dd = DedupDataset(ds, threshold=4, image_fn=image_fn, cache_dir=cache, progress=False, fingerprint="v1")
        report["dataset_same"] = bool(np.array_equal(dd.indices, s.kept_indices))
        # 3. only rank 0 can read a sidecar (node-local caches): it broadcasts the hashes
        own_cache = out / f"local_{rank}"
        if rank == 0:
            from torch_dedup.dataset_hashes import hash_dataset as local_hash
            local_hash(ds, image_fn=image_fn, cache_dir=own_cache, progress=False, fingerprint="v1")
        seen.clear()
        h = hash_dataset_distributed(ds, image_fn=image_fn, cache_dir=own_cache, progress=False, fingerprint="v1")
        report["bcast_seen"] = len(seen)
        report["bcast_from_cache"] = bool(h.from_cache)
        np.save(out / f"bcast_{rank}.npy", h.hashes)
        # 4. against= another dataset (hashed once across the group too): the leakage filter
        leak = DedupSampler(ds, threshold=4, against=Probe(), cache_dir=out / f"against_{rank}", progress=False)
        np.save(out / f"against_keep_{rank}.npy", leak.plan.keep)
        # 5. an undecodable image on rank 1's slice raises on both ranks (nobody waits forever)
        bad = len(ds) - 3

        def broken(i):
            if i == bad:
                raise OSError("truncated file")
            return ds.data[i]

        try:
            DedupSampler(ds, threshold=4, image_fn=broken, cache_dir=False, progress=False)
            report["broken"] = "no error"
        except ImageDecodeError as exc:
            report["broken"] = f"ImageDecodeError index={exc.index}"
    except Exception:  # noqa: BLE001 - the test reads the traceback
        report["error"] = traceback.format_exc()
    finally:
        (out / f"report_{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    init = f"file://{out / 'rendezvous'}"
    return out, run_ranks(_run_rank, (str(out), init), out, nprocs=WORLD, timeout_s=120)


def test_both_ranks_hold_the_one_process_plan(ddp_run):
    out, reports = ddp_run
    keeps = [np.load(out / f"keep_{r}.npy") for r in range(WORLD)]
    np.testing.assert_array_equal(keeps[0], keeps[1])
    ds = Images()
    ref = plan_dataset(ds, 4, image_fn=lambda i: ds.data[i], cache_dir=False, progress=False)
    np.testing.assert_array_equal(keeps[0], ref.keep)
    assert N_BASE // 2 < ref.n_kept < len(ds)               # the shifted copies are found


def test_each_item_hashed_once_and_sidecar_written_once(ddp_run):
    out, reports = ddp_run
    n = N_BASE + N_BASE // 5
    half = n // 2
    assert reports[0]["first_seen"] == list(range(0, half))
    assert reports[1]["first_seen"] == list(range(half, n))
    assert not reports[0]["first_from_cache"] and not reports[1]["first_from_cache"]
    sidecars = list((out / "cache").glob("*.tdhash"))
    assert len(sidecars) == 1
    # the sidecar holds what a one-process run computes
    ds = Images()
    one = hash_dataset(ds, image_fn=lambda i: ds.data[i], cache_dir=False, progress=False)
    from torch_dedup.sidecar import read_sidecar
    np.testing.assert_array_equal(read_sidecar(sidecars[0]).hashes, one.hashes)


def test_second_run_reads_the_sidecar_on_every_rank(ddp_run):
    _, reports = ddp_run
    for rep in reports:
        assert rep["second_seen"] == 0 and rep["second_from_cache"] and rep["second_same"] and rep["dataset_same"]


def test_one_epoch_over_ranks_is_the_kept_set(ddp_run):
    out, reports = ddp_run
    keep = np.load(out / "keep_0.npy")
    kept = np.flatnonzero(keep).tolist()
    parts = [np.load(out / f"epoch_{r}.npy").tolist() for r in range(WORLD)]
    assert len(parts[0]) == len(parts[1]) == reports[0]["len"] == reports[1]["len"]
    pad = WORLD * reports[0]["len"] - len(kept)
    assert 0 <= pad < WORLD
    # the shared order interleaves the ranks; its first len(kept) positions are each kept item once
    shared = [parts[j % WORLD][j // WORLD] for j in range(WORLD * reports[0]["len"])]
    assert_partition([shared[: len(kept)]], kept)
    assert shared[len(kept):] == shared[:pad]                # padding repeats from the start
    # rank r takes every WORLD-th position of the shared shuffled order
    from torch.utils.data import DistributedSampler
    for r in range(WORLD):
        ref = DistributedSampler(range(len(kept)), num_replicas=WORLD, rank=r, seed=7)
        ref.set_epoch(2)
        assert parts[r] == [kept[i] for i in ref]


def test_partial_cache_is_broadcast(ddp_run):
    out, reports = ddp_run
    assert reports[0]["bcast_seen"] == 0 and reports[1]["bcast_seen"] == 0
    assert reports[0]["bcast_from_cache"] and reports[1]["bcast_from_cache"]
    np.testing.assert_array_equal(np.load(out / "bcast_0.npy"), np.load(out / "bcast_1.npy"))


def test_a_failure_on_one_rank_raises_on_all(ddp_run):
    _, reports = ddp_run
    n = N_BASE + N_BASE // 5
    for rep in reports:
        assert rep["broken"] == f"ImageDecodeError index={n - 3}"


def test_hash_dataset_distributed_needs_a_process_group():
    from torch_dedup.distributed_hashing import hash_dataset_distributed
    with pytest.raises(RuntimeError, match="init_process_group"):
        hash_dataset_distributed(Images())


def test_against_is_the_one_process_leak_filter(ddp_run):
    out, _ = ddp_run
    keeps = [np.load(out / f"against_keep_{r}.npy") for r in range(WORLD)]
    np.testing.assert_array_equal(keeps[0], keeps[1])
    ds = Images()
    ref = plan_dataset(ds, 4, against=Probe(), image_fn=None, cache_dir=False, progress=False)
    np.testing.assert_array_equal(keeps[0], ref.keep)
    assert ref.leaked[100:140].all()
