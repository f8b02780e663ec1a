"""WebDataset shard dedup end to end: hash -> plan -> filter / rewrite, against real oracles.

Oracles: imagehash for the bits, webdataset's own reader for keys, a naive brute force for
the greedy keep property, and the unfiltered stream for "nothing lost, nothing extra".
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import shutil

import imagehash
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from torch_dedup.hamming.cluster import find_duplicates
from torch_dedup.hashing.api import to_hex
from torch_dedup.wds import (DedupFilter, ShardPlan, dedup_filter, hash_shards, iter_tar_samples, plan_shards,
                             rewrite_shards)
from torch_dedup.wds.shard_plan import STATUS_KEPT, STATUS_NO_IMAGE
from torch_dedup.wds.synthetic import make_demo_shards

THRESHOLD = 6

# webdataset 1.0.2 leaves its shard file objects for the garbage collector to close
# (StreamingOpen never closes them); that is webdataset's ResourceWarning, not ours.
pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    urls = make_demo_shards(d, n_shards=4, per_shard=40, dup_fraction=0.3, no_image_every=13, png_every=7, seed=3)
    plan = plan_shards(urls, THRESHOLD, workers=0, progress=False, out=d / "plan.tdplan")
    return d, urls, plan


def _stream_ids(ds) -> list[tuple[str, str]]:
    return [(s["__url__"], s["__key__"]) for s in ds]


def _kept(plan: ShardPlan) -> collections.Counter:
    return collections.Counter(plan.kept())


def _popcount_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b)])


# --------------------------------------------------------------------------- hashing
def test_hashes_equal_imagehash_and_keys_equal_webdataset(corpus):
    d, urls, plan = corpus
    h = hash_shards(urls, workers=0, progress=False)
    assert h.hashed == [] and h.cached == urls  # the plan fixture already hashed them
    for url, sc in zip(urls, h.sidecars):
        samples = list(wds.WebDataset(url, shardshuffle=False))
        assert list(sc.keys) == [s["__key__"] for s in samples]
        hexes = to_hex(sc.hashes)
        for i, s in enumerate(samples):
            ext = "jpg" if "jpg" in s else "png" if "png" in s else None
            assert sc.has_image[i] == (ext is not None)
            if ext:
                assert hexes[i] == str(imagehash.phash(Image.open(io.BytesIO(s[ext])))), (url, s["__key__"])


def test_no_image_samples_are_counted_listed_and_passed(corpus):
    d, urls, plan = corpus
    h = hash_shards(urls, workers=0, progress=False)
    no_image = h.no_image
    assert len(no_image) == plan.summary["n_no_image"] > 0
    kept = set(plan.kept())
    assert all(item in kept for item in no_image)
    assert np.all(plan.status[~plan.drop | (plan.status != STATUS_NO_IMAGE)] <= STATUS_NO_IMAGE)


def test_plan_is_greedy_over_the_whole_corpus(corpus):
    d, urls, plan = corpus
    img = plan.status != STATUS_NO_IMAGE
    hashes = plan.hashes
    oracle = find_duplicates(hashes, THRESHOLD, valid=img)
    assert np.array_equal(plan.drop, img & ~oracle.keep)
    kept = np.flatnonzero(plan.status == STATUS_KEPT)
    for i in np.flatnonzero(plan.drop):  # each dropped sample has an earlier kept one within the threshold
        earlier = kept[kept < i]
        assert _popcount_dist(hashes[earlier], np.full(len(earlier), hashes[i])).min() <= THRESHOLD
        r = plan.representative[i]
        assert r < i and plan.status[r] == STATUS_KEPT
    for a in kept:  # no two kept samples within the threshold
        later = kept[kept > a]
        if len(later):
            assert _popcount_dist(hashes[later], np.full(len(later), hashes[a])).min() > THRESHOLD
    assert plan.summary["n_duplicates"] >= 10  # the injected variants are found


def test_equal_keys_in_different_shards_are_different_samples(corpus):
    d, urls, plan = corpus
    by_key = collections.defaultdict(set)
    for s, sh in enumerate(plan.shards):
        for k, drop in zip(plan.shard_keys(s), plan.shard_drop(s).tolist()):
            by_key[k].add(drop)
    assert any(v == {True, False} for v in by_key.values())  # dropped in one shard, kept in another


# --------------------------------------------------------------------------- filter
def test_filter_drops_exactly_the_plan_and_keeps_order(corpus):
    d, urls, plan = corpus
    full = _stream_ids(wds.WebDataset(urls, shardshuffle=False))
    f = dedup_filter(plan.path)
    got = _stream_ids(wds.WebDataset(urls, shardshuffle=False).compose(f))
    drop = set(plan.dropped())
    assert got == [x for x in full if x not in drop]
    assert collections.Counter(got) == _kept(plan)
    assert (f.n_seen, f.n_dropped) == (plan.n, plan.n_removed)


def test_filter_as_datapipeline_stage_before_decode(corpus):
    d, urls, plan = corpus
    pipe = wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples(),
                            dedup_filter(plan), wds.decode("pil"))
    samples = list(pipe)
    assert collections.Counter((s["__url__"], s["__key__"]) for s in samples) == _kept(plan)
    assert all(isinstance(s.get("jpg", s.get("png")), Image.Image) for s in samples if "txt" not in s)


def test_filter_with_shuffled_shards_and_samples(corpus):
    d, urls, plan = corpus
    ds = wds.WebDataset(urls, shardshuffle=10, seed=7).shuffle(30, seed=1).compose(dedup_filter(plan))
    assert collections.Counter(_stream_ids(ds)) == _kept(plan)


def test_filter_with_resampled_shards(corpus):
    d, urls, plan = corpus
    f = dedup_filter(plan)
    got = _stream_ids(wds.WebDataset(urls, resampled=True, shardshuffle=False, seed=5).compose(f).with_epoch(400))
    kept = set(plan.kept())
    assert len(got) == 400 and all(x in kept for x in got)
    assert f.n_dropped > 0 and f.n_seen == 400 + f.n_dropped


def test_filter_with_two_dataloader_workers(corpus):
    d, urls, plan = corpus
    ds = wds.WebDataset(urls, shardshuffle=False).compose(dedup_filter(plan)).map(
        lambda s: (s["__url__"], s["__key__"]))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert collections.Counter(tuple(x) for x in loader) == _kept(plan)


def test_filter_with_two_ranks_split_by_node(corpus, monkeypatch):
    d, urls, plan = corpus
    parts = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node).compose(dedup_filter(plan))
        parts.append(collections.Counter(_stream_ids(ds)))
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert parts[0] + parts[1] == _kept(plan)


def test_filter_pickles_and_refuses_unknown_samples(corpus, tmp_path):
    d, urls, plan = corpus
    f = pickle.loads(pickle.dumps(dedup_filter(plan)))
    assert isinstance(f, DedupFilter)
    other = make_demo_shards(tmp_path / "other", 1, 5, seed=9)
    from torch_dedup.errors import PlanError
    with pytest.raises(PlanError, match="does not know"):
        list(wds.WebDataset(other, shardshuffle=False).compose(dedup_filter(plan)))
    passed = _stream_ids(wds.WebDataset(other, shardshuffle=False).compose(dedup_filter(plan, unknown="pass")))
    assert len(passed) == 5
    assert _stream_ids(wds.WebDataset(other, shardshuffle=False).compose(dedup_filter(plan, unknown="drop"))) == []
    with pytest.raises(ValueError, match="__url__"):
        list(dedup_filter(plan)([{"__key__": "x"}]))


def test_filter_matches_moved_shards_by_name(corpus, tmp_path):
    d, urls, plan = corpus
    moved = []
    for u in urls:
        moved.append(str(tmp_path / os.path.basename(u)))
        shutil.copy2(u, moved[-1])  # copy2 keeps the mtime: the fingerprint still matches
    got = _stream_ids(wds.WebDataset(moved, shardshuffle=False).compose(dedup_filter(plan, match="name")))
    want = collections.Counter((str(tmp_path / os.path.basename(u)), k) for u, k in plan.kept())
    assert collections.Counter(got) == want


# --------------------------------------------------------------------------- plan file
def test_plan_file_round_trip(corpus):
    d, urls, plan = corpus
    back = ShardPlan.load(plan.path)
    for name in ("shard_offsets", "key_blob", "key_offsets", "has_image", "status", "drop", "representative",
                 "hashes"):
        assert np.array_equal(getattr(back, name), getattr(plan, name)), name
    for name in ("keep", "failed", "group", "distance_to_rep"):
        assert np.array_equal(getattr(back.plan, name), getattr(plan.plan, name)), name
    assert back.shards == plan.shards and back.settings == plan.settings
    assert back.summary == plan.summary and back.path == str(plan.path)
    assert list(back.kept()) == list(plan.kept())
    again = back.save(d / "again.tdplan")  # a loaded plan saves to the same content
    assert ShardPlan.load(again).summary == plan.summary


def test_shard_plan_file_is_a_dedup_plan_file(corpus):
    from torch_dedup.plan import DedupPlan

    d, urls, plan = corpus
    dp = DedupPlan.load(plan.path)  # an indexed shard reader needs nothing but this
    assert dp.n == plan.n and np.array_equal(dp.keep, plan.plan.keep)
    assert np.array_equal(dp.kept_indices, np.flatnonzero(plan.status == STATUS_KEPT))
    assert np.all(dp.failed[plan.status == STATUS_NO_IMAGE])  # image-less samples are not sampled
    assert plan.as_dedup_plan() is plan.plan  # the stored plan, not a recomputation
    _, meta, arrays = DedupPlan.load_with_extras(plan.path)
    assert meta["shard_plan_version"] == 2 and [s["url"] for s in meta["shards"]] == urls
    assert set(arrays) == {"shard_offsets", "key_blob", "key_offsets", "has_image", "hashes"}


def test_n_removed_is_what_the_filter_drops(corpus):
    d, urls, plan = corpus
    full = _stream_ids(wds.WebDataset(urls, shardshuffle=False))
    f = dedup_filter(plan.path)
    passed = _stream_ids(wds.WebDataset(urls, shardshuffle=False).compose(f))
    assert len(full) - len(passed) == f.n_dropped == plan.n_removed > 0
    assert plan.summary["n_removed"] == plan.summary["n_dropped"] == plan.n_removed
    assert plan.summary["n_kept"] == plan.n_kept == len(passed)
    # the DedupPlan's own count also holds the image-less samples the filter passes
    assert plan.plan.n_removed == plan.n_removed + plan.summary["n_no_image"]
    json.dumps(plan.summary)


def test_n_dropped_is_a_deprecated_alias(corpus):
    d, urls, plan = corpus
    with pytest.warns(DeprecationWarning, match="n_removed"):
        assert plan.n_dropped == plan.n_removed


def test_repeated_key_finder_matches_a_naive_reference():
    from torch_dedup._store import pack_strings
    from torch_dedup.wds.shard_plan import _repeated_keys

    rng = np.random.default_rng(0)
    for trial in range(30):
        sizes = rng.integers(0, 12, size=rng.integers(1, 6))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # a tiny alphabet and short keys (the empty key included) force repeats
        keys = ["".join(rng.choice(list("abé"), size=rng.integers(0, 3))) for _ in range(int(offsets[-1]))]
        blob, key_offsets = pack_strings(keys)
        want = []
        for s in range(len(sizes)):
            where = collections.defaultdict(list)
            for i in range(int(offsets[s]), int(offsets[s + 1])):
                where[keys[i]].append(i)
            want += [(s, k, v) for k, v in where.items() if len(v) > 1]
        got = [(s, k, idx.tolist()) for s, k, idx in _repeated_keys(blob, key_offsets, offsets)]
        assert got == sorted(want, key=lambda g: g[2][0]), trial


# --------------------------------------------------------------------------- rewrite
def _digest_tree(paths) -> dict:
    return {p: (os.stat(p).st_mtime_ns, hashlib.sha256(open(p, "rb").read()).hexdigest()) for p in paths}


def test_rewrite_round_trip_byte_identical(corpus, tmp_path):
    d, urls, plan = corpus
    before = _digest_tree(urls)
    res = rewrite_shards(plan.path, tmp_path / "dedup", maxcount=25)
    assert _digest_tree(urls) == before  # sources untouched
    kept = set(plan.kept())
    want = collections.Counter()
    for u in urls:
        for s in iter_tar_samples(u):
            if (u, s.key) in kept:
                want[(s.key, tuple(sorted((st, data) for st, data in s.files.values())))] += 1
    got = collections.Counter()
    for p in res.shards:
        samples = list(iter_tar_samples(p))
        assert len(samples) <= 25 and len({s.key for s in samples}) == len(samples)
        for s in samples:
            got[(s.key, tuple(sorted((st, data) for st, data in s.files.values())))] += 1
    assert got == want and res.n_written == plan.n_kept and res.n_dropped == plan.n_removed
    # the new shards' sidecars are valid and hold the same hashes a fresh hashing gives
    h = hash_shards(res.shards, workers=0, progress=False)
    assert h.cached == res.shards
    fresh = hash_shards(res.shards, workers=0, progress=False, refresh=True)
    for a, b in zip(h.sidecars, fresh.sidecars):
        assert a.keys == b.keys and np.array_equal(a.hashes, b.hashes) and np.array_equal(a.has_image, b.has_image)
    # and a plan over the rewritten shards drops nothing more
    assert plan_shards(res.shards, THRESHOLD, workers=0, progress=False).n_removed == 0


def test_rewrite_refuses_source_folder_and_existing_output(corpus, tmp_path):
    d, urls, plan = corpus
    with pytest.raises(ValueError, match="source shard"):
        rewrite_shards(plan, d)
    rewrite_shards(plan, tmp_path / "o")
    with pytest.raises(ValueError, match="already holds"):
        rewrite_shards(plan, tmp_path / "o")
    with pytest.raises(ValueError, match="pattern"):
        rewrite_shards(plan, tmp_path / "p", pattern="../x-%d.tar")


# --------------------------------------------------------------------------- incremental
def test_incremental_rehash_touches_only_new_shards(tmp_path):
    urls = make_demo_shards(tmp_path, n_shards=4, per_shard=10, seed=1)
    first = hash_shards(urls[:2], workers=0, progress=False)
    stamps = {sc.path: os.stat(sc.path).st_mtime_ns for sc in first.sidecars}
    second = hash_shards(urls, workers=0, progress=False)
    assert second.cached == urls[:2] and second.hashed == urls[2:]
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    # a shard rewritten in place is hashed again; the others are not
    make_demo_shards(tmp_path, n_shards=1, per_shard=12, seed=2)
    third = hash_shards(urls, workers=0, progress=False)
    assert third.hashed == urls[:1] and third.cached == urls[1:] and len(third.sidecars[0]) == 12


def test_parallel_hashing_equals_serial(tmp_path):
    urls = make_demo_shards(tmp_path / "a", n_shards=3, per_shard=12, seed=4)
    par = hash_shards(urls, workers=2, progress=False)
    ser = hash_shards(urls, workers=0, progress=False, sidecar_dir=tmp_path / "side")
    assert par.hashed == urls and ser.hashed == urls
    for a, b in zip(par.sidecars, ser.sidecars):
        assert a.keys == b.keys and np.array_equal(a.hashes, b.hashes)
    assert all(str(sc.path).startswith(str(tmp_path / "side")) for sc in ser.sidecars)


# --------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_cifar10_jpegs_in_shards(cifar10_jpg, tmp_path):
    from torch_dedup.hashing.api import hash_images

    files = sorted((cifar10_jpg / "train").rglob("*.jpg"))[::10][:3000]
    urls = []
    for s in range(3):
        urls.append(str(tmp_path / f"cifar-{s:06d}.tar"))
        with wds.TarWriter(urls[-1], encoder=False) as sink:
            for i, f in enumerate(files[s * 1000:(s + 1) * 1000]):
                sink.write({"__key__": f"{i:06d}", "jpg": f.read_bytes(), "cls": f.parent.name.encode()})
    plan = plan_shards(urls, THRESHOLD, workers=2, progress=False)
    assert np.array_equal(plan.hashes, np.asarray(hash_images([str(f) for f in files]).hashes))
    got = collections.Counter(_stream_ids(wds.WebDataset(urls, shardshuffle=False).compose(dedup_filter(plan))))
    assert got == _kept(plan) and sum(got.values()) == plan.n_kept
    loader = torch.utils.data.DataLoader(
        wds.WebDataset(urls, shardshuffle=False).compose(dedup_filter(plan)).map(lambda s: (s["__url__"], s["__key__"])),
        batch_size=None, num_workers=2)
    assert collections.Counter(tuple(x) for x in loader) == _kept(plan)


def test_public_surface_is_sorted_and_complete():
    import torch_dedup.wds as m

    assert m.__all__ == sorted(m.__all__) and all(hasattr(m, name) for name in m.__all__)
