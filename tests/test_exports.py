"""The public surface is pinned: sorted __all__ that names only things that exist."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

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


LOWER_LAYERS = ["errors.py", "_store.py", "_numba.py", "sidecar.py", "plan.py", "sample.py", "hashing", "hamming"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_lower_layers_never_import_torch_or_consumers():
    """design.md layers: kernels, hashing, sidecars and plans know nothing of torch, webdataset or ray."""
    pkg = Path(importlib.import_module("torch_dedup").__file__).parent
    files = [p for entry in LOWER_LAYERS for p in ([pkg / entry] if entry.endswith(".py")
                                                   else sorted((pkg / entry).glob("*.py")))]
    assert len(files) > 10
    for path in files:
        bad = _imports(path) & {"torch", "torchvision", "webdataset", "ray"}
        assert not bad, f"{path.relative_to(pkg)} imports {sorted(bad)}"


def test_numba_only_in_kernel_modules():
    pkg = Path(importlib.import_module("torch_dedup").__file__).parent
    users = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if "numba" in _imports(p))
    assert all(u == "_numba.py" or Path(u).name.startswith("_") and "kernels" in u for u in users), users
