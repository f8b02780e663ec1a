"""The example scripts run end to end at a tiny size (subprocess, 1 epoch, a generated ImageFolder)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRAIN = EXAMPLES / "train_classifier.py"
SWEEP = EXAMPLES / "ce_dedup_sweep.py"
CLASSES = ("a", "b", "c")


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], check=False, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train/ (3 classes x 20: 10 originals, 5 exact copies, 5 lightly noised copies) and test/ (3 x 5).

    Each class draws its originals from its own smooth random fields so that the classes
    differ; test holds 2 copies of training images per class (a known leak) and 3 new images.
    """
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)

    def smooth(c: int) -> np.ndarray:
        low = rng.integers(0, 256, (4, 4, 3)).astype(np.float64)
        low[..., c] = 255  # one dominant channel per class
        img = np.kron(low, np.ones((8, 8, 1)))
        return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)

    for c, name in enumerate(CLASSES):
        originals = [smooth(c) for _ in range(10)]
        train = originals + originals[:5] + [
            np.clip(o.astype(int) + rng.integers(-2, 3, o.shape), 0, 255).astype(np.uint8) for o in originals[5:]]
        test = originals[:2] + [smooth(c) for _ in range(3)]
        for split, images in (("train", train), ("test", test)):
            d = root / split / name
            d.mkdir(parents=True)
            for i, img in enumerate(images):
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_example(name: str):
    """Import an example script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))  # the sweep imports train_classifier from beside it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def test_help_from_the_command_line(tmp_path):
    res = run(SWEEP, "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for option in ("--thresholds", "--seeds", "--policies", "--no-train", "--leak-thresholds", "--report-only"):
        assert option in res.stdout


def test_train_help_lists_the_options():
    text = load_example("train_classifier").build_parser().format_help()
    for option in ("--dataset", "--root", "--threshold", "--method", "--policy", "--per-class", "--epochs",
                   "--seed", "--device", "--subset-random", "--json-out", "--fashion-mnist-from-debian"):
        assert option in text


def test_train_dedup_removes_and_reports(folder, tmp_path):
    metrics = tmp_path / "m.json"
    res = run(TRAIN, "--dataset", "imagefolder", "--root", str(folder), "--threshold", "4", "--epochs", "1",
              "--batch-size", "16", "--device", "cpu", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
              "--json-out", str(metrics), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    m = json.loads(metrics.read_text())
    assert m["n_train"] == 60
    # the 15 exact copies are removed at any threshold; the noised ones at t=4 in most cases
    assert m["kept"] <= 45
    assert m["kept"] >= 30  # the 30 originals are far apart
    assert 0.0 <= m["accuracy"] <= 1.0 and len(m["accuracy_per_epoch"]) == 1
    assert f"60 images before, {m['kept']} after" in res.stderr


def test_train_missing_data_is_a_clear_error(tmp_path, capsys):
    tc = load_example("train_classifier")
    with pytest.raises(SystemExit) as exc:
        tc.build_datasets("mnist", str(tmp_path / "nothing"))
    assert "nothing is downloaded" in str(exc.value.code)
    assert not (tmp_path / "nothing").exists() or not any((tmp_path / "nothing").rglob("*.gz"))
    with pytest.raises(SystemExit) as exc:
        tc.build_datasets("imagefolder", str(tmp_path))
    assert "train" in str(exc.value.code) and "one folder per class" in str(exc.value.code)
    with pytest.raises(SystemExit):
        tc.parse_args(["--threshold", "4", "--subset-random", "10"])
    assert "alternatives" in capsys.readouterr().err


def test_sweep_writes_csvs_plot_and_resumes(folder, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    args = ["--dataset", "imagefolder", "--root", str(folder), "--thresholds", "0,4", "--seeds", "0",
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--threads", "1", "--per-class-threshold", "4",
            "--leak-thresholds", "0,4", "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out),
            "--name", "tiny", "--markdown-out", str(out / "tiny.md")]
    res = run(SWEEP, *args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = read_csv(out / "tiny_runs.csv")
    assert list(rows[0]) == ["dataset", "subset", "policy", "per_class", "priority", "threshold", "kept", "n_train",
                             "ratio", "removed_pct", "seed", "epochs", "accuracy", "train_seconds", "cpu_seconds",
                             "prep_seconds"]
    full = [r for r in rows if r["subset"] == "full"]
    dedup = [r for r in rows if r["subset"] == "dedup"]
    rand = [r for r in rows if r["subset"] == "random"]
    assert len(full) == 1 and int(full[0]["kept"]) == 60
    # greedy t=0,4; components t=4 (t=0 equals greedy's); per_class at t=4 for both policies
    assert sorted((r["policy"], r["threshold"], r["per_class"]) for r in dedup) == [
        ("components", "4", "False"), ("components", "4", "True"), ("greedy", "0", "False"),
        ("greedy", "4", "False"), ("greedy", "4", "True")]
    assert all(int(r["kept"]) < 60 for r in dedup)
    # every dedup size has a random subset of exactly that size (shared between equal sizes)
    assert {r["kept"] for r in dedup} == {r["kept"] for r in rand}
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)

    # the kept counts of the training runs are those of the single sweep pass
    sweep = {(r["policy"], r["per_class"], r["threshold"]): int(r["kept"]) for r in read_csv(out / "tiny_sweep.csv")}
    for r in dedup:
        assert sweep[(r["policy"], r["per_class"], r["threshold"])] == int(r["kept"])
    # the 15 exact copies go at t=0 (and noised copies whose phash did not change)
    assert 30 <= sweep[("greedy", "False", "0")] <= 45
    assert sweep[("components", "False", "4")] <= sweep[("greedy", "False", "4")] <= sweep[("greedy", "False", "0")]

    leak = {r["threshold"]: r for r in read_csv(out / "tiny_leak.csv")}
    assert int(leak["0"]["test_with_near_dup"]) == 6  # 2 planted copies per class
    assert int(leak["0"]["test_with_same_label_near_dup"]) == 6
    assert (out / "tiny.png").stat().st_size > 0
    assert "dedup − random" in (out / "tiny.md").read_text()

    # resumable: a second run trains nothing new, and redraws the plot and tables from the CSVs
    (out / "tiny.png").unlink()
    res = run(SWEEP, *args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(read_csv(out / "tiny_runs.csv")) == len(rows)
    assert "already in CSV" in res.stderr
    assert (out / "tiny.png").exists() and "Paper claims" in res.stdout


def test_fashion_mnist_from_debian(fashion_mnist_debian, tmp_path):
    root = tmp_path / "fm"
    metrics = tmp_path / "m.json"
    res = run(TRAIN, "--dataset", "fashion-mnist", "--root", str(root), "--fashion-mnist-from-debian",
              "--limit", "500", "--limit-test", "200", "--epochs", "1", "--threshold", "8", "--device", "cpu",
              "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--json-out", str(metrics), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    m = json.loads(metrics.read_text())
    assert m["n_train"] == 500 and m["kept"] < 500


# ------------------------------------------------------------------ --preload and the "central" priority


def test_in_memory_copy_matches_the_dataset(folder):
    from torchvision import datasets
    tc = load_example("train_classifier")
    ds = datasets.ImageFolder(str(folder / "train"))
    mem = tc.InMemory(ds, image_size=32)
    assert mem.x.shape == (60, 3, 32, 32) and mem.x.dtype.is_floating_point is False
    for i in (0, 17, 59):
        x, y = mem[i]
        img, label = ds[i]
        assert np.array_equal(x.permute(1, 2, 0).numpy(), np.asarray(img)) and int(y) == label
    # an array dataset (MNIST layout: (N, H, W) uint8 + targets) gets one channel
    arr = type("Arr", (), {"data": np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5), "targets": [2, 0, 1],
                           "__len__": lambda self: 3, "__getitem__": lambda self, i: (self.data[i], self.targets[i])})()
    mem = tc.InMemory(arr)
    assert mem.x.shape == (3, 1, 4, 5) and np.array_equal(mem.x[:, 0].numpy(), arr.data)
    assert mem.y.tolist() == [2, 0, 1]


def test_batch_transform_is_the_per_image_transform():
    import torch
    from torchvision import transforms
    tc = load_example("train_classifier")
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, (400, 3, 8, 8), dtype=np.uint8))
    # without augmentation: exactly ToTensor + Normalize
    ref = torch.stack([transforms.Normalize(mean, std)(transforms.ToTensor()(Image.fromarray(a.permute(1, 2, 0)
                                                                                                 .numpy())))
                       for a in x])
    bt = tc.BatchTransform(mean, std, pad=2, flip=True)
    torch.testing.assert_close(bt(x, train=False), ref, rtol=0, atol=1e-6)
    # with augmentation: each image is one of the (2*pad+1)^2 zero-padded crops, flipped or not,
    # independently per image, covering every offset (RandomCrop(padding=2) + RandomHorizontalFlip)
    torch.manual_seed(0)
    out = bt(x, train=True)
    padded = torch.nn.functional.pad(ref * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1),
                                     (2, 2, 2, 2))
    seen, flips = set(), 0
    back = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    for k in range(len(x)):
        found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                 if torch.allclose((padded[k, :, dy:dy + 8, dx:dx + 8].flip(2) if f else
                                    padded[k, :, dy:dy + 8, dx:dx + 8]), back[k], atol=1e-5)]
        assert found, k
        seen.add(found[0][:2])
        flips += found[0][2]
    assert len(seen) == 25 and 120 < flips < 280


def test_central_priority_is_the_near_duplicate_count(folder, tmp_path):
    from torchvision import datasets

    from naive import distance_matrix
    from torch_dedup import hash_dataset
    tc = load_example("train_classifier")
    ds = datasets.ImageFolder(str(folder / "train"))
    h = hash_dataset(ds, cache_dir=tmp_path, progress=False, workers=0)
    d = distance_matrix(h.hashes, h.hashes)
    for t in (0, 6):
        assert tc.central_scores(ds, t, "phash", tmp_path).tolist() == ((d <= t).sum(1) - 1).tolist()


def test_sweep_central_priority_and_random_floor(folder, tmp_path):
    out = tmp_path / "out"
    res = run(SWEEP, "--dataset", "imagefolder", "--root", str(folder), "--thresholds", "0,10", "--policies",
              "greedy", "--central-thresholds", "10", "--seeds", "0", "--epochs", "1", "--batch-size", "16",
              "--device", "cpu", "--threads", "1", "--no-full", "--random-min-removed", "40",
              "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out), "--name", "c", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    sweep = {(r["priority"], r["threshold"]): int(r["kept"]) for r in read_csv(out / "c_sweep.csv")
             if r["policy"] == "greedy" and r["per_class"] == "False"}
    runs = read_csv(out / "c_runs.csv")
    dedup = {(r["priority"], r["threshold"]): int(r["kept"]) for r in runs if r["subset"] == "dedup"}
    assert dedup == {k: sweep[k] for k in (("index", "0"), ("index", "10"), ("central", "10"))}
    # random baselines only where dedup removed at least 40 % of the 60 images (t=10: the copies go)
    assert dedup[("index", "0")] > 36 >= dedup[("index", "10")]
    assert sorted(int(r["kept"]) for r in runs if r["subset"] == "random") == sorted(
        {k for k in dedup.values() if k <= 36})
    assert "central" in res.stdout


def test_keep_priorities_by_name(folder, tmp_path):
    from torchvision import datasets
    tc = load_example("train_classifier")
    ds = datasets.ImageFolder(str(folder / "train"))
    assert tc.keep_priority("index", ds, 4, "phash", tmp_path) is None
    shuffled = tc.keep_priority("shuffled", ds, 4, "phash", tmp_path)
    # a fixed permutation: the same keep order for every training seed, not the class-sorted one
    assert sorted(shuffled.tolist()) == list(range(60)) and np.array_equal(shuffled, tc.shuffled_scores(60))
    assert not np.array_equal(np.argsort(shuffled), np.arange(60))
    assert tc.keep_priority("central", ds, 4, "phash", tmp_path).tolist() == tc.central_scores(
        ds, 4, "phash", tmp_path).tolist()
    contrast = tc.keep_priority("contrast", ds, 4, "phash", tmp_path)
    assert contrast[0] == pytest.approx(np.asarray(Image.open(ds.samples[0][0]).convert("L"), float).std())
