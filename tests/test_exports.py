"""The public surface is pinned: sorted __all__ that names only things that exist."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from layering import check_violations

PACKAGES = ["torch_dedup", "torch_dedup.hashing", "torch_dedup.hamming"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_resolves(name):
    mod = importlib.import_module(name)
    assert sorted(mod.__all__) == mod.__all__
    assert len(set(mod.__all__)) == len(mod.__all__)
    for public in mod.__all__:
        assert hasattr(mod, public), public


def test_top_level_names():
    import torch_dedup
    assert {"DedupSampler", "DedupDataset", "DedupPlan", "hash_images", "hash_dataset", "hamming_pairs",
            "find_duplicates", "sweep_thresholds", "plan_dataset"} <= set(torch_dedup.__all__)


def test_numba_only_in_kernel_modules():
    """numba lives in the kernel modules only. The rule has one copy, THIRD_PARTY in
    tests/layering.py, which tests/test_layers.py enforces with the other import rules."""
    pkg = Path(__file__).resolve().parents[1] / "torch_dedup"
    bad = [str(v) for v in check_violations(pkg) if v.rule == "third-party" and v.imported.split(".")[0] == "numba"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("old,names", [
    ("torch_dedup.index", ["hash_dataset", "plan_dataset", "plan_from_hashes", "DatasetHashes", "sidecar_for"]),
    ("torch_dedup.distributed", ["hash_dataset_distributed", "plan_dataset_distributed", "PlanOptions",
                                 "resolve_plan", "is_distributed"]),
    ("torch_dedup.sample", ["load_sample", "SampleDataset", "CLASSES", "materialize_fashion_mnist"]),
])
def test_moved_modules_still_import_with_a_deprecation_warning(old, names):
    import sys
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace(".", r"\.")):
        mod = importlib.import_module(old)
    for name in names:
        assert hasattr(mod, name), f"{old}.{name} is gone"


def test_plan_entry_and_options_are_public():
    import torch_dedup
    assert {"DedupOptions", "plan_dataset"} <= set(torch_dedup.__all__)
    from torch_dedup.distributed_hashing import hash_dataset_distributed
    from torch_dedup.planning import plan_dataset
    assert torch_dedup.plan_dataset is plan_dataset and callable(hash_dataset_distributed)
