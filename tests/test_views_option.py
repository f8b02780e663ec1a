"""``views="shift"``: colour_dct items with the codes of their views, through plan_dataset and the sampler.

The oracle is ``find_duplicates_views`` on codes made by hand: the dataset's fit (as
``plan_dataset`` stores it), ``hash_dataset`` for the own codes, and
``colour_dct_view_features`` of the files coded with the same fit for the views.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from torch_dedup import DedupOptions, DedupSampler, plan_dataset
from torch_dedup.dataset_fits import dataset_fit
from torch_dedup.dataset_hashes import hash_dataset
from torch_dedup.dataset_views import dataset_views
from torch_dedup.hamming import popcount64
from torch_dedup.hamming.views import find_duplicates_views, view_distances
from torch_dedup.hashing.views import colour_dct_view_features


def _smooth(rng, size=32) -> np.ndarray:
    small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    noise = rng.integers(-10, 11, (size, size, 3))
    return np.clip(np.asarray(small.resize((size, size), Image.Resampling.BICUBIC)) + noise, 0, 255).astype(np.uint8)


def _shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    p = max(abs(dx), abs(dy))
    b = np.pad(a, ((p, p), (p, p), (0, 0)), mode="edge")
    h, w = a.shape[:2]
    return b[p - dy:p - dy + h, p - dx:p - dx + w]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(5)
    for split in ("train", "test"):
        for c in "ab":
            (root / split / c).mkdir(parents=True)
            for i in range(40):
                Image.fromarray(_smooth(rng)).save(root / split / c / f"{i:02d}.png")
    src = np.asarray(Image.open(root / "train" / "a" / "03.png"))
    Image.fromarray(_shift(src, 2, -2)).save(root / "train" / "b" / "zz_shifted.png")   # a shifted copy
    Image.fromarray(_shift(src, -2, 0)).save(root / "test" / "b" / "zz_leak.png")       # one in the test set
    (root / "train" / "b" / "zz_broken.png").write_bytes(b"not an image")
    return root


def _names(ds) -> list[str]:
    return [p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p, _ in ds.samples]


def test_views_plan_is_find_duplicates_views_of_codes_made_by_hand(folders, tmp_path):
    train, test = ImageFolder(folders / "train"), ImageFolder(folders / "test")
    opts = DedupOptions(method="colour_dct", hash_size=16, threshold=22, views="shift", against=test,
                        cache_dir=tmp_path, progress=False, on_error="skip")
    plan = plan_dataset(train, options=opts, distributed=False)
    fit = dataset_fit(train, opts)
    own = hash_dataset(train, "colour_dct", 16, cache_dir=tmp_path, progress=False, fit=fit, on_error="skip")
    feats, ok, fails = colour_dct_view_features([p for p, _ in train.samples], "shift", on_error="skip")
    views = np.zeros((len(train), feats.shape[1], 4), np.uint64)
    views[ok] = fit.codes(feats[ok].reshape(-1, feats.shape[2])).reshape(int(ok.sum()), feats.shape[1], 4)
    other = hash_dataset(test, "colour_dct", 16, cache_dir=tmp_path, progress=False, fit=fit)
    want = find_duplicates_views(own.hashes, views, 22, labels=np.array(train.targets), against=other.hashes,
                                 valid=own.valid & ok)
    for f in ("keep", "representative", "distance_to_rep", "leaked", "leaks", "failed", "label_conflicts"):
        np.testing.assert_array_equal(getattr(plan, f), getattr(want, f), err_msg=f)
    names = _names(train)
    orig, copy, broken = names.index("a/03.png"), names.index("b/zz_shifted.png"), names.index("b/zz_broken.png")
    # the shifted copy: far from the original's own code, at distance 0 from one of its views
    assert int(popcount64(own.hashes[orig] ^ own.hashes[copy]).sum()) > 22
    assert plan.leaked[orig]                               # train a/03 has a shifted copy in the test set
    assert view_distances(own.hashes, views, [copy], [orig])[0] <= 22  # (the original leaked: out first)
    assert plan.failed[broken] and plan.provenance["n_view_failures"] == 1
    assert plan.settings["views"] == 9 and plan.settings["views_name"] == "shift"
    without = plan_dataset(train, options=opts.replace(views=None), distributed=False)
    assert not without.leaked[orig] and without.keep[copy]  # the own codes alone miss both


def test_view_codes_are_cached_and_a_damaged_file_is_recomputed_with_a_warning(folders, tmp_path, caplog):
    train = ImageFolder(folders / "train")
    opts = DedupOptions(method="colour_dct", hash_size=16, threshold=22, views="shift", cache_dir=tmp_path,
                        progress=False, on_error="skip")
    opts = opts.replace(fit=dataset_fit(train, opts))
    first = dataset_views(train, opts)
    again = dataset_views(train, opts)
    assert not first.from_cache and again.from_cache and again.path == first.path
    np.testing.assert_array_equal(first.codes, again.codes)
    data = bytearray(first.path.read_bytes())
    data[-5] ^= 0xFF
    first.path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        third = dataset_views(train, opts)
    assert not third.from_cache and any("ignoring view codes file" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(first.codes, third.codes)
    # made while skipping a failure: a raise run meets the failure itself
    with pytest.raises(Exception, match="zz_broken"):
        dataset_views(train, opts.replace(on_error="raise"))


def test_a_subset_and_the_sampler_follow_the_views_plan(folders, tmp_path):
    train = ImageFolder(folders / "train")
    keep = [i for i, n in enumerate(_names(train)) if n != "b/zz_broken.png"]
    sub = Subset(train, keep)
    opts = DedupOptions(method="colour_dct", hash_size=16, threshold=22, views="shift", cache_dir=tmp_path,
                        progress=False)
    plan = plan_dataset(sub, options=opts, distributed=False)
    sampler = DedupSampler(sub, options=opts)
    assert sorted(sampler.kept_indices.tolist()) == np.flatnonzero(plan.keep).tolist()
    assert plan.n_kept == len(sub) - 1                     # the shifted copy falls to its original
    DedupSampler(sub, plan=plan, options=opts)             # the same settings: followed
    one_line = DedupSampler(sub, threshold=22, method="colour_dct", hash_size=16, views="shift", cache_dir=tmp_path,
                            progress=False)
    assert sorted(one_line.kept_indices.tolist()) == np.flatnonzero(plan.keep).tolist()
    from torch_dedup import DedupDataset
    assert len(DedupDataset(sub, threshold=22, method="colour_dct", hash_size=16, views="shift",
                            cache_dir=tmp_path, progress=False)) == plan.n_kept
    with pytest.raises(ValueError, match=r"views='shift' \(the plan has None\)"):
        DedupSampler(sub, plan=plan_dataset(sub, options=opts.replace(views=None), distributed=False),
                     options=opts)


@pytest.mark.parametrize("kwargs,match", [
    (dict(views="shift", fast_decode=True), "does not take fast_decode=True"),
    (dict(method="colour_dct", hash_size=16, views="wobble"), "shift"),
])
def test_views_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DedupOptions(**kwargs)


@pytest.mark.parametrize("method,hash_size,name", [("phash", 16, "shift"), ("phash+dhash", 8, "shift+rotate")])
def test_views_of_an_imagehash_method_plan_like_codes_made_by_hand(folders, tmp_path, method, hash_size, name):
    from torch_dedup.hashing import view_codes

    train, test = ImageFolder(folders / "train"), ImageFolder(folders / "test")
    opts = DedupOptions(method=method, hash_size=hash_size, threshold=20, views=name, against=test,
                        cache_dir=tmp_path, progress=False, on_error="skip")
    plan = plan_dataset(train, options=opts, distributed=False)
    own = hash_dataset(train, method, hash_size, cache_dir=tmp_path, progress=False, on_error="skip")
    views, ok, _ = view_codes([p for p, _ in train.samples], name, method, hash_size, on_error="skip")
    other = hash_dataset(test, method, hash_size, cache_dir=tmp_path, progress=False)
    want = find_duplicates_views(own.hashes, views, 20, labels=np.array(train.targets), against=other.hashes,
                                 valid=own.valid & ok)
    for f in ("keep", "representative", "distance_to_rep", "leaked", "leaks", "failed"):
        np.testing.assert_array_equal(getattr(plan, f), getattr(want, f), err_msg=f)
    assert plan.settings["views"] == (9 if name == "shift" else 13) and plan.settings["method"] == method
    again = plan_dataset(train, options=opts, distributed=False)
    assert again.provenance["views_from_cache"] and np.array_equal(again.keep, plan.keep)


def test_views_of_an_items_dataset_name_a_failing_item_by_its_dataset_index(tmp_path):
    """A dataset read through image_fn (kind "items"): the views come from the same reader, and an
    item that cannot be read is named by its index in the dataset, not in the batch."""
    rng = np.random.default_rng(9)
    images = [Image.fromarray(_smooth(rng)) for _ in range(12)]
    images[7] = Image.fromarray(_shift(np.asarray(images[2]), 2, 0))   # a shifted copy of item 2

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return images[i], 0

    def image_fn(i):
        if i == 10:
            raise OSError("item 10 is gone")
        return images[i]

    opts = DedupOptions(method="colour_dct", hash_size=16, threshold=20, views="shift", image_fn=image_fn,
                        fingerprint="items-v1", cache_dir=tmp_path, progress=False, on_error="skip")
    plan = plan_dataset(Items(), options=opts, distributed=False)
    assert plan.failed.tolist() == [i == 10 for i in range(12)]
    assert not plan.keep[7] and plan.representative[7] == 2
    with pytest.raises(Exception, match="item 10"):
        plan_dataset(Items(), options=opts.replace(on_error="raise", refresh=True), distributed=False)
