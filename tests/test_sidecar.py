"""Sidecar files: round trip, staleness, corruption, locations, racing writers, SIGKILL mid-write."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_dedup._store import write_store
from torch_dedup.errors import SidecarError
from torch_dedup.sidecar import (SIDECAR_VERSION, default_cache_dir, load_or_none, read_sidecar,
                                 remove_stale_temp_files, sidecar_dir, sidecar_name, write_sidecar)

SETTINGS = dict(method="phash", hash_size=8, fingerprint="array:abc", decode="exact")
EXPECT = dict(method="phash", hash_size=8, fingerprint="array:abc", decode="exact")


def _make(n=100, words=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n,) if words is None else (n, words)
    hashes = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    valid = rng.random(n) > 0.1
    hashes[~valid] = 0
    failures = tuple((int(i), f"/data/é{i}.jpg", f"cannot identify image file #{i}") for i in np.flatnonzero(~valid))
    return hashes, valid, failures


@pytest.mark.parametrize("words", [None, 4])
def test_round_trip_keeps_everything(tmp_path, words):
    hashes, valid, failures = _make(words=words)
    path = write_sidecar(tmp_path / "a.tdhash", hashes, valid, failures, **SETTINGS, extra={"dataset": "Toy"})
    sc = read_sidecar(path, expect={**EXPECT, "count": 100})
    np.testing.assert_array_equal(sc.hashes, hashes)
    np.testing.assert_array_equal(sc.valid, valid)
    assert sc.failures == failures
    assert sc.meta["count"] == 100 and sc.meta["n_failures"] == len(failures)
    assert sc.meta["sidecar_version"] == SIDECAR_VERSION
    assert set(sc.meta["versions"]) == {"torch_dedup", "imagehash", "Pillow", "numpy"}
    assert sc.meta["versions"]["numpy"] == np.__version__
    assert sc.meta["extra"] == {"dataset": "Toy"}
    assert sc.path == path and len(sc) == 100


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 50), words=st.sampled_from([None, 1, 4]), seed=st.integers(0, 2**32 - 1),
       texts=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=10))
def test_round_trip_any_contents(tmp_path, n, words, seed, texts):
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=(n,) if words is None else (n, words), dtype=np.uint64)
    valid = rng.random(n) > 0.5
    failures = tuple((int(rng.integers(0, n)), s, r) for s, r in texts) if n else ()
    path = write_sidecar(tmp_path / "h.tdhash", hashes, valid, failures, **SETTINGS)
    sc = read_sidecar(path, expect={**EXPECT, "count": n})
    assert sc.hashes.shape == hashes.shape and np.array_equal(sc.hashes, hashes)
    assert np.array_equal(sc.valid, valid) and sc.failures == failures


def test_empty_sidecar_round_trips(tmp_path):
    path = write_sidecar(tmp_path / "e.tdhash", np.zeros(0, np.uint64), np.zeros(0, bool), **SETTINGS)
    sc = read_sidecar(path, expect={"count": 0})
    assert sc.hashes.shape == (0,) and sc.failures == ()


def test_million_entries_round_trip(tmp_path):
    hashes = np.random.default_rng(1).integers(0, 2**64, size=1_000_000, dtype=np.uint64)
    valid = np.ones(hashes.shape[0], bool)
    path = write_sidecar(tmp_path / "m.tdhash", hashes, valid, **SETTINGS)
    sc = read_sidecar(path, expect={"count": 1_000_000})
    np.testing.assert_array_equal(sc.hashes, hashes)


@pytest.mark.parametrize("key,value", [("fingerprint", "array:other"), ("method", "dhash"), ("hash_size", 16),
                                       ("decode", "fast_decode"), ("count", 99), ("format", SIDECAR_VERSION + 1),
                                       ("Pillow", "0.0.1")])
def test_expect_mismatch_is_stale(tmp_path, key, value):
    hashes, valid, failures = _make()
    path = write_sidecar(tmp_path / "a.tdhash", hashes, valid, failures, **SETTINGS)
    with pytest.raises(SidecarError, match=f"stale: {key}"):
        read_sidecar(path, expect={**EXPECT, key: value})


def test_bad_arguments_are_rejected(tmp_path):
    h, v, f = _make()
    with pytest.raises(ValueError, match="uint64"):
        write_sidecar(tmp_path / "x", h.astype(np.int64), v, **SETTINGS)
    with pytest.raises(ValueError, match="valid"):
        write_sidecar(tmp_path / "x", h, v[:-1], **SETTINGS)
    with pytest.raises(ValueError, match="failure indices"):
        write_sidecar(tmp_path / "x", h, v, [(100, "a", "b")], **SETTINGS)
    with pytest.raises(ValueError, match="decode"):
        write_sidecar(tmp_path / "x", h, v, **{**SETTINGS, "decode": "jpeg"})
    assert not (tmp_path / "x").exists()


def _damaged_variants(path: Path):
    raw = path.read_bytes()
    rng = random.Random(7)
    yield "empty", b""
    for cut in (10, 30, len(raw) // 2, len(raw) - 1):
        yield f"truncated@{cut}", raw[:cut]
    for pos in [5, 20, 40, len(raw) - 3] + rng.sample(range(len(raw)), 12):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << rng.randrange(8)
        yield f"bitflip@{pos}", bytes(flipped)
    yield "garbage", os.urandom(len(raw))


def test_every_damage_is_detected_and_load_or_none_warns(tmp_path, caplog):
    hashes, valid, failures = _make(n=50)
    good = write_sidecar(tmp_path / "good.tdhash", hashes, valid, failures, **SETTINGS)
    for name, data in _damaged_variants(good):
        bad = tmp_path / f"{name}.tdhash"
        bad.write_bytes(data)
        with pytest.raises(SidecarError):
            read_sidecar(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="torch_dedup.sidecar"):
            assert load_or_none(bad, EXPECT) is None
        assert len(caplog.records) == 1 and str(bad) in caplog.records[0].getMessage(), name


def test_wrong_kind_wrong_version_and_hostile_headers(tmp_path, caplog):
    h, v, _ = _make(n=10)
    meta = {"sidecar_version": SIDECAR_VERSION, "count": 10, **SETTINGS}
    write_store(tmp_path / "plan.tdhash", "plan", meta, {"hashes": h, "valid": v})
    with pytest.raises(SidecarError, match="kind"):
        read_sidecar(tmp_path / "plan.tdhash")
    write_store(tmp_path / "v2.tdhash", "sidecar", {**meta, "sidecar_version": 2}, {"hashes": h, "valid": v})
    with pytest.raises(SidecarError, match="stale: format"):
        read_sidecar(tmp_path / "v2.tdhash")
    # well-formed store, but the arrays contradict the meta or are missing
    write_store(tmp_path / "short.tdhash", "sidecar", {**meta, "count": 11}, {"hashes": h, "valid": v})
    write_store(tmp_path / "noarr.tdhash", "sidecar", meta, {"hashes": h})
    write_store(tmp_path / "dtype.tdhash", "sidecar", meta, {"hashes": h.view(np.int64), "valid": v})
    for name in ("short", "noarr", "dtype"):
        with pytest.raises(SidecarError, match="inconsistent"):
            read_sidecar(tmp_path / f"{name}.tdhash")
        with caplog.at_level(logging.WARNING):
            assert load_or_none(tmp_path / f"{name}.tdhash") is None


def test_missing_file_is_quiet(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="torch_dedup.sidecar"):
        assert load_or_none(tmp_path / "nope.tdhash") is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_names_separate_settings():
    base = sidecar_name("fp", "phash", 8, "exact")
    assert base == sidecar_name("fp", "phash", 8, "exact")
    others = {sidecar_name("fp2", "phash", 8, "exact"), sidecar_name("fp", "dhash", 8, "exact"),
              sidecar_name("fp", "phash", 16, "exact"), sidecar_name("fp", "phash", 8, "fast_decode")}
    assert base not in others and len(others) == 4
    assert base.startswith("phash8-exact-") and base.endswith(".tdhash")


def test_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_DEDUP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "torch_dedup"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "torch_dedup"
    monkeypatch.setenv("TORCH_DEDUP_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"

    root = tmp_path / "ds"
    root.mkdir()
    assert sidecar_dir(root) == root / ".torch_dedup" and (root / ".torch_dedup").is_dir()
    assert sidecar_dir(root, cache_dir=tmp_path / "explicit") == tmp_path / "explicit"
    assert sidecar_dir(None) == tmp_path / "env"
    # a root where .torch_dedup cannot be created (a plain file is in the way) falls back
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / ".torch_dedup").write_bytes(b"not a folder")
    assert sidecar_dir(blocked) == tmp_path / "env"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_root_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_DEDUP_CACHE", str(tmp_path / "env"))
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        assert sidecar_dir(root) == tmp_path / "env"
    finally:
        root.chmod(0o755)


def test_remove_stale_temp_files_spares_young_ones(tmp_path):
    old = tmp_path / ".x.tdhash.abc123.tmp"
    young = tmp_path / ".y.tdhash.def456.tmp"
    other = tmp_path / ".notes.tmp"
    for p in (old, young, other):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temp_files(tmp_path) == 1
    assert not old.exists() and young.exists() and other.exists()
    # write_sidecar cleans old debris in its folder on the way
    os.utime(young, (time.time() - 7200, time.time() - 7200))
    h, v, _ = _make(n=5)
    write_sidecar(tmp_path / "z.tdhash", h, v, **SETTINGS)
    assert not young.exists() and other.exists()


# ---------------------------------------------------------------- racing writers (real processes)

def _racing_writer(path: str, seed: int, rounds: int, barrier) -> None:
    hashes, valid, failures = _make(n=200_000, seed=seed)
    barrier.wait()
    for _ in range(rounds):
        write_sidecar(path, hashes, valid, failures, **SETTINGS)


def test_racing_writers_leave_one_valid_file(tmp_path):
    path = tmp_path / "race.tdhash"
    ctx = mp.get_context("spawn")
    seeds = [11, 12, 13]
    barrier = ctx.Barrier(len(seeds))
    procs = [ctx.Process(target=_racing_writer, args=(str(path), s, 6, barrier)) for s in seeds]
    for p in procs:
        p.start()
    expected = {s: _make(n=200_000, seed=s)[0] for s in seeds}
    reads = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            sc = read_sidecar(path, expect={**EXPECT, "count": 200_000})  # never a torn file
            assert any(np.array_equal(sc.hashes, h) for h in expected.values())
            reads += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    sc = read_sidecar(path, expect={**EXPECT, "count": 200_000})
    assert any(np.array_equal(sc.hashes, h) for h in expected.values())
    assert [p.name for p in tmp_path.iterdir()] == ["race.tdhash"]  # no temp file left behind


# ---------------------------------------------------------------- SIGKILL mid-write

_KILL_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from torch_dedup.sidecar import write_sidecar
    path, seed = sys.argv[1], int(sys.argv[2])
    h = np.random.default_rng(seed).integers(0, 2**64, size=1_000_000, dtype=np.uint64)
    v = np.ones(h.shape[0], bool)
    fails = [(i, f"/x/{i}.jpg", "broken") for i in range(0, 1_000_000, 997)]
    print("ready", flush=True)
    while True:
        write_sidecar(path, h, v, fails, method="phash", hash_size=8, fingerprint="kill", decode="exact")
""")


def test_sigkill_mid_write_never_leaves_a_usable_partial_file(tmp_path):
    target = tmp_path / "big.tdhash"
    rng = random.Random(3)
    outcomes = []
    for k in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_WRITER, str(target), str(k % 2)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
        if target.exists():
            sc = read_sidecar(target, expect={"fingerprint": "kill", "count": 1_000_000})
            assert len(sc.failures) == len(range(0, 1_000_000, 997))
            outcomes.append("valid")
        else:
            outcomes.append("absent")
        # temp debris has its own name, which no reader ever opens
        assert all(p.name.endswith(".tmp") for p in tmp_path.iterdir() if p != target)
    # no writer is alive now: every temp file is debris and gets cleaned
    remove_stale_temp_files(tmp_path, max_age_s=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["big.tdhash"] if target.exists() else [])
    assert len(outcomes) == 8
