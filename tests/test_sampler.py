"""DedupSampler: held to torch's own DistributedSampler/RandomSampler, real loaders and real datasets."""

from __future__ import annotations

import logging
import math
import pickle

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, TensorDataset

from resume_utils import run_test_save_load_state, take
from test_sources import NoLen, Stream, fashion_mnist, image_folder
from torch_dedup.errors import DedupError, EmptyDedupError, PlanError
from torch_dedup.hamming.cluster import find_duplicates
from torch_dedup.planning import plan_dataset
from torch_dedup.embedded import load_sample
from torch_dedup.sampler import DedupSampler

# ------------------------------------------------------------------ plans and datasets


def make_plan(n: int, n_dups: int, seed: int = 0):
    """A real DedupPlan over ``n`` random 64-bit hashes where ``n_dups`` items are 1-bit copies of earlier ones."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    n_dups = min(n_dups, n - 1)
    copies = rng.choice(np.arange(1, n), size=n_dups, replace=False) if n_dups > 0 else np.zeros(0, int)
    for c in np.sort(copies):
        src = int(rng.integers(0, c))
        hashes[c] = hashes[src] ^ np.uint64(1 << int(rng.integers(0, 64)))
    return find_duplicates(hashes, threshold=2)


def index_ds(n: int) -> TensorDataset:
    """Items are their own indices: what a loader fetched is what the sampler yielded."""
    return TensorDataset(torch.arange(n))


class Unreadable(Dataset):
    """Any attempt to read an image fails: proves that a code path hashes nothing."""

    data = None

    def __len__(self):
        return 5

    def __getitem__(self, i):
        raise AssertionError("an image was read")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """The embedded Fashion-MNIST sample as a real torchvision FashionMNIST (10,000 items)."""
    return fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def fashion_plan(fashion, tmp_path_factory):
    return plan_dataset(fashion, 6, cache_dir=tmp_path_factory.mktemp("fm-cache"), progress=False)


# ------------------------------------------------------------------ DistributedSampler equivalence


def reference_order(kept, *, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=False, epoch=0):
    ref = DistributedSampler(range(len(kept)), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                             drop_last=drop_last)
    ref.set_epoch(epoch)
    return [int(kept[i]) for i in ref]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 70), dup_frac=st.floats(0, 0.9), replicas=st.integers(1, 6), drop_last=st.booleans(),
       shuffle=st.booleans(), seed=st.integers(0, 2**31), epoch=st.integers(0, 50))
def test_matches_distributed_sampler_over_kept(n, dup_frac, replicas, drop_last, shuffle, seed, epoch):
    plan = make_plan(n, int(n * dup_frac), seed=seed % 97)
    kept = plan.kept_indices
    ds = index_ds(n)
    if drop_last and len(kept) < replicas:
        with pytest.raises(EmptyDedupError, match="every rank would get nothing"):
            DedupSampler(ds, plan=plan, num_replicas=replicas, rank=0, drop_last=True)
        return
    per_rank = []
    for rank in range(replicas):
        s = DedupSampler(ds, plan=plan, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        s.set_epoch(epoch)
        got = list(s)
        ref = reference_order(kept, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed,
                              drop_last=drop_last, epoch=epoch)
        assert got == ref
        assert len(s) == len(got) == s.num_samples
        per_rank.append(got)
    # every rank the same length; together they cover the kept set (padding repeats, drop_last trims)
    assert len({len(p) for p in per_rank}) == 1
    union = {i for p in per_rank for i in p}
    assert union <= set(kept.tolist())
    if not drop_last:
        assert union == set(kept.tolist())
    else:
        assert len(union) == replicas * (len(kept) // replicas)


def test_one_process_is_a_seeded_random_sampler_over_kept():
    plan = make_plan(200, 60, seed=1)
    kept = plan.kept_indices.tolist()
    s = DedupSampler(index_ds(200), plan=plan, seed=11)
    epoch0 = list(s)
    assert sorted(epoch0) == kept and len(epoch0) == len(set(epoch0)) == len(s)   # each kept index exactly once
    g = torch.Generator()
    g.manual_seed(11)
    assert epoch0 == [kept[i] for i in torch.randperm(len(kept), generator=g).tolist()]
    s.set_epoch(1)
    epoch1 = list(s)
    assert sorted(epoch1) == kept and epoch1 != epoch0                             # epochs differ
    twin = DedupSampler(index_ds(200), plan=plan, seed=11)
    twin.set_epoch(1)
    assert list(twin) == epoch1                                                     # same seed+epoch, same order
    assert list(DedupSampler(index_ds(200), plan=plan, shuffle=False)) == kept      # dataset order


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), epochs=st.lists(st.integers(0, 10**4), min_size=2, max_size=4, unique=True))
def test_each_epoch_is_a_permutation_of_kept(seed, epochs):
    plan = make_plan(120, 40, seed=seed % 13)
    s = DedupSampler(index_ds(120), plan=plan, seed=seed)
    orders = []
    for e in epochs:
        s.set_epoch(e)
        order = list(s)
        assert sorted(order) == plan.kept_indices.tolist()
        orders.append(tuple(order))
    assert len(set(orders)) == len(orders)


def test_under_batch_sampler_and_dataloader():
    plan = make_plan(103, 30, seed=2)
    s = DedupSampler(index_ds(103), plan=plan, seed=4)
    s.set_epoch(2)
    order = list(s)
    batches = list(BatchSampler(s, batch_size=8, drop_last=False))
    assert [i for b in batches for i in b] == order
    assert len(batches) == math.ceil(len(order) / 8)
    loader = DataLoader(index_ds(103), batch_size=8, sampler=s)
    assert torch.cat([b[0] for b in loader]).tolist() == order


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers(context):
    plan = make_plan(150, 50, seed=3)
    ds = index_ds(150)
    s = DedupSampler(ds, plan=plan, seed=9)
    s.set_epoch(5)
    loader = DataLoader(ds, batch_size=16, sampler=s, num_workers=2, multiprocessing_context=context)
    got = torch.cat([b[0] for b in loader]).tolist()
    assert got == list(s) and sorted(got) == plan.kept_indices.tolist()


def test_epoch_indices_matches_iteration_and_is_readonly():
    plan = make_plan(50, 10)
    s = DedupSampler(index_ds(50), plan=plan, num_replicas=3, rank=2, seed=1)
    s.set_epoch(7)
    assert s.epoch_indices().tolist() == list(s)
    assert s.kept_indices.dtype == np.int64 and not s.kept_indices.flags.writeable
    assert s.epoch == 7 and s.plan is plan and s.num_samples == len(s)


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize("replicas,rank,drop_last,shuffle", [(1, 0, False, True), (3, 1, False, True),
                                                              (3, 2, True, True), (2, 0, False, False)])
def test_resume_from_every_point(replicas, rank, drop_last, shuffle):
    plan = make_plan(61, 20, seed=5)
    ds = index_ds(61)
    ref = run_test_save_load_state(
        lambda: DedupSampler(ds, plan=plan, num_replicas=replicas, rank=rank, drop_last=drop_last,
                             shuffle=shuffle, seed=21),
        before=lambda s: s.set_epoch(4))
    assert ref == reference_order(plan.kept_indices, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=21,
                                  drop_last=drop_last, epoch=4)


def test_resume_restores_the_epoch_and_set_epoch_of_another_epoch_starts_fresh():
    plan = make_plan(40, 5)
    ds = index_ds(40)
    s = DedupSampler(ds, plan=plan, seed=3)
    s.set_epoch(6)
    it = iter(s)
    head = take(it, 10)
    state = s.state_dict()
    rest = list(it)
    assert state["epoch"] == 6 and state["yielded"] == 10 and state["n_kept"] == plan.n_kept

    fresh = DedupSampler(ds, plan=plan, seed=3)          # epoch 0 until the state says otherwise
    fresh.load_state_dict(state)
    assert fresh.epoch == 6 and fresh.state_dict()["yielded"] == 10
    assert list(fresh) == rest
    assert list(fresh) == head + rest                    # the next epoch pass is whole again

    other = DedupSampler(ds, plan=plan, seed=3)
    other.load_state_dict(state)
    other.set_epoch(7)                                   # a new epoch: the saved offset no longer applies
    s.set_epoch(7)
    assert list(other) == list(s) and len(list(other)) == plan.n_kept


def test_state_after_a_finished_epoch_starts_the_next_epoch_whole():
    plan = make_plan(30, 5)
    s = DedupSampler(index_ds(30), plan=plan)
    s.set_epoch(2)
    list(s)
    state = s.state_dict()
    assert state["yielded"] == s.num_samples
    restored = DedupSampler(index_ds(30), plan=plan)
    restored.set_epoch(3)          # a training loop resumes at the next epoch
    restored.load_state_dict(state)
    s.set_epoch(3)
    assert list(restored) == list(s)


def test_state_dict_before_the_first_index_describes_the_new_epoch():
    plan = make_plan(30, 5)
    s = DedupSampler(index_ds(30), plan=plan)
    list(s)
    s.set_epoch(1)
    iter(s)
    assert s.state_dict()["yielded"] == 0


def test_load_state_dict_refuses_another_plan_or_setup():
    ds = index_ds(60)
    s = DedupSampler(ds, plan=make_plan(60, 10, seed=1))
    state = s.state_dict()
    with pytest.raises(ValueError, match="kept_digest|n_kept"):
        DedupSampler(ds, plan=make_plan(60, 12, seed=2)).load_state_dict(state)
    with pytest.raises(ValueError, match="num_replicas"):
        DedupSampler(ds, plan=make_plan(60, 10, seed=1), num_replicas=2, rank=0).load_state_dict(state)
    with pytest.raises(ValueError, match="'yielded'"):
        s.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="must be an int >= 0"):
        s.load_state_dict({**state, "yielded": -1})
    with pytest.raises(ValueError, match="exceeds"):
        s.load_state_dict({**state, "yielded": s.num_samples + 1})


class _Batches:
    """A StatefulDataLoader seen as lists of indices, for the round-trip helper."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return (b[0].tolist() for b in self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.14
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_with_torchdata_stateful_dataloader(num_workers):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    plan = make_plan(90, 25, seed=6)
    ds = index_ds(90)

    def make():
        s = DedupSampler(ds, plan=plan, seed=8)
        s.set_epoch(3)
        return _Batches(stateful.StatefulDataLoader(ds, batch_size=7, sampler=s, num_workers=num_workers))

    points = None if num_workers == 0 else [0, 1, 4, 9]
    ref = run_test_save_load_state(make, points=points)
    assert [i for b in ref for i in b] == reference_order(plan.kept_indices, seed=8, epoch=3)


