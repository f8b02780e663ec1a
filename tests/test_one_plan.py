"""One plan, one meaning: the CLI leak gate, the sampler's leakage filter and ``plan_dataset``
agree on the same data and options, and the options object is validated once for all.

The CIFAR-10 test reads the real JPEG folders from ../shared/data when present (skips otherwise).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from test_cli import T_LEAK, leak_folders, run  # noqa: F401 - leak_folders is a fixture

from torch_dedup import DedupDataset, DedupOptions, DedupSampler, EmptyDedupError, plan_dataset
from torch_dedup.embedded import load_sample

CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


def _cli_leak(train: str, test: str, t: int, tmp_path: Path, *extra: str) -> tuple[dict, list[str]]:
    keep = tmp_path / "keep.txt"
    r = run("leak", train, test, "-t", str(t), "--json", "--no-progress", "--workers", "0", "--cache-dir",
            str(tmp_path / "c"), "--keep-list", str(keep), *extra)
    assert r.returncode in (0, 3), r.stderr
    return json.loads(r.stdout), keep.read_text().splitlines()


@pytest.mark.parametrize("extra", [(), ("--per-class",), ("--policy", "components")])
def test_cli_leak_and_sampler_against_remove_the_same_items(leak_folders, tmp_path, extra):  # noqa: F811
    root = leak_folders
    train = torchvision.datasets.ImageFolder(str(root / "train"))
    test = torchvision.datasets.ImageFolder(str(root / "test"))
    got, keep = _cli_leak(str(root / "train"), str(root / "test"), T_LEAK, tmp_path, "--dedup", *extra)
    per_class = "--per-class" in extra
    policy = extra[1] if "--policy" in extra else "greedy"
    sampler = DedupSampler(train, threshold=T_LEAK, against=test, per_class=per_class, policy=policy,
                           cache_dir=False, workers=0, progress=False)
    # --dedup's clean split is the sampler's keep set, item for item
    assert keep == [train.samples[i][0] for i in sampler.kept_indices.tolist()]
    leaked = np.flatnonzero(sampler.plan.leaked)
    assert got["leaked_train"] == len(leaked) == 2
    # labels never restrict a leak: per_class changes the dedup within TRAIN only
    assert got["contaminated_test"] == 2 and got["n_pairs"] == 2


def test_cli_leak_without_dedup_drops_exactly_the_plans_leaked_items(leak_folders, tmp_path):  # noqa: F811
    root = leak_folders
    train = torchvision.datasets.ImageFolder(str(root / "train"))
    test = torchvision.datasets.ImageFolder(str(root / "test"))
    _, keep = _cli_leak(str(root / "train"), str(root / "test"), T_LEAK, tmp_path)
    plan = plan_dataset(train, T_LEAK, against=test, cache_dir=False, workers=0, progress=False)
    clean = np.flatnonzero(~(plan.leaked | plan.failed))
    assert keep == [train.samples[i][0] for i in clean.tolist()]


def test_cross_label_copy_is_a_leak_in_api_and_cli(tmp_path):
    """A test image copied into TRAIN under another label leaks, per_class or not, in both."""
    images, labels = load_sample(300)
    train_x, train_y = images[:200].copy(), labels[:200].copy()
    train_x[5] = images[250]
    train_y[5] = (labels[250] + 1) % 10                       # same picture, other label
    test_x, test_y = images[200:300], labels[200:300]
    np.savez(tmp_path / "train.npz", images=train_x, labels=train_y)
    np.savez(tmp_path / "test.npz", images=test_x, labels=test_y)
    got, keep = _cli_leak(str(tmp_path / "train.npz"), str(tmp_path / "test.npz"), 0, tmp_path, "--per-class")
    assert [50, 5, 0] in got["pairs"]                        # (test index, train index, distance)

    class Arr(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.data, self.targets = x, y

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return self.data[i], int(self.targets[i])

    plan = plan_dataset(Arr(train_x, train_y), 0, per_class=True, against=Arr(test_x, test_y), cache_dir=False,
                        progress=False)
    assert plan.leaked[5]
    assert "5" not in keep
    assert sorted(int(k) for k in keep) == np.flatnonzero(~(plan.leaked | plan.failed)).tolist()


def test_options_object_and_individual_settings_are_one_thing(tmp_path):
    images, _ = load_sample(64)
    data = np.concatenate([images, images[:8]])

    class Arr(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i], 0

    opts = DedupOptions(threshold=4, cache_dir=False, progress=False)
    a = DedupSampler(Arr(), options=opts).kept_indices
    b = DedupSampler(Arr(), threshold=4, cache_dir=False, progress=False).kept_indices
    c = DedupDataset(Arr(), options=opts).indices
    d = plan_dataset(Arr(), options=opts).kept_indices
    assert a.tolist() == b.tolist() == c.tolist() == d.tolist() and len(a) == 64
    with pytest.raises(TypeError, match="either options= or the individual settings"):
        DedupSampler(Arr(), threshold=5, options=opts)
    with pytest.raises(TypeError, match="unknown dedup option"):
        plan_dataset(Arr(), options=opts, treshold=3)
    # the same rule and the same words from every entry point
    for call in (lambda: DedupSampler(Arr(), threshold=65), lambda: plan_dataset(Arr(), threshold=65),
                 lambda: DedupOptions(threshold=65), lambda: DedupDataset(Arr(), threshold=65)):
        with pytest.raises(ValueError, match=r"threshold=65 must be an int in \[0, 64\]"):
            call()
    with pytest.raises(EmptyDedupError):
        DedupSampler(Arr(), options=opts.replace(against=Arr(), threshold=0))


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_TAR.exists(), reason="../shared/data/cifar10-jpg.tar.gz is absent")
def test_cifar10_jpegs_cli_leak_equals_sampler_against(tmp_path):
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(tmp_path, filter="data")
    train_dir, test_dir = next(tmp_path.rglob("train")), next(tmp_path.rglob("test"))
    t = 4
    got, keep = _cli_leak(str(train_dir), str(test_dir), t, tmp_path, "--dedup", "--workers", "2")
    train = torchvision.datasets.ImageFolder(str(train_dir))
    test = torchvision.datasets.ImageFolder(str(test_dir))
    sampler = DedupSampler(train, threshold=t, against=test, cache_dir=tmp_path / "c", progress=False)
    assert keep == [train.samples[i][0] for i in sampler.kept_indices.tolist()]
    assert got["leaked_train"] == int(sampler.plan.leaked.sum()) > 0
    assert got["n_train"] == 50_000 and got["n_test"] == 10_000


def test_memory_limit_reaches_the_keep_decision():
    images, labels = load_sample(300)

    class Arr(torch.utils.data.Dataset):
        targets = labels

        def __len__(self):
            return 300

        def __getitem__(self, i):
            return images[i], int(labels[i])

    # at t=40 most of the 45k pairs cross labels: their list does not fit in 1 MiB and cannot stream
    with pytest.raises(ValueError, match="memory_limit"):
        plan_dataset(Arr(), 40, memory_limit=1 << 20, cache_dir=False, progress=False)
    plan = plan_dataset(Arr(), 40, memory_limit=None, cache_dir=False, progress=False)
    assert len(plan.label_conflicts) > (1 << 20) // 64
    with pytest.raises(ValueError, match="memory_limit"):
        DedupOptions(memory_limit=10)
