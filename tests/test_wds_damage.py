"""Damaged shards are never silently wrong: skip sidecars and raise runs, samples cut by damage,
rewrites that fail (an error, an interrupt, a damaged source, SIGKILL) publish no partial shard.
"""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from torch_dedup.errors import ImageDecodeError
from torch_dedup.wds import (ShardReadError, dedup_filter, hash_shard, hash_shards, iter_tar_samples, plan_shards,
                             rewrite_shards)
from torch_dedup.wds.shard_plan import STATUS_FAILED, STATUS_NO_IMAGE
from torch_dedup.wds.synthetic import make_demo_shards

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def _members(path) -> list[tuple[str, int, int, int]]:
    with tarfile.open(path) as tf:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tf.getmembers()]


def _cut_inside_image(src: str, dst: Path, sample: int) -> str:
    """Copy ``src`` cut in the middle of the image member of its ``sample``-th sample."""
    images = [m for m in _members(src) if m[0].endswith((".jpg", ".png"))]
    name, _, data_at, size = images[sample]
    dst.write_bytes(Path(src).read_bytes()[:data_at + size // 2])
    return name.split(".")[0]


def _samples(url) -> list:
    return [(s.key, sorted((k, v[1]) for k, v in s.files.items())) for s in iter_tar_samples(str(url))]


@pytest.fixture
def cut_shard(tmp_path):
    src = make_demo_shards(tmp_path / "src", n_shards=1, per_shard=12, seed=5)[0]
    bad = tmp_path / "cut.tar"
    key = _cut_inside_image(src, bad, 6)
    return str(bad), key


# ------------------------------------------------------------------ 1. skip sidecars and raise runs
def test_a_skip_sidecar_is_never_served_to_a_raise_run(cut_shard, tmp_path):
    bad, _ = cut_shard
    good = make_demo_shards(tmp_path / "g", n_shards=1, per_shard=5, seed=6)[0]
    h = hash_shards([good, bad], workers=0, progress=False, on_error="skip")
    assert [u for u, _ in h.errors] == [bad]
    for call in (lambda: hash_shards([good, bad], workers=0, progress=False),
                 lambda: plan_shards([good, bad], 6, workers=0, progress=False),
                 lambda: plan_shards(h, 6)):  # ShardHashes made with skip, planned with raise
        with pytest.raises(ShardReadError) as err:
            call()
        assert bad in str(err.value) and "on_error='skip'" in str(err.value)
    assert "sidecar" in str(pytest.raises(ShardReadError, hash_shards, [bad], workers=0, progress=False).value)
    # skip runs still read the sidecar (no rehash) and plan what was read
    again = hash_shards([good, bad], workers=0, progress=False, on_error="skip")
    assert again.cached == [good, bad] and again.errors == h.errors
    assert plan_shards(h, 6, on_error="skip").n == h.n_samples


def test_a_sidecar_with_failed_images_is_never_served_to_a_raise_run(tmp_path):
    src = make_demo_shards(tmp_path / "src", n_shards=1, per_shard=3, seed=7)[0]
    members = [(f"{s.key}.{st}", d) for s in iter_tar_samples(src) for st, d in s.files.values()]
    members.append(("broken.jpg", b"\xff\xd8 not a jpeg"))
    url = str(tmp_path / "shard.tar")
    with tarfile.open(url, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, __import__("io").BytesIO(data))
    assert len(hash_shards(url, workers=0, progress=False, on_error="skip").failures) == 1
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        hash_shards(url, workers=0, progress=False)


def test_cli_raise_run_after_a_skip_run_fails_and_names_the_shard(cut_shard, tmp_path, capsys):
    from torch_dedup.cli import main

    bad, _ = cut_shard
    assert main(["wds", "hash", bad, "--on-error", "skip", "--workers", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert bad in err  # the skipped shard is named on stderr
    assert main(["wds", "plan", bad, "--out", str(tmp_path / "p.tdplan"), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert bad in err and "--on-error skip" in err and "on_error=" not in err
    assert not (tmp_path / "p.tdplan").exists()


# ------------------------------------------------------------------ 2. a sample cut in half
def test_a_sample_cut_by_damage_is_failed_never_no_image(cut_shard):
    bad, key = cut_shard
    sc = hash_shard(bad, on_error="skip")
    i = sc.keys.index(key)
    assert i == len(sc) - 1 and sc.has_image[i] and not sc.valid[i]
    assert [f[0] for f in sc.failures] == [i] and "cut" in sc.failures[0][2]
    for drop_failed in (True, False):  # cut samples go even when failed images are kept
        plan = plan_shards([bad], 6, workers=0, progress=False, on_error="skip", drop_failed=drop_failed)
        assert plan.status[i] == STATUS_FAILED and plan.drop[i] and (plan.status != STATUS_NO_IMAGE).all()
        assert (key not in {k for _, k in plan.kept()}) and plan.cut_samples().tolist() == [i]
        stream = wds.WebDataset([bad], shardshuffle=False, handler=wds.ignore_and_continue).compose(dedup_filter(plan))
        got = [(s["__url__"], s["__key__"]) for s in stream]
        assert sorted(got) == sorted(plan.kept())


def test_a_rewrite_never_writes_a_cut_sample(cut_shard, tmp_path):
    bad, key = cut_shard
    plan = plan_shards([bad], 6, workers=0, progress=False, on_error="skip", drop_failed=False)
    res = rewrite_shards(plan, tmp_path / "out", on_error="skip")
    written = [s for p in res.shards for s in iter_tar_samples(p)]
    assert key not in {s.key for s in written} and len(written) == res.n_written == plan.n_kept
    assert all("jpg" in s.files or "png" in s.files for s in written)  # every written sample whole
    members = sum(len(tarfile.open(p).getnames()) for p in res.shards)
    assert members == 3 * res.n_written  # jpg, cls, json each


def test_a_shard_damaged_after_planning_loses_no_member_silently(tmp_path):
    src = make_demo_shards(tmp_path / "s", n_shards=1, per_shard=12, seed=5)[0]
    plan = plan_shards([src], 6, workers=0, progress=False)
    kept = next(i for i in range(3, plan.n) if not plan.drop[i])  # a sample the plan writes
    key = _cut_inside_image(src, tmp_path / "cut.tar", kept)
    Path(src).write_bytes((tmp_path / "cut.tar").read_bytes())
    res = rewrite_shards(plan, tmp_path / "out", on_error="skip", verify=False)
    assert (src, key, res.skipped[0][2]) == res.skipped[0] and "cut" in res.skipped[0][2]
    assert all(s.complete and ("jpg" in s.files or "png" in s.files) for p in res.shards for s in iter_tar_samples(p))


def test_truncation_at_a_sample_boundary_marks_the_last_sample_incomplete(tmp_path):
    src = make_demo_shards(tmp_path, n_shards=1, per_shard=6, seed=5)[0]
    members = _members(src)
    bad = tmp_path / "b.tar"
    bad.write_bytes(Path(src).read_bytes()[:members[9][1]])  # 3 whole samples, no end marker
    got = []
    with pytest.raises(ShardReadError, match="end-of-archive"):
        for s in iter_tar_samples(str(bad)):
            got.append(s)
    assert [s.complete for s in got] == [True, True, False]
    assert all(s.complete for s in iter_tar_samples(src))


def test_a_missing_shard_is_not_said_to_have_samples_before_damage(tmp_path):
    with pytest.raises(ShardReadError) as err:
        hash_shards([str(tmp_path / "nope.tar")], workers=0, progress=False)
    assert "before the damage" not in str(err.value) and "Check the path" in str(err.value)


# ------------------------------------------------------------------ 3. a failed rewrite publishes nothing partial
@pytest.fixture
def corpus(tmp_path):
    urls = make_demo_shards(tmp_path / "src", n_shards=3, per_shard=30, seed=11)
    plan = plan_shards(urls, 6, workers=0, progress=False)
    ref = rewrite_shards(plan, tmp_path / "ref", maxcount=20)
    return urls, plan, {Path(p).name: _samples(p) for p in ref.shards}


def _check_published(out: Path, want: dict) -> list[str]:
    """Every file under a shard name in ``out`` is a complete shard (equal to the reference's)."""
    names = sorted(p.name for p in out.glob("shard-*.tar")) if out.exists() else []
    for name in names:
        assert _samples(out / name) == want[name], name
    return names


def test_rewrite_failing_on_a_damaged_source_publishes_no_partial_shard(corpus, tmp_path):
    urls, plan, want = corpus
    _cut_inside_image(urls[1], tmp_path / "cut.tar", 10)
    Path(urls[1]).write_bytes((tmp_path / "cut.tar").read_bytes())
    out = tmp_path / "out"
    with pytest.raises(ShardReadError):
        rewrite_shards(plan, out, maxcount=20, verify=False)
    names = _check_published(out, want)
    # the complete shards before the damage stay; the one in progress when it struck never appears
    assert names and len(names) < len(want)
    assert sum(len(_samples(out / n)) for n in names) < sum(1 for u, _ in plan.kept() if u != urls[2])
    assert not [p for p in out.iterdir() if p.name.startswith(".torch_dedup")]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("at", [1, 25, 41])
def test_rewrite_failing_while_writing_publishes_no_partial_shard(corpus, tmp_path, monkeypatch, exc, at):
    urls, plan, want = corpus
    calls = collections.Counter()
    real = wds.TarWriter.write

    def failing(self, obj):
        calls["n"] += 1
        if calls["n"] == at:
            raise exc
        return real(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", failing)
    out = tmp_path / "out"
    with pytest.raises(type(exc)):
        rewrite_shards(plan, out, maxcount=20)
    assert len(_check_published(out, want)) == (at - 1) // 20
    monkeypatch.setattr(wds.TarWriter, "write", real)
    res = rewrite_shards(plan, out, maxcount=20, overwrite=True)  # a rerun finishes the work
    assert {Path(p).name: _samples(p) for p in res.shards} == want


_SLOW_REWRITER = textwrap.dedent("""
    import sys, time
    import webdataset as wds
    from torch_dedup.wds import rewrite_shards
    real = wds.TarWriter.write
    def slow(self, obj):
        time.sleep(0.004)
        return real(self, obj)
    wds.TarWriter.write = slow
    plan, out = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    while True:
        rewrite_shards(plan, out, maxcount=20, overwrite=True)
""")


@pytest.mark.slow  # subprocess kill loop
def test_sigkill_during_rewrite_publishes_no_partial_shard(corpus, tmp_path):
    urls, plan, want = corpus
    plan_path = plan.save(tmp_path / "p.tdplan")
    out = tmp_path / "out"
    rng = random.Random(17)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _SLOW_REWRITER, plan_path, str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.1, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        proc.stdout.close()
        proc.stderr.close()
        _check_published(out, want)
    res = rewrite_shards(plan, out, maxcount=20, overwrite=True)
    assert {Path(p).name: _samples(p) for p in res.shards} == want
    assert not [p for p in out.iterdir() if p.name.startswith(".torch_dedup")]
    assert np.array_equal(np.sort([n for n in want]), np.sort([Path(p).name for p in res.shards]))
