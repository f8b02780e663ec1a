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
