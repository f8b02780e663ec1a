"""DedupDataset: held to torch's Subset over the plan's kept indices, on real torchvision datasets."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import transforms

from test_sampler import NoLen, Stream, Unreadable, make_plan
from test_sources import cifar10, fashion_mnist, image_folder
from torch_dedup.dataset import DedupDataset
from torch_dedup.errors import DedupError, EmptyDedupError, PlanError
from torch_dedup.planning import plan_dataset
from torch_dedup.sampler import DedupSampler


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return fashion_mnist(tmp_path_factory.mktemp("fmnist"), transform=transforms.PILToTensor())


@pytest.fixture(scope="module")
def fashion_dd(fashion, tmp_path_factory):
    return DedupDataset(fashion, threshold=6, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


class Batched(Dataset):
    """A base with a batched fetch, recording what it was asked for."""

    def __init__(self, n):
        self.n, self.calls = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return ("single", int(i))

    def __getitems__(self, indices):
        self.calls.append(list(indices))
        return [("batched", int(i)) for i in indices]


def test_items_match_subset_of_kept(fashion, fashion_dd):
    kept = fashion_dd.plan.kept_indices
    ref = Subset(fashion, kept.tolist())
    assert len(fashion_dd) == len(ref) == fashion_dd.plan.n_kept < len(fashion)
    for i in [0, 1, 17, len(ref) - 1, -1, -len(ref)]:
        img, label = fashion_dd[i]
        ref_img, ref_label = ref[i]
        assert torch.equal(img, ref_img) and label == ref_label
    assert fashion_dd.dataset is fashion and fashion_dd.indices.tolist() == kept.tolist()
    with pytest.raises(IndexError, match="out of range"):
        fashion_dd[len(ref)]


def test_targets_and_classes_of_kept_items(fashion, fashion_dd, tmp_path):
    kept = fashion_dd.indices
    assert isinstance(fashion.targets, torch.Tensor)
    t = fashion_dd.targets
    assert isinstance(t, torch.Tensor) and torch.equal(t, fashion.targets[torch.from_numpy(kept.copy())])
    assert fashion_dd.classes == fashion.classes and fashion_dd.class_to_idx == fashion.class_to_idx
    # CIFAR10 keeps targets as a list (and its test batch has injected duplicates)
    cif = cifar10(tmp_path / "cifar")
    dd = DedupDataset(cif, threshold=6, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(cif.targets, list) and isinstance(dd.targets, list)
    assert dd.targets == [cif.targets[i] for i in dd.indices]
    assert len(dd) < len(cif)
    assert not hasattr(DedupDataset(TensorDataset(torch.arange(5)), plan=make_plan(5, 1)), "targets")


def test_getitems_is_forwarded_like_subset():
    plan = make_plan(40, 10, seed=3)
    base = Batched(40)
    dd = DedupDataset(base, plan=plan)
    ref = Subset(Batched(40), plan.kept_indices.tolist())
    assert dd.__getitems__([0, 3, 5]) == ref.__getitems__([0, 3, 5])
    assert base.calls == [[int(plan.kept_indices[i]) for i in (0, 3, 5)]]
    # a loader's batched fetch goes through it too
    loader = DataLoader(dd, batch_size=4, collate_fn=lambda b: b)
    got = [x for batch in loader for x in batch]
    assert got == [("batched", int(i)) for i in plan.kept_indices]
    # without a batched base, items one by one
    plain = DedupDataset(TensorDataset(torch.arange(40)), plan=plan)
    assert [int(x[0]) for x in plain.__getitems__([1, 2])] == plan.kept_indices[[1, 2]].tolist()
    assert plain[[0, 1]][0].tolist() == plan.kept_indices[[0, 1]].tolist()   # list index, as Subset


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 80), frac=st.floats(0, 0.9), seed=st.integers(0, 1000))
def test_same_items_as_the_sampler_kept_set(n, frac, seed):
    plan = make_plan(n, int(n * frac), seed=seed)
    ds = TensorDataset(torch.arange(n))
    dd = DedupDataset(ds, plan=plan)
    assert [int(dd[i][0]) for i in range(len(dd))] == sorted(DedupSampler(ds, plan=plan))


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers_over_dedup_dataset(fashion_dd, context):
    loader = DataLoader(fashion_dd, batch_size=500, num_workers=2, multiprocessing_context=context)
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, fashion_dd.targets)


def test_image_folder_copies_dropped_and_pickled_copy(tmp_path):
    tree = image_folder(tmp_path / "imgs", n_per_class=6)
    ds = torchvision.datasets.ImageFolder(tree["root"], transform=transforms.ToTensor())
    paths = [p for p, _ in ds.samples]
    dd = DedupDataset(ds, threshold=6, cache_dir=tmp_path / "cache", progress=False)
    kept_paths = {paths[i] for i in dd.indices}
    for copy, original in tree["dups"].items():
        if "dup_resized" in copy or "dup_jpeg" in copy:
            assert len({copy, original} & kept_paths) <= 1      # never both an image and its robust copy
    kept = set(dd.indices.tolist())
    removed = dd.plan.removed_indices.tolist()
    assert len(removed) >= 2 and all(int(dd.plan.representative[i]) in kept for i in removed)
    assert dd.targets == [ds.targets[i] for i in dd.indices]
    blob = pickle.dumps(dd)
    twin = pickle.loads(blob)
    assert len(twin) == len(dd) and torch.equal(twin[3][0], dd[3][0])
    assert twin.report() == dd.report() == dd.plan.summary()
    with pytest.raises(DedupError, match="unpickled copy"):
        twin.plan


def test_plan_file_and_errors(tmp_path, fashion, fashion_dd):
    path = fashion_dd.plan.save(tmp_path / "p.tdplan")
    again = DedupDataset(fashion, plan=path)
    assert again.indices.tolist() == fashion_dd.indices.tolist()
    with pytest.raises(PlanError, match="10000 items but the dataset has 3"):
        DedupDataset(TensorDataset(torch.arange(3)), plan=path)
    with pytest.raises(TypeError, match="torch_dedup.wds"):
        DedupDataset(Stream())
    with pytest.raises(TypeError, match="no __len__"):
        DedupDataset(NoLen())
    with pytest.raises(EmptyDedupError, match="empty"):
        DedupDataset(TensorDataset(torch.zeros(0)))
    with pytest.raises(ValueError, match="policy='x'"):
        DedupDataset(Unreadable(), policy="x")


def test_same_plan_as_plan_dataset(fashion, fashion_dd):
    # the oracle: the index layer's plan for the same data and options
    np.testing.assert_array_equal(fashion_dd.indices,
                                  plan_dataset(fashion, 6, cache_dir=False, progress=False).kept_indices)
    assert "kept" in fashion_dd.report() and repr(fashion_dd).startswith("DedupDataset(FashionMNIST")
