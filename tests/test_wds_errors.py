"""Bad input for shard dedup: damaged shards, broken images, stale plans, hostile member names."""

from __future__ import annotations

import collections
import io
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds

from torch_dedup.errors import ImageDecodeError, PlanError
from torch_dedup.wds import (ShardPlan, ShardReadError, dedup_filter, hash_shard, hash_shards, iter_tar_samples,
                             plan_shards, rewrite_shards)
from torch_dedup.wds.shard_plan import STATUS_FAILED
from torch_dedup.wds.synthetic import make_demo_shards

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def _member_offsets(path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tf:
        return [(m.name, m.offset, m.offset_data) for m in tf.getmembers()]


def _write_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture
def shard(tmp_path):
    return make_demo_shards(tmp_path, n_shards=1, per_shard=12, seed=5)[0]


def test_truncated_inside_a_member_names_shard_member_and_offset(shard, tmp_path):
    name, offset, data_at = [m for m in _member_offsets(shard) if m[0].endswith(".jpg")][5]
    bad = tmp_path / "cut.tar"
    bad.write_bytes(open(shard, "rb").read()[:data_at + 10])
    with pytest.raises(ShardReadError) as err:
        hash_shard(str(bad))
    assert err.value.member == name and err.value.offset == offset and str(bad) in str(err.value)
    sc = hash_shard(str(bad), on_error="skip")
    assert sc.shard_error["member"] == name and 0 < len(sc) <= 6 and sc.keys[-1] == name.split('.')[0]


def test_truncated_at_a_member_boundary_is_not_silent(shard, tmp_path):
    name, offset, _ = _member_offsets(shard)[9]
    bad = tmp_path / "boundary.tar"
    bad.write_bytes(open(shard, "rb").read()[:offset])  # whole members, but no end-of-archive marker
    with pytest.raises(ShardReadError, match="end-of-archive"):
        list(iter_tar_samples(str(bad)))


def test_corrupt_header_is_not_silent(shard, tmp_path):
    name, offset, _ = _member_offsets(shard)[9]
    raw = bytearray(open(shard, "rb").read())
    raw[offset:offset + 100] = b"\xff" * 100  # garbage where a header should be
    bad = tmp_path / "garbage.tar"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ShardReadError) as err:
        list(iter_tar_samples(str(bad)))
    assert err.value.offset == offset


