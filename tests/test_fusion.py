"""``fuse=True``: an embedding's codes fused with an offline method's, exact against naive references.

The oracles: a fused code's Hamming distance is ``sum(repeats[k] * d_k)`` of the parts
(a popcount over Python ints); a part's scale is ``numpy.quantile`` of the same seeded random
pairs counted one by one; the repeats are the best of every candidate; and a fused plan is
``plan_from_hashes`` on codes put side by side by hand from ``hash_dataset`` and
``embed_dataset``, its ``against=`` set fused with the dataset's fusion and fits.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance
from torchvision.datasets import ImageFolder

from torch_dedup import DedupOptions, DedupSampler, plan_dataset
from torch_dedup.dataset_hashes import hash_dataset
from torch_dedup.embedding import embed_dataset
from torch_dedup.hashing.fusion import (
    CHANCE_SHARE,
    FUSION_PAIRS,
    FUSION_QUANTILE,
    FUSION_SEED,
    MAX_REPEAT,
    Fusion,
    fit_fusion,
    pair_quantile,
)
from torch_dedup.planning import plan_from_hashes


def _ham(a: np.ndarray, b: np.ndarray) -> int:
    return sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(np.ravel(a), np.ravel(b)))


words = st.integers(1, 4)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_fused_distance_is_the_repeated_sum_of_the_parts(data):
    w = data.draw(st.lists(words, min_size=2, max_size=3))
    reps = tuple(data.draw(st.integers(1, MAX_REPEAT)) for _ in w)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    parts = [rng.integers(0, 2**64, (6, k), dtype=np.uint64) for k in w]
    parts = [p[:, 0] if k == 1 else p for p, k in zip(parts, w)]            # a 64-bit part as (N,)
    f = Fusion(tuple(64 * k for k in w), tuple(1.0 for _ in w), reps)
    codes = f.fuse(*parts)
    assert codes.shape == (6, f.words) and codes.dtype == np.uint64
    for i, j in itertools.combinations(range(6), 2):
        assert _ham(codes[i], codes[j]) == sum(r * _ham(p[i], p[j]) for r, p in zip(reps, parts))
    assert f.total_bits == sum(64 * k * r for k, r in zip(w, reps))


def test_pair_quantile_is_numpys_quantile_of_the_seeded_pairs():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 2**64, (300, 2), dtype=np.uint64)
    valid = rng.random(300) > 0.2
    idx = np.flatnonzero(valid)
    g = np.random.default_rng(FUSION_SEED)
    i = g.integers(0, len(idx), FUSION_PAIRS)
    j = g.integers(0, len(idx) - 1, FUSION_PAIRS)
    j = j + (j >= i)
    assert not np.any(i == j)
    d = [_ham(codes[idx[a]], codes[idx[b]]) for a, b in zip(i[:2000], j[:2000])]
    got = pair_quantile(codes, valid)
    # the first 2,000 pairs by hand agree with the vectorised count; the quantile is numpy's over all
    from torch_dedup.hashing.fusion import _distances
    all_d = _distances(codes[idx[i]], codes[idx[j]])
    assert all_d[:2000].tolist() == d
    assert got == max(1.0, float(np.quantile(all_d, FUSION_QUANTILE)))
    assert pair_quantile(codes, valid) == got                                  # seeded: the same again
    assert pair_quantile(codes[:1]) == 1.0 and pair_quantile(np.zeros(50, np.uint64)) == 1.0  # the floor


def test_fit_fusion_picks_the_repeats_that_equalise_the_scales():
    rng = np.random.default_rng(0)
    short = rng.integers(0, 2**64, 400, dtype=np.uint64)
    long = rng.integers(0, 2**64, (400, 4), dtype=np.uint64)
    f = fit_fusion([short, long], [64, 256])
    s = (pair_quantile(short), pair_quantile(long))
    assert f.scales == s
    best = min((max(r * q for r, q in zip(reps, s)) / min(r * q for r, q in zip(reps, s)) - 1, reps)
               for reps in itertools.product(range(1, MAX_REPEAT + 1), repeat=2) if np.gcd(*reps) == 1)
    assert f.repeats == best[1] == (4, 1)
    assert f.ratio_error == pytest.approx(best[0])
    assert f.key == "4x64+1x256"
    # chance: the smallest fused distance that 0.1 % of the same seeded pairs reach
    g = np.random.default_rng(FUSION_SEED)
    i = g.integers(0, 400, FUSION_PAIRS)
    j = g.integers(0, 399, FUSION_PAIRS)
    j = j + (j >= i)
    d = sorted(4 * _ham(short[a], short[b]) + _ham(long[a], long[b]) for a, b in zip(i, j))
    assert f.chance == d[int(np.ceil(CHANCE_SHARE * FUSION_PAIRS)) - 1]
    assert sum(x < f.chance for x in d) < CHANCE_SHARE * FUSION_PAIRS <= sum(x <= f.chance for x in d)


def test_fuse_refuses_parts_of_another_layout():
    f = Fusion((64, 256), (20.0, 90.0), (4, 1))
    with pytest.raises(ValueError, match="2 parts"):
        f.fuse(np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="part 1 has 2 words per code, but this fusion's part 1 is 256 bits"):
        f.fuse(np.zeros(3, np.uint64), np.zeros((3, 2), np.uint64))
    with pytest.raises(ValueError, match="different numbers of rows"):
        f.fuse(np.zeros(3, np.uint64), np.zeros((2, 4), np.uint64))
    with pytest.raises(ValueError, match="packed uint64"):
        f.fuse(np.zeros(3, np.int64), np.zeros((3, 4), np.uint64))


# --------------------------------------------------------------------------- datasets


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(4),
                               torch.nn.Flatten())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse")
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in "ab":
            (root / split / c).mkdir(parents=True)
            for i in range(30):
                small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
                small.resize((32, 32), Image.Resampling.BICUBIC).save(root / split / c / f"{i:02d}.png")
    src = Image.open(root / "train" / "a" / "05.png")
    ImageEnhance.Brightness(src).enhance(1.05).save(root / "train" / "a" / "05_copy.png")
    src.save(root / "test" / "b" / "zz_leak.png")  # train's a/05 in the test set
    return root


@pytest.mark.parametrize("method,hash_size", [("phash", 8), ("phash+dhash", 8), ("colour_dct", 16)])
def test_fused_plan_is_the_plan_of_the_parts_side_by_side(folders, tmp_path, method, hash_size):
    net = _net()
    train, test = ImageFolder(folders / "train"), ImageFolder(folders / "test")
    plan = plan_dataset(train, embed=net, fuse=True, method=method, hash_size=hash_size, threshold=40,
                        against=test, cache_dir=tmp_path, progress=False, distributed=False)
    fusion = plan.provenance["fusion"]
    fit = None
    if method == "colour_dct":  # the dataset's fit, stored beside its sidecars by the plan above
        from torch_dedup.dataset_fits import dataset_fit
        fit = dataset_fit(train, DedupOptions(method=method, hash_size=hash_size, cache_dir=tmp_path,
                                              progress=False))
        assert plan.provenance["method_fit"] == fit.fingerprint
    h = hash_dataset(train, method, hash_size, cache_dir=tmp_path, progress=False, fit=fit)
    e = embed_dataset(train, net, bits=256, cache_dir=tmp_path, progress=False)
    h_test = hash_dataset(test, method, hash_size, cache_dir=tmp_path, progress=False, fit=fit)
    e_test = embed_dataset(test, net, fit=e.fit, cache_dir=tmp_path, progress=False)

    def by_hand(a, b):
        rows = [a.reshape(len(a), -1)] * fusion["repeats"][0] + [b.reshape(len(b), -1)] * fusion["repeats"][1]
        return np.concatenate(rows, axis=1)

    assert fusion["scales"] == [pair_quantile(h.hashes, h.valid & e.valid), pair_quantile(e.hashes, e.valid)]
    codes = by_hand(h.hashes, e.hashes)
    from torch_dedup.dataset_hashes import DatasetHashes
    dh = DatasetHashes(codes, h.valid & e.valid, labels=h.labels, meta={"method": "x", "hash_size": 0,
                                                                         "decode": "exact"})
    want = plan_from_hashes(dh, 40, against=by_hand(h_test.hashes, e_test.hashes))
    np.testing.assert_array_equal(plan.keep, want.keep)
    np.testing.assert_array_equal(plan.leaked, want.leaked)
    np.testing.assert_array_equal(plan.leaks, want.leaks)
    names = [p.rsplit("/", 1)[-1] for p, _ in train.samples]
    assert plan.leaked[names.index("05.png")]  # the exact copy in the test set, found in the fused space
    assert plan.settings["method"] == f"{method}+embed" and plan.settings["hash_size"] == hash_size
    assert plan.settings["hash_bits"] == sum(r * b for r, b in zip(fusion["repeats"], fusion["bits"]))
    assert plan.provenance["fit"].endswith(f"|{e.fit.fingerprint}|" + "+".join(
        f"{r}x{b}" for b, r in zip(fusion["bits"], fusion["repeats"])))


def test_sampler_takes_fused_options_and_a_given_fused_plan(folders, tmp_path):
    net = _net()
    train = ImageFolder(folders / "train")
    opts = DedupOptions(embed=net, fuse=True, threshold=40, cache_dir=tmp_path, progress=False)
    plan = plan_dataset(train, options=opts, distributed=False)
    sampler = DedupSampler(train, options=opts)
    assert sorted(sampler.kept_indices.tolist()) == np.flatnonzero(plan.keep).tolist()
    assert plan.n_kept < len(train)                  # the brightened copy is found
    DedupSampler(train, plan=plan, options=opts)      # the same code space: followed
    unfused = plan_dataset(train, embed=net, hash_size=16, threshold=40, cache_dir=tmp_path, progress=False,
                           distributed=False)
    with pytest.raises(ValueError, match=r"fuse=True makes 'phash\+embed' codes \(the plan has 'embed'\)"):
        DedupSampler(train, plan=unfused, options=opts)


def test_a_threshold_that_random_pairs_reach_is_a_warning_naming_the_limit(folders, tmp_path, caplog):
    net = _net()
    train = ImageFolder(folders / "train")
    plan = plan_dataset(train, embed=net, fuse=True, threshold=40, cache_dir=tmp_path, progress=False,
                        distributed=False)
    chance = plan.provenance["fusion"]["chance"]
    assert 40 < chance and not [r for r in caplog.records if "random pairs of" in r.getMessage()]
    plan_dataset(train, embed=net, fuse=True, threshold=chance, cache_dir=tmp_path, progress=False,
                 distributed=False)
    warned = [r.getMessage() for r in caplog.records if "random pairs of ImageFolder" in r.getMessage()]
    assert len(warned) == 1 and f"Keep the threshold below {chance}" in warned[0]


def test_fuse_options_are_checked():
    net = _net()
    with pytest.raises(ValueError, match="fuse= and embed_bits= apply to embed= only"):
        DedupOptions(fuse=True)
    with pytest.raises(ValueError, match="embed_bits=128 sets the embedding part of a fused code"):
        DedupOptions(embed=net, embed_bits=128)
    with pytest.raises(ValueError, match="multiple of 64"):
        DedupOptions(embed=net, fuse=True, embed_bits=100)
    with pytest.raises(ValueError, match="or pass fuse=True to fuse the embedding with 'dhash'"):
        DedupOptions(embed=net, method="dhash")
    o = DedupOptions(embed=net, fuse=True, method="colour_dct", hash_size=16)
    assert o.embed_bits == 256 and o.bits == MAX_REPEAT * (256 + 256)
    assert o.settings()["method"] == "colour_dct+embed"