# ------------------------------------------------------------------ pickling


def test_pickles_cheaply_without_the_plan():
    plan = make_plan(5000, 1000, seed=7)
    s = DedupSampler(index_ds(5000), plan=plan, seed=2)
    s.set_epoch(3)
    blob = pickle.dumps(s)
    assert len(blob) < plan.kept_indices.nbytes + 4096         # kept indices + small state, no O(n) plan arrays
    copy = pickle.loads(blob)
    assert list(copy) == list(s) and len(copy) == len(s)
    np.testing.assert_array_equal(copy.kept_indices, s.kept_indices)
    with pytest.raises(DedupError, match="unpickled copy"):
        copy.plan


# ------------------------------------------------------------------ real datasets, sidecar, log


def test_fashion_mnist_second_construction_from_sidecar(tmp_path, caplog):
    ds = fashion_mnist(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="torch_dedup.planning"):
        first = DedupSampler(ds, threshold=6, cache_dir=tmp_path / "cache", progress=False)
        second = DedupSampler(ds, threshold=6, cache_dir=tmp_path / "cache", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "torch_dedup.planning"]
    assert len(lines) == 2
    assert f"10000 -> {first.plan.n_kept} items kept" in lines[0] and "sidecar miss" in lines[0]
    assert "sidecar hit" in lines[1]
    assert first.plan.provenance["from_cache"] is False and second.plan.provenance["from_cache"] is True
    np.testing.assert_array_equal(first.kept_indices, second.kept_indices)
    # the oracle: the library's one-process plan over the same data
    np.testing.assert_array_equal(first.kept_indices, plan_dataset(ds, 6, cache_dir=False, progress=False).kept_indices)
    assert 0 < first.plan.n_kept < 10000 and list(first) != list(second.kept_indices)


