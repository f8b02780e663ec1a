"""The ``torch-dedup`` console script, driven through its real entry point (subprocess)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torch_dedup.hamming.cluster import find_duplicates, sweep_thresholds
from torch_dedup.hashing import hash_array
from torch_dedup.plan import DedupPlan
from torch_dedup.sample import load_sample

EXE = Path(sys.executable).parent / "torch-dedup"


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "torch_dedup.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def sample_npz(tmp_path_factory) -> Path:
    images, labels = load_sample(600)
    path = tmp_path_factory.mktemp("npz") / "sample.npz"
    np.savez(path, images=images, labels=labels)
    return path


def test_scan_json_matches_python_api(sample_npz, tmp_path):
    plan_file = tmp_path / "plan.tdp"
    keep_file = tmp_path / "keep.txt"
    r = run("scan", str(sample_npz), "--threshold", "8", "--json", "--no-progress", "--cache-dir", str(tmp_path),
            "--plan-out", str(plan_file), "--keep-list", str(keep_file))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    images, labels = load_sample(600)
    plan = find_duplicates(hash_array(images), 8, labels=labels)
    assert got["n_kept"] == plan.n_kept
    saved = DedupPlan.load(plan_file)
    np.testing.assert_array_equal(saved.kept_indices, plan.kept_indices)
    listed = np.loadtxt(keep_file, dtype=np.int64).reshape(-1)
    np.testing.assert_array_equal(listed, plan.kept_indices)


def test_sweep_json_and_hash_cache(sample_npz, tmp_path):
    r = run("hash", str(sample_npz), "--json", "--no-progress", "--cache-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["from_cache"] is False
    r = run("hash", str(sample_npz), "--json", "--no-progress", "--cache-dir", str(tmp_path))
    assert json.loads(r.stdout)["from_cache"] is True
    r = run("sweep", str(sample_npz), "-T", "10", "--json", "--no-progress", "--cache-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["sweep"]
    want = sweep_thresholds(hash_array(load_sample(600)[0]), 10)
    assert [row["kept"] for row in rows] == want.tolist()


def test_scan_image_folder_drop_list_csv(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((48, 48)) * 255).astype(np.uint8)
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    Image.fromarray(base).save(root / "a" / "0.png")
    Image.fromarray(base).resize((40, 40)).save(root / "a" / "1.png")  # a resized copy
    Image.fromarray((rng.random((48, 48)) * 255).astype(np.uint8)).save(root / "a" / "2.png")
    drop = tmp_path / "drop.csv"
    r = run("scan", str(root), "-t", "6", "--drop-list", str(drop), "--cache-dir", str(tmp_path / "c"),
            "--no-progress", "--workers", "0")
    assert r.returncode == 0, r.stderr
    with open(drop) as f:
        rows = list(csv.DictReader(f))
    assert [Path(row["path"]).name for row in rows] == ["1.png"]


@pytest.mark.parametrize("args, needle", [
    (("scan", "/no/such/folder"), "no such folder"),
    (("scan", "sample", "--hash-size", "1"), "hash_size"),
    (("scan", "sample", "--threshold", "-1"), "threshold"),
    (("demo", "--thresholds", "a,b"), "--thresholds"),
])
def test_user_errors_exit_2_with_one_line(args, needle):
    r = run(*args, "--no-progress") if args[0] != "demo" else run(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_demo_miniature(tmp_path):
    r = run("demo", "--out", str(tmp_path / "out"), "--n-train", "400", "--n-eval", "200", "--epochs", "1",
            "--thresholds", "8", "--max-threshold", "8", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "dedup t=8" in r.stdout and "random, same size" in r.stdout
    with open(tmp_path / "out" / "demo.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["subset"] for row in rows] == ["full", "dedup", "random"]
    assert int(rows[1]["kept"]) == int(rows[2]["kept"]) < 400
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    assert (tmp_path / "out" / "demo.png").stat().st_size > 0
