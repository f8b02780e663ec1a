"""The ``torch-dedup`` console script, driven through its real entry point (subprocess).

Numbers are held to the Python API (and, for leak pairs, to imagehash and a naive
brute-force search); error cases that need no data run ``main()`` in-process, which is
what the console script calls (``sys.exit(main())``).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
import torchvision
from naive import brute_pairs, distance_matrix
from PIL import Image

from torch_dedup.cli import main
from torch_dedup.hamming.cluster import find_duplicates, sweep_thresholds
from torch_dedup.hashing import hash_array
from torch_dedup.dataset_hashes import hash_dataset
from torch_dedup.plan import DedupPlan
from torch_dedup.embedded import CLASSES, load_sample

EXE = Path(sys.executable).parent / "torch-dedup"


def run(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "torch_dedup.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, timeout=600, check=False,
                          env=None if env is None else {**os.environ, **env})


def smooth_image(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A random smooth RGB image: independent ones are ~32 bits apart under phash."""
    small = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


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


def test_sweep_json_and_hash_cache(sample_npz, tmp_path, capsys):
    r = run("hash", str(sample_npz), "--json", "--no-progress", "--cache-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["from_cache"] is False
    assert main(["hash", str(sample_npz), "--json", "--no-progress", "--cache-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["from_cache"] is True
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


# --------------------------------------------------------------------------- scan / sweep on the sample
def test_scan_sample_json_matches_python_api(tmp_path):
    keep_csv = tmp_path / "keep.csv"
    r = run("scan", "sample", "-t", "8", "--json", "--no-progress", "--cache-dir", str(tmp_path), "--top", "3",
            "--keep-list", str(keep_csv))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    images, labels = load_sample()
    plan = find_duplicates(hash_array(images), 8, labels=labels)
    want = plan.summary_dict()
    for key in ("n", "n_kept", "n_removed", "n_groups_with_duplicates", "largest_group", "n_label_conflicts",
                "per_class_counts"):
        assert got[key] == want[key], key
    assert got["class_names"] == list(CLASSES)
    assert [(g["kept"], g["members"]) for g in got["largest_groups"]] == \
        [(k, m.tolist()) for k, m in plan.largest_groups(3)]
    conflicts = {(c["i"], c["j"]) for c in got["label_conflicts"]}
    assert len(conflicts) == 3 and conflicts <= {tuple(p) for p in plan.label_conflicts.tolist()}
    for c in got["label_conflicts"]:
        assert c["label_i"] != c["label_j"] and c["distance"] <= 8
    # the closest conflicts are listed: none of the others is closer than the farthest listed
    assert max(c["distance"] for c in got["label_conflicts"]) <= np.sort(plan.label_conflict_distances)[2]
    with open(keep_csv) as f:
        rows = list(csv.DictReader(f))
    assert [int(row["index"]) for row in rows] == plan.kept_indices.tolist()
    assert [int(row["label"]) for row in rows] == labels[plan.kept_indices].tolist()


def test_scan_text_summary_names_classes_and_groups(tmp_path, capsys):
    assert main(["scan", "sample", "-t", "8", "--no-progress", "--cache-dir", str(tmp_path),
                 "--policy", "components"]) == 0
    text = capsys.readouterr().out
    assert "policy components" in text
    assert "largest groups" in text and "Ankle boot" in text and "label conflict:" in text
    assert main(["scan", "sample", "-t", "8", "--no-progress", "--cache-dir", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_sweep_both_policies_and_plot(sample_npz, tmp_path):
    png = tmp_path / "sweep.png"
    r = run("sweep", str(sample_npz), "-T", "9", "--policy", "both", "--plot", str(png), "--json",
            "--no-progress", "--cache-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    h = hash_array(load_sample(600)[0])
    for policy in ("greedy", "components"):
        want = sweep_thresholds(h, 9, policy=policy)
        assert [row["kept"] for row in got["by_policy"][policy]] == want.tolist()
        assert [row["threshold"] for row in got["by_policy"][policy]] == list(range(10))
    assert got["sweep"] == got["by_policy"]["greedy"]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_sweep_pairs_columns_equal_brute_force(sample_npz, tmp_path, capsys):
    common = [str(sample_npz), "-T", "8", "--no-progress", "--cache-dir", str(tmp_path)]
    assert main(["sweep", *common, "--json", "--threshold", "6"]) == 0
    got = json.loads(capsys.readouterr().out)
    h = hash_array(load_sample(600)[0])
    d = distance_matrix(h, h)[np.triu_indices(len(h), k=1)]  # every item pair once
    at = np.bincount(d, minlength=65)[:9]
    assert [r["pairs_at"] for r in got["sweep"]] == at.tolist()
    assert [r["pairs_within"] for r in got["sweep"]] == np.cumsum(at).tolist()
    assert got["threshold"] == 6 and got["bits"] == 64 and got["method"] == "phash"
    assert "cosine" not in got["sweep"][0]  # phash bits are not hyperplane signs
    assert main(["sweep", *common, "-t", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "pairs at d" in lines[1] and "pairs within t" in lines[1] and "cosine" not in lines[1]
    marked = [line for line in lines if line.endswith("<- --threshold")]
    assert len(marked) == 1 and marked[0].split()[:3] == ["6", str(at[6]), str(at[:7].sum())]


def test_sweep_threshold_outside_the_swept_range_is_refused(capsys):
    assert main(["sweep", "sample", "-T", "4", "--threshold", "6", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--threshold 6" in err and "--max-threshold" in err


def test_sweep_cosine_column_for_hyperplane_codes(sample_npz, tmp_path, capsys):
    from torch_dedup.hashing import cosine_for_threshold
    common = [str(sample_npz), "--method", "colour_dct", "--hash-size", "16", "-T", "24", "--no-progress",
              "--cache-dir", str(tmp_path)]
    assert main(["sweep", *common, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["bits"] == 256
    assert [r["cosine"] for r in got["sweep"]] == [round(cosine_for_threshold(t, 256), 6) for t in range(25)]
    assert main(["sweep", *common]) == 0
    text = capsys.readouterr().out
    assert "cosine" in text.splitlines()[1] and "cos(pi t / 256)" in text


def test_sweep_plot_without_matplotlib_names_the_extra(sample_npz, tmp_path):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib blocked by the test')\n")
    r = run("sweep", str(sample_npz), "-T", "2", "--plot", str(tmp_path / "x.png"), "--no-progress",
            "--cache-dir", str(tmp_path), env={"PYTHONPATH": str(fake)})
    assert r.returncode == 2
    assert "pip install 'torch_dedup[plot]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- leak on generated folders
T_LEAK = 6


@pytest.fixture(scope="module")
def leak_folders(tmp_path_factory):
    """train/ and test/ ImageFolders (classes cat, dog) with two injected train->test copies
    (resized; brightened) and one exact duplicate inside train (dog/r09 = dog/r00)."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("leak")
    for split, n in (("train", 12), ("test", 5)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                smooth_image(rng).save(root / split / cls / f"{split[:2]}{k:02d}.png")
    with Image.open(root / "train/cat/tr03.png") as im:
        im.resize((56, 56), Image.Resampling.LANCZOS).save(root / "test/cat/te01.png")
    with Image.open(root / "train/dog/tr07.png") as im:
        Image.fromarray(np.clip(np.asarray(im, np.int16) + 6, 0, 255).astype(np.uint8)).save(root / "test/dog/te04.png")
    with Image.open(root / "train/dog/tr00.png") as im:
        im.save(root / "train/dog/tr09.png")
    return root


def _imagehash_pairs(root: Path, threshold: int) -> list[list[int]]:
    """Oracle: (test index, train index, distance) by imagehash over every pair, ImageFolder order."""
    train = torchvision.datasets.ImageFolder(str(root / "train"))
    test = torchvision.datasets.ImageFolder(str(root / "test"))
    htr = [imagehash.phash(Image.open(p)) for p, _ in train.samples]
    hte = [imagehash.phash(Image.open(p)) for p, _ in test.samples]
    return [[i, j, int(a - b)] for i, a in enumerate(hte) for j, b in enumerate(htr) if a - b <= threshold]


def test_leak_folders_pairs_gate_pass_and_clean_split(leak_folders, tmp_path):
    root = leak_folders
    pairs_csv, keep, clean = tmp_path / "pairs.csv", tmp_path / "keep.txt", tmp_path / "clean"
    r = run("leak", str(root / "train"), str(root / "test"), "-t", str(T_LEAK), "--json", "--no-progress",
            "--workers", "0", "--cache-dir", str(tmp_path / "c"), "--csv", str(pairs_csv), "--keep-list", str(keep),
            "--write-clean", str(clean), "--dedup", "--max-leak-pct", "25")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want = _imagehash_pairs(root, T_LEAK)
    # the oracle finds exactly the two injected copies: test cat/te01 ~ train cat/tr03, test dog/te04 ~ train dog/tr07
    assert [p[:2] for p in want] == [[1, 3], [9, 12 + 7]]
    assert got["pairs"] == want
    assert (got["n_pairs"], got["contaminated_test"], got["leaked_train"], got["n_test_valid"]) == (2, 2, 2, 10)
    assert got["leak_pct"] == pytest.approx(20.0) and got["gate_exceeded"] is False
    with open(pairs_csv) as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r_["test_path"]).name, Path(r_["train_path"]).name, r_["test_label"], int(r_["distance"]))
            for r_ in rows] == [("te01.png", "tr03.png", "cat", want[0][2]), ("te04.png", "tr07.png", "dog", want[1][2])]
    # clean split with --dedup: the Python API's against= filter (leaks) + greedy dedup (drops dog/tr09)
    train = torchvision.datasets.ImageFolder(str(root / "train"))
    test = torchvision.datasets.ImageFolder(str(root / "test"))
    h_tr = hash_dataset(train, cache_dir=False, progress=False, workers=0)
    h_te = hash_dataset(test, cache_dir=False, progress=False, workers=0)
    plan = find_duplicates(h_tr.hashes, T_LEAK, against=h_te.hashes)
    kept_paths = [train.samples[i][0] for i in plan.kept_indices.tolist()]
    assert keep.read_text().splitlines() == kept_paths
    assert len(kept_paths) == 24 - 2 - 1 and got["n_clean"] == 21
    written = sorted(str(p.relative_to(clean)) for p in clean.rglob("*.png"))
    assert written == sorted(str(Path(p).relative_to(root / "train")) for p in kept_paths)
    assert (clean / "cat" / "tr00.png").stat().st_ino == (root / "train/cat/tr00.png").stat().st_ino  # hard link


def test_leak_gate_fails_with_exit_3(leak_folders, tmp_path):
    root = leak_folders
    keep = tmp_path / "keep.csv"
    r = run("leak", str(root / "train"), str(root / "test"), "-t", str(T_LEAK), "--no-progress", "--quiet",
            "--workers", "0", "--cache-dir", str(tmp_path / "c"), "--max-leak-pct", "10", "--keep-list", str(keep))
    assert r.returncode == 3
    assert r.stdout == ""  # --quiet
    assert "gate failed" in r.stderr and "20.00%" in r.stderr and "Traceback" not in r.stderr
    with open(keep) as f:  # without --dedup the clean split only drops the two leaked training items
        rows = list(csv.DictReader(f))
    assert len(rows) == 22 and {Path(r_["path"]).name for r_ in rows} >= {"tr09.png"}
    assert not {("cat", "tr03.png"), ("dog", "tr07.png")} & {(Path(r_["path"]).parent.name, Path(r_["path"]).name)
                                                          for r_ in rows}


def test_leak_arrays_match_brute_force_and_write_npz(tmp_path):
    images, labels = load_sample(700)
    train_x, train_y = images[:500].copy(), labels[:500].copy()
    train_x[[10, 20]] = images[[600, 650]]  # two test images copied into train
    np.savez(tmp_path / "train.npz", images=train_x, labels=train_y, classes=np.array(CLASSES))
    np.save(tmp_path / "test.npy", images[600:700])
    r = run("leak", str(tmp_path / "train.npz"), str(tmp_path / "test.npy"), "-t", "4", "--json", "--no-progress",
            "--cache-dir", str(tmp_path / "c"), "--write-clean", str(tmp_path / "clean"), "--csv", str(tmp_path / "p.csv"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    pairs, dist = brute_pairs(hash_array(images[600:700]), 4, other=hash_array(train_x))
    want = np.concatenate([pairs, dist[:, None]], axis=1)
    assert got["pairs"] == want.tolist()
    assert {(0, 10), (50, 20)} <= {tuple(p[:2]) for p in got["pairs"]}
    with np.load(tmp_path / "clean" / "train.npz") as z:
        clean = np.setdiff1d(np.arange(500), want[:, 1])
        np.testing.assert_array_equal(z["indices"], clean)
        np.testing.assert_array_equal(z["images"], train_x[clean])
        np.testing.assert_array_equal(z["labels"], train_y[clean])
        assert z["classes"].tolist() == list(CLASSES)
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["train_label"] in CLASSES and rows[0]["test_label"] == "" and rows[0]["test_path"] == ""


def test_leak_sample_against_itself_trips_the_gate(tmp_path, capsys):
    assert main(["leak", "sample", "sample", "-t", "0", "--json", "--no-progress", "--cache-dir", str(tmp_path),
                 "--max-leak-pct", "99.5"]) == 3
    got = json.loads(capsys.readouterr().out)
    assert got["leak_pct"] == 100.0 and got["contaminated_test"] == 10000 and got["gate_exceeded"] is True
    h = hash_array(load_sample()[0])
    _, counts = np.unique(h, return_counts=True)
    assert got["n_pairs"] == int((counts ** 2).sum())  # every item pairs with each exact copy, itself included


# --------------------------------------------------------------------------- errors (exit 2) in-process
@pytest.fixture
def unlabeled_folder(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(3):
        smooth_image(rng).save(tmp_path / f"{k}.png")
    return tmp_path


@pytest.mark.parametrize("argv, needle", [
    (["leak", "sample", "/no/such/test"], "no such folder"),
    (["leak", "sample", "sample", "--max-leak-pct", "150"], "--max-leak-pct"),
    (["leak", "sample", "sample", "--copy"], "--copy"),
    (["scan", "shards-{000..009}.tar"], "torch-dedup wds"),
    (["scan", "sample", "--top", "-1"], "--top"),
    (["report", "sample", "--out", "OUT", "--max-groups", "0"], "--max-groups"),
    (["scan", "sample", "--keep-list", "/no/such/dir/keep.txt"], "does not exist"),
])
def test_more_user_errors_exit_2(argv, needle, capsys, tmp_path):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main([*argv, "--no-progress", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_per_class_without_labels_and_dirty_write_clean(unlabeled_folder, capsys, tmp_path):
    common = ["--no-progress", "--workers", "0", "--cache-dir", str(tmp_path / "c")]
    assert main(["sweep", str(unlabeled_folder), "--per-class", *common]) == 2
    assert "per_class" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["leak", "sample", "sample", "--write-clean", str(tmp_path / "full"), *common]) == 2
    assert "not an empty folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["report", "sample"], "--out"),  # required
    (["sweep", "sample", "--policy", "nope"], "invalid choice"),
    (["scan", "sample", "-t", "six"], "invalid int value"),
])
def test_argparse_usage_errors_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_hash_on_error_skip_records_the_broken_file(unlabeled_folder, tmp_path, capsys):
    (unlabeled_folder / "broken.png").write_bytes(b"not a png")
    common = ["--no-progress", "--workers", "0", "--cache-dir", str(tmp_path / "c")]
    assert main(["hash", str(unlabeled_folder), *common]) == 2  # on_error=raise: a clean exit 2
    capsys.readouterr()
    assert main(["hash", str(unlabeled_folder), "--on-error", "skip", "--json", *common]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["n"], got["valid"], got["failures"]) == (4, 3, 1)


def test_help_lists_every_subcommand_and_the_exit_codes():
    from torch_dedup.cli import build_parser
    text = build_parser().format_help()
    commands = ["hash", "scan", "sweep", "leak", "report", "demo"]
    if (Path(__file__).resolve().parents[1] / "torch_dedup" / "wds" / "cli.py").exists():
        commands.append("wds")
    for cmd in commands:
        assert f"\n    {cmd} " in text, cmd
    assert "3 leak gate exceeded" in " ".join(text.split())


# --------------------------------------------------------------------------- leak with colour_dct and views
@pytest.fixture(scope="module")
def shifted_leak(tmp_path_factory):
    """train/ and test/ folders of smooth colour images; test/b/zz_leak.png is train/a/03.png shifted 2 px."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("shifted_leak")

    def smooth():
        small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
        noise = rng.integers(-10, 11, (32, 32, 3))
        return np.clip(np.asarray(small.resize((32, 32), Image.Resampling.BICUBIC)) + noise, 0, 255).astype(np.uint8)

    for split in ("train", "test"):
        for c in "ab":
            (root / split / c).mkdir(parents=True)
            for i in range(30):
                Image.fromarray(smooth()).save(root / split / c / f"{i:02d}.png")
    src = np.pad(np.asarray(Image.open(root / "train" / "a" / "03.png")), ((2, 2), (2, 2), (0, 0)), mode="edge")
    Image.fromarray(src[2:34, 4:36]).save(root / "test" / "b" / "zz_leak.png")   # content moved 2 px left
    return root


def test_leak_with_colour_dct_codes_test_with_the_train_fit_and_views_find_a_shifted_copy(shifted_leak, tmp_path,
                                                                                             capsys):
    common = [str(shifted_leak / "train"), str(shifted_leak / "test"), "--method", "colour_dct", "--hash-size", "16",
              "-t", "20", "--no-progress", "--cache-dir", str(tmp_path), "--json"]
    assert main(["leak", *common]) == 0          # (it used to refuse: test coded with its own fit)
    plain = json.loads(capsys.readouterr().out)
    assert main(["leak", *common, "--views", "shift"]) == 0
    views = json.loads(capsys.readouterr().out)
    assert plain["contaminated_test"] == 0 and views["contaminated_test"] == 1 and views["leaked_train"] == 1
    test_i, train_i, d = views["pairs"][0]
    assert d <= 20 and train_i == 3                        # train/a/03.png (class a: items 0..29)
    with pytest.raises(SystemExit) as exc:
        main(["leak", *common, "--views", "nope"])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