def test_image_folder_near_duplicates_removed(tmp_path):
    tree = image_folder(tmp_path / "imgs", n_per_class=8)
    ds = torchvision.datasets.ImageFolder(tree["root"])
    paths = [p for p, _ in ds.samples]
    originals = np.array(["dup_" not in p for p in paths])
    # originals first (ImageFolder sorts dup_* before img_*): then a copy goes iff it is near its original
    s = DedupSampler(ds, threshold=8, priority=originals.astype(float), cache_dir=tmp_path / "cache",
                     progress=False)
    kept = set(s.kept_indices.tolist())
    assert set(np.flatnonzero(originals).tolist()) <= kept                 # distinct images all stay
    for copy, original in tree["dups"].items():
        if "dup_resized" in copy or "dup_jpeg" in copy:                     # robust copies (phash distance <= 6)
            assert paths.index(copy) not in kept
            assert s.plan.representative[paths.index(copy)] == paths.index(original)
    assert sorted(s) == sorted(kept)
    assert len(s) == len(kept) <= len(ds) - 4


def test_plan_path_loads_without_hashing(tmp_path, fashion, fashion_plan):
    path = fashion_plan.save(tmp_path / "fm.tdplan")
    s = DedupSampler(fashion, plan=path, threshold=fashion_plan.threshold)  # agrees with the plan: fine
    np.testing.assert_array_equal(s.kept_indices, fashion_plan.kept_indices)
    # a setting that contradicts the plan is refused, never silently overridden by it
    with pytest.raises(ValueError, match=r"threshold=0 \(the plan has 6\)"):
        DedupSampler(fashion, plan=path, threshold=0)
    with pytest.raises(ValueError, match=r"per_class=True \(the plan has False\)"):
        DedupSampler(fashion, plan=fashion_plan, per_class=True)
    # a dataset whose items cannot even be read: only its length and fingerprint are needed
    small = make_plan(5, 1)
    small_path = small.save(tmp_path / "small.tdplan")
    assert DedupSampler(Unreadable(), plan=small_path).kept_indices.tolist() == small.kept_indices.tolist()