def test_not_a_tar_and_missing_shard(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello" * 300)
    with pytest.raises(ShardReadError, match="junk.tar"):
        hash_shard(str(junk))
    missing = str(tmp_path / "missing.tar")
    with pytest.raises(ShardReadError, match="missing.tar"):
        hash_shards([missing], workers=0, progress=False)
    h = hash_shards([missing, str(junk)], workers=0, progress=False, on_error="skip")
    assert [e[0] for e in h.errors] == [missing, str(junk)]


def test_damaged_shard_with_skip_plans_the_samples_read(shard, tmp_path):
    good = make_demo_shards(tmp_path / "g", n_shards=1, per_shard=8, seed=6)[0]
    _, _, data_at = [m for m in _member_offsets(shard) if m[0].endswith(".jpg")][6]
    bad = tmp_path / "cut.tar"
    bad.write_bytes(open(shard, "rb").read()[:data_at + 10])
    plan = plan_shards([good, str(bad)], 6, workers=0, progress=False, on_error="skip")
    assert len(plan.summary["shard_errors"]) == 1 and plan.summary["shard_errors"][0][0] == str(bad)
    # webdataset with a continuing handler yields the same samples the plan lists
    ds = wds.WebDataset([good, str(bad)], shardshuffle=False, handler=wds.ignore_and_continue)
    got = [(s["__url__"], s["__key__"]) for s in ds.compose(dedup_filter(plan))]
    assert sorted(got) == sorted(plan.kept())


def test_corrupt_image_raises_or_is_recorded_and_dropped(tmp_path):
    ok = make_demo_shards(tmp_path / "src", n_shards=1, per_shard=3, seed=7)[0]
    members = [(f"{s.key}.{st}", data) for s in iter_tar_samples(ok) for st, data in s.files.values()]
    members.append(("broken.jpg", b"\xff\xd8 definitely not a jpeg"))
    url = _write_tar(tmp_path / "shard.tar", members)
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        hash_shard(url)
    plan = plan_shards([url], 6, workers=0, progress=False, on_error="skip")
    i = plan.shard_keys(0).index("broken")
    assert plan.status[i] == STATUS_FAILED and plan.drop[i]
    kept = plan_shards([url], 6, workers=0, progress=False, on_error="skip", drop_failed=False)
    assert not kept.drop[i]


def test_stale_plan_is_refused(tmp_path):
    urls = make_demo_shards(tmp_path / "s", n_shards=2, per_shard=6, seed=8)
    plan = plan_shards(urls, 6, workers=0, progress=False)
    make_demo_shards(tmp_path / "s", n_shards=1, per_shard=7, seed=9)  # shard 0 replaced
    with pytest.raises(PlanError, match="changed since the plan"):
        list(wds.WebDataset(urls, shardshuffle=False).compose(dedup_filter(plan)))
    with pytest.raises(PlanError, match="not in the plan"):  # without the stat check, the unknown key is caught
        list(wds.WebDataset(urls, shardshuffle=False).compose(dedup_filter(plan, verify=False)))
    with pytest.raises(PlanError, match="changed since the plan"):
        rewrite_shards(plan, tmp_path / "out")


def test_corrupt_plan_file_is_refused(tmp_path):
    urls = make_demo_shards(tmp_path / "s", n_shards=1, per_shard=6, seed=8)
    path = tmp_path / "p.tdplan"
    plan_shards(urls, 6, workers=0, progress=False, out=path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(PlanError):
        ShardPlan.load(path)
    with pytest.raises(PlanError):
        dedup_filter(path)


def _old_format_plan(plan, path) -> None:
    """What torch_dedup 0.1 wrote: a store file of its own kind, "shard-plan"."""
    from torch_dedup._store import write_store

    meta = {"shard_plan_version": 1, "settings": plan.settings, "summary": plan.summary, "shards": list(plan.shards)}
    arrays = {"shard_offsets": plan.shard_offsets, "key_blob": plan.key_blob, "key_offsets": plan.key_offsets,
              "status": plan.status, "drop": plan.drop, "representative": plan.representative, "hashes": plan.hashes}
    write_store(path, "shard-plan", meta, arrays)


def test_old_shard_plan_files_and_dataset_plans_are_refused(tmp_path):
    from torch_dedup.hamming.cluster import find_duplicates

    urls = make_demo_shards(tmp_path / "s", n_shards=2, per_shard=6, seed=8)
    plan = plan_shards(urls, 6, workers=0, progress=False)
    old, other = tmp_path / "old.tdplan", tmp_path / "dataset.tdplan"
    _old_format_plan(plan, old)
    find_duplicates(np.arange(5, dtype=np.uint64), threshold=0).save(other)
    for path, needle in ((old, "older torch_dedup"), (other, "not a shard plan")):
        for use in (ShardPlan.load, dedup_filter, lambda p: rewrite_shards(p, tmp_path / "o")):
            with pytest.raises(PlanError, match=needle) as info:
                use(path)
            assert str(path) in str(info.value) and "torch-dedup wds plan" in str(info.value)
    assert not (tmp_path / "o").exists()


def _resave(plan, path, **changes) -> None:
    """Save ``plan`` with some shard extras replaced, as a damaged or hand-edited file would hold them."""
    meta = {"shard_plan_version": 2, "shards": list(plan.shards), "shard_errors": []}
    arrays = {k: getattr(plan, k) for k in ("shard_offsets", "key_blob", "key_offsets", "has_image", "hashes")}
    for k, v in changes.items():
        (meta if k in meta else arrays)[k] = v
    for k in [k for k, v in arrays.items() if v is None]:
        del arrays[k]
    plan.plan.save(path, extra_meta=meta, extra_arrays=arrays)


def test_inconsistent_shard_extras_are_refused(tmp_path):
    urls = make_demo_shards(tmp_path / "s", n_shards=2, per_shard=10, dup_fraction=0.5, no_image_every=4, seed=3)
    plan = plan_shards(urls, 6, workers=0, progress=False)
    assert plan.n_removed > 0 and plan.summary["n_no_image"] > 0
    other_hashes = plan.hashes.copy()
    other_hashes[plan.plan.removed_indices[0]] ^= np.uint64(0xFFFF)
    shards = [dict(sh) for sh in plan.shards]
    shards[0]["n"] += 1
    cases = {
        "hashes": {"hashes": other_hashes},                       # hashes of another plan
        "has_image": {"has_image": np.zeros(plan.n, bool)},        # image-less samples the plan keeps
        "shards": {"shards": shards},                              # a shard table that does not add up
        "missing": {"key_blob": None},                             # an extra array gone
        "version": {"shard_plan_version": 3},
    }
    for name, change in cases.items():
        path = tmp_path / f"{name}.tdplan"
        _resave(plan, path, **change)
        with pytest.raises(PlanError, match="torch-dedup wds plan") as info:
            ShardPlan.load(path)
        assert str(path) in str(info.value), name
    _resave(plan, tmp_path / "same.tdplan")  # the control: unchanged extras load
    assert np.array_equal(ShardPlan.load(tmp_path / "same.tdplan").drop, plan.drop)


def test_repeated_keys_in_one_shard_are_kept_and_counted(tmp_path):
    src = make_demo_shards(tmp_path / "src", n_shards=2, per_shard=8, dup_fraction=0.5, seed=7)
    # the second shard's samples reuse the first one's keys: every key appears twice in the merged shard
    members = [(f"{s.key}.{st}", data) for u in src for s in iter_tar_samples(u) for st, data in s.files.values()]
    url = _write_tar(tmp_path / "merged.tar", members)
    plan = plan_shards([url], 0, workers=0, progress=False)
    assert plan.summary["n_ambiguous_keys"] == len(plan.ambiguous_keys) > 0
    spared = [i for s, key, _ in plan.ambiguous_keys for i, k in enumerate(plan.shard_keys(0)) if k == key]
    assert not plan.drop[spared].any() and plan.plan.removed_indices.size > plan.n_removed
    f = dedup_filter(plan)
    got = [(x["__url__"], x["__key__"]) for x in wds.WebDataset([url], shardshuffle=False).compose(f)]
    # the copies are not neighbours, so the stream yields each; a key goes only when all its copies go
    assert f.n_dropped == plan.n_removed > 0 and len(got) == plan.n_kept
    assert collections.Counter(got) == collections.Counter(plan.kept())
    assert ShardPlan.load(plan.save(tmp_path / "p.tdplan")).ambiguous_keys == plan.ambiguous_keys


def test_hostile_member_names_never_leave_the_output_folder(tmp_path):
    ok = make_demo_shards(tmp_path / "src", n_shards=1, per_shard=2, seed=10)[0]
    members = [(f"{s.key}.{st}", data) for s in iter_tar_samples(ok) for st, data in s.files.values()]
    members += [("../../evil.txt", b"z"), ("/tmp/abs-evil.txt", b"x"), ("a/../../up.txt", b"y")]
    url = _write_tar(tmp_path / "src" / "hostile.tar", members)
    plan = plan_shards([url], 0, workers=0, progress=False)
    out = tmp_path / "deep" / "out"
    with pytest.raises(ShardReadError, match="refusing"):
        rewrite_shards(plan, out)
    before = sorted(p for p in tmp_path.rglob("*") if "out" not in p.parts)
    res = rewrite_shards(plan, out, on_error="skip", overwrite=True)
    assert len(res.skipped) == 3 and res.n_written == 2
    assert sorted(p for p in tmp_path.rglob("*") if "out" not in p.parts) == before
    assert not os.path.exists("/tmp/abs-evil.txt")
    names = [n for p in res.shards for n in tarfile.open(p).getnames()]
    assert names and not any(n.startswith("/") or ".." in n.split("/") for n in names)


def test_bad_arguments_name_the_argument(tmp_path):
    urls = make_demo_shards(tmp_path, n_shards=1, per_shard=2, seed=1)
    with pytest.raises(ValueError, match="on_error"):
        hash_shards(urls, on_error="ignore")
    with pytest.raises(ValueError, match="image_exts"):
        hash_shards(urls, image_exts="")
    with pytest.raises(ValueError, match="method"):
        hash_shards(urls, method="md5")
    plan = plan_shards(urls, 6, workers=0, progress=False)
    with pytest.raises(ValueError, match="unknown"):
        dedup_filter(plan, unknown="ignore")
    with pytest.raises(ValueError, match="maxcount"):
        rewrite_shards(plan, tmp_path / "o", maxcount=0)
    assert np.all(plan.drop == 0) or plan.n_removed <= 1