def test_mismatching_plan_is_refused(tmp_path, fashion_plan):
    other = fashion_mnist(tmp_path / "other")
    other.data = other.data.flip(-1)                      # same length, other content
    with pytest.raises(PlanError, match="fingerprint"):
        DedupSampler(other, plan=fashion_plan)
    with pytest.raises(PlanError, match="10000 items but the dataset has 5"):
        DedupSampler(index_ds(5), plan=fashion_plan)
    with pytest.raises(TypeError, match="DedupPlan or the path"):
        DedupSampler(index_ds(5), plan=42)


# ------------------------------------------------------------------ errors


def test_iterable_or_unsized_dataset_is_a_type_error():
    with pytest.raises(TypeError, match="torch_dedup.wds"):
        DedupSampler(Stream())
    with pytest.raises(TypeError, match="no __len__"):
        DedupSampler(NoLen())


def test_empty_dataset_or_empty_plan(tmp_path):
    with pytest.raises(EmptyDedupError, match="empty"):
        DedupSampler(index_ds(0))
    images, _ = load_sample(20)
    ds = TensorDataset(torch.from_numpy(images.copy()))
    # against= the dataset itself at threshold 0: every item leaks, nothing is left
    with pytest.raises(EmptyDedupError, match="keeps none of the 20 items.*20 leaked"):
        DedupSampler(ds, threshold=0, against=ds, cache_dir=False, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_replicas=2, rank=3), r"Invalid rank 3, rank should be in the interval \[0, 1\]"),
    (dict(num_replicas=2, rank=-1), r"Invalid rank -1, rank should be in the interval \[0, 1\]"),
    (dict(num_replicas=0, rank=0), "num_replicas=0 must be an int >= 1"),
    (dict(num_replicas=2), "without rank"),
    (dict(rank=1), "without num_replicas"),
    (dict(threshold=65), r"threshold=65 must be an int in \[0, 64\]"),
    (dict(threshold=-1), r"threshold=-1 must be an int in \[0, 64\]"),
    (dict(policy="gready"), "policy='gready' must be one of"),
    (dict(method="md5"), "method='md5' is not a hash method"),
    (dict(on_error="ignore"), "on_error='ignore'"),
    (dict(seed=1.5), "seed=1.5 must be an int"),
])
def test_bad_options_fail_before_any_hashing(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DedupSampler(Unreadable(), **kwargs)


def test_set_epoch_rejects_non_int():
    s = DedupSampler(index_ds(10), plan=make_plan(10, 2))
    with pytest.raises(ValueError, match="epoch='1' must be an int"):
        s.set_epoch("1")
