"""``method="colour_dct"`` through every layer: hashing, sidecars, fit files, plans, against=, ranks, CLI.

The oracle is the two-step definition: a code is ``fit.codes(colour_dct_features(image))``
with the fit the dataset's own (:func:`torch_dedup.dataset_fits.dataset_fit`). The data are
real files read by a real ``torchvision.datasets.ImageFolder``, written by the tests.
"""

from __future__ import annotations

import io
import json
import logging
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from PIL import Image, ImageEnhance
from torchvision.datasets import ImageFolder

from torch_dedup import DedupOptions, DedupSampler, hash_dataset, plan_dataset
from torch_dedup.dataset_fits import FIT_SUFFIX, dataset_fit, fit_file_for, fit_source, with_fit
from torch_dedup.hashing import (ColourDctFit, colour_dct_features, fit_colour_dct_images, hash_array,
                                 hash_images)

N_PER_CLASS = 60
COPIES = (3, 17, 41)  # items of class "a" that get an edited copy


def _photo(rng) -> Image.Image:
    """A smooth colour image (random low-frequency field plus a little noise), like a tiny photo."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC)).astype(np.int16)
    big += rng.integers(-8, 9, big.shape, dtype=np.int16)
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


def _edited(im: Image.Image) -> Image.Image:
    """Brighter by 8 % and re-encoded as JPEG q 80: a near-duplicate a person would call a copy."""
    buf = io.BytesIO()
    ImageEnhance.Brightness(im).enhance(1.08).save(buf, "JPEG", quality=80)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _write_folder(root: Path, seed: int, copies=COPIES) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for c in "ab":
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(N_PER_CLASS):
            im = _photo(rng)
            im.save(root / c / f"{i:03d}.png")
            images.append(im)
            if c == "a" and i in copies:
                _edited(im).save(root / c / f"{i:03d}_copy.png")
    return images


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("cd")
    _write_folder(base / "train", 0)
    _write_folder(base / "test", 1, copies=())
    # the test set also holds one of train's images, edited: a leak
    leak_src = Image.open(base / "train" / "b" / "010.png").convert("RGB")
    _edited(leak_src).save(base / "test" / "b" / "zz_leak.png")
    return base


def _paths(ds: ImageFolder) -> list[str]:
    return [p for p, _ in ds.samples]


# --------------------------------------------------------------------------- hashing layer


def test_hash_images_is_fit_codes_of_features(folders):
    paths = _paths(ImageFolder(folders / "train"))[:40]
    fit = fit_colour_dct_images(paths, bits=256)
    want = fit.codes(colour_dct_features(paths))
    pil = [Image.open(p) for p in paths]
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    for images in (paths, pil, list(arrays), arrays):
        got = hash_images(images, "colour_dct", 16, fit=fit)
        assert got.valid.all()
        np.testing.assert_array_equal(got.hashes, want)
    np.testing.assert_array_equal(hash_array(arrays, "colour_dct", 16, fit=fit), want)


def test_hash_images_needs_the_right_fit(folders):
    paths = _paths(ImageFolder(folders / "train"))[:10]
    fit = fit_colour_dct_images(paths, bits=256)
    with pytest.raises(ValueError, match=r"needs fit=.*fit_colour_dct_images"):
        hash_images(paths, "colour_dct", 16)
    with pytest.raises(ValueError, match=r"256-bit codes but hash_size=8.*hash_size=16"):
        hash_images(paths, "colour_dct", 8, fit=fit)
    with pytest.raises(ValueError, match=r"fit= applies to method='colour_dct' only"):
        hash_images(paths, "phash", 8, fit=fit)
    with pytest.raises(ValueError, match=r"must be a torch_dedup.hashing.ColourDctFit"):
        hash_images(paths, "colour_dct", 16, fit="fit.tdfit")


def test_on_error_skip_pins_the_broken_file(folders, tmp_path):
    paths = _paths(ImageFolder(folders / "train"))[:6]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = paths[:3] + [str(bad)] + paths[3:]
    fit = fit_colour_dct_images(paths, bits=64)
    res = hash_images(items, "colour_dct", 8, fit=fit, on_error="skip")
    assert res.valid.tolist() == [True, True, True, False, True, True, True]
    assert res.failures[0][0] == 3 and res.failures[0][1] == str(bad)
    np.testing.assert_array_equal(res.hashes[res.valid], fit.codes(colour_dct_features(paths)))
    with pytest.raises(Exception, match="broken.png"):
        hash_images(items, "colour_dct", 8, fit=fit, on_error="raise")


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="phash+colour_dct"), r"composite code.*use method='colour_dct' alone"),
    (dict(method="colour_dct", hash_size=12), r"hash_size=12 gives 144-bit codes.*16 \(256\)"),
    (dict(method="colour_dct", fast_decode=True), r"fast_decode=True applies to the imagehash methods"),
])
def test_options_refuse_what_colour_dct_cannot_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DedupOptions(**kwargs)


# --------------------------------------------------------------------------- fit files and sidecars


def test_fit_is_stored_once_and_reloaded_bit_for_bit(folders, tmp_path, caplog):
    ds = ImageFolder(folders / "train")
    opts = DedupOptions(method="colour_dct", hash_size=16, cache_dir=tmp_path, progress=False)
    first = dataset_fit(ds, opts)
    path = fit_file_for(fit_source(ds, opts), opts)
    assert path.exists() and path.suffix == FIT_SUFFIX
    again = dataset_fit(ds, opts)
    assert again.fingerprint == first.fingerprint
    for a, b in zip(first.to_arrays()[0].values(), again.to_arrays()[0].values()):
        np.testing.assert_array_equal(a, b)
    # the fit is made from the data alone: made again without any file, it is the same fit
    assert dataset_fit(ds, opts.replace(cache_dir=False)).fingerprint == first.fingerprint
    # and it is the fit of the items' exact features (all items: fewer than FIT_SAMPLE), the
    # one fit_colour_dct_images (and the shard path) makes of the same images
    assert fit_colour_dct_images(_paths(ds), bits=256).fingerprint == first.fingerprint
    # an edited file is a WARNING and a refit, never used
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="torch_dedup"):
        fixed = dataset_fit(ds, opts)
    assert "ignoring fit file" in caplog.text
    assert fixed.fingerprint == first.fingerprint


def test_dataset_codes_are_keyed_on_the_fit(folders, tmp_path):
    ds = ImageFolder(folders / "train")
    h = hash_dataset(ds, method="colour_dct", hash_size=16, cache_dir=tmp_path, progress=False)
    fit = dataset_fit(ds, DedupOptions(method="colour_dct", hash_size=16, cache_dir=tmp_path))
    assert h.meta["fit"] == fit.fingerprint and not h.from_cache
    np.testing.assert_array_equal(h.hashes, fit.codes(colour_dct_features(_paths(ds))))
    again = hash_dataset(ds, method="colour_dct", hash_size=16, cache_dir=tmp_path, progress=False)
    assert again.from_cache
    np.testing.assert_array_equal(again.hashes, h.hashes)
    # another fit's codes live in another sidecar: never read as this fit's
    other = fit_colour_dct_images(_paths(ds)[:50], bits=256, seed=5)
    mine = hash_dataset(ds, method="colour_dct", hash_size=16, cache_dir=tmp_path, progress=False, fit=other)
    assert not mine.from_cache and mine.meta["fit"] == other.fingerprint and mine.sidecar_path != h.sidecar_path
    np.testing.assert_array_equal(mine.hashes, other.codes(colour_dct_features(_paths(ds))))
    # refresh recomputes the same codes bit for bit
    fresh = hash_dataset(ds, method="colour_dct", hash_size=16, cache_dir=tmp_path, progress=False, refresh=True)
    np.testing.assert_array_equal(fresh.hashes, h.hashes)


def test_a_subset_shares_its_base_fit(folders, tmp_path):
    import torch

    ds = ImageFolder(folders / "train")
    sub = torch.utils.data.Subset(ds, list(range(10, 90)))
    opts = DedupOptions(method="colour_dct", hash_size=8, cache_dir=tmp_path)
    assert with_fit(sub, opts).fit.fingerprint == with_fit(ds, opts).fit.fingerprint
    h_sub = hash_dataset(sub, method="colour_dct", hash_size=8, cache_dir=tmp_path, progress=False)
    h_all = hash_dataset(ds, method="colour_dct", hash_size=8, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(h_sub.hashes, h_all.hashes[10:90])


def test_unreadable_items_are_left_out_of_the_fit_and_reported_by_hashing(folders, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(folders / "train", root)
    (root / "a" / "zzz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = ImageFolder(root)
    good = [p for p in _paths(ds) if not p.endswith("zzz_broken.png")]
    opts = DedupOptions(method="colour_dct", hash_size=8, cache_dir=False)
    assert dataset_fit(ds, opts).fingerprint == fit_colour_dct_images(good, bits=64).fingerprint
    h = hash_dataset(ds, method="colour_dct", cache_dir=False, on_error="skip", progress=False)
    assert h.valid.sum() == len(good) and h.failures[0][1].endswith("zzz_broken.png")
    with pytest.raises(Exception, match="zzz_broken.png"):
        hash_dataset(ds, method="colour_dct", cache_dir=False, progress=False)


# --------------------------------------------------------------------------- plans


def test_plan_finds_the_copies_and_codes_against_with_the_train_fit(folders, tmp_path):
    train, test = ImageFolder(folders / "train"), ImageFolder(folders / "test")
    plan = plan_dataset(train, threshold=40, method="colour_dct", hash_size=16, cache_dir=tmp_path,
                        against=test, leak_pairs=True, progress=False, distributed=False)
    names = [Path(p).name for p in _paths(train)]
    removed = {names[i] for i in np.flatnonzero(~plan.keep)}
    # each planted copy (cosine ~0.95, about 24 bits; unrelated images are 90+ bits apart)
    # is grouped with its original (one of the two removed), and the
    # train item edited into the test set is a leak
    for i in COPIES:
        assert {f"{i:03d}.png", f"{i:03d}_copy.png"} & removed
    leak_item = names.index("010.png", N_PER_CLASS)  # class b's 010.png
    assert plan.leaked[leak_item]
    # the test set was coded with the train set's fit, in the train set's space
    fit = dataset_fit(train, DedupOptions(method="colour_dct", hash_size=16, cache_dir=tmp_path))
    assert plan.provenance["fit"] == fit.fingerprint
    h_test = hash_dataset(test, method="colour_dct", hash_size=16, cache_dir=tmp_path, progress=False, fit=fit)
    assert h_test.from_cache  # the plan's against= hashing wrote exactly this sidecar
    np.testing.assert_array_equal(h_test.hashes, fit.codes(colour_dct_features(_paths(test))))


def test_against_hashes_of_another_space_are_refused(folders, tmp_path):
    train, test = ImageFolder(folders / "train"), ImageFolder(folders / "test")
    own = hash_dataset(test, method="colour_dct", cache_dir=tmp_path, progress=False)  # the test set's own fit
    with pytest.raises(ValueError, match="codes of another method or fit are not comparable"):
        plan_dataset(train, method="colour_dct", against=own, cache_dir=tmp_path, progress=False, distributed=False)
    phash = hash_dataset(test, cache_dir=tmp_path, progress=False)  # 64 bits too, another method
    with pytest.raises(ValueError, match="codes of another method or fit are not comparable"):
        plan_dataset(train, method="colour_dct", against=phash, cache_dir=tmp_path, progress=False, distributed=False)
    with pytest.raises(ValueError, match="codes of another method or fit are not comparable"):
        plan_dataset(train, method="dhash", against=phash, cache_dir=tmp_path, progress=False, distributed=False)


def test_a_given_plan_with_another_fit_is_refused(folders, tmp_path):
    train = ImageFolder(folders / "train")
    plan = plan_dataset(train, threshold=6, method="colour_dct", cache_dir=tmp_path, progress=False,
                        distributed=False)
    other = fit_colour_dct_images(_paths(train)[:30], bits=64, seed=3)
    with pytest.raises(ValueError, match=r"fit= with fingerprint"):
        DedupSampler(train, plan=plan, options=DedupOptions(method="colour_dct", fit=other))
    s = DedupSampler(train, plan=plan, options=DedupOptions(method="colour_dct"))
    assert len(s) == plan.n_kept


def test_sampler_and_cli_take_colour_dct(folders, tmp_path):
    from torch_dedup.cli import main

    train = ImageFolder(folders / "train")
    s = DedupSampler(train, threshold=24, method="colour_dct", hash_size=16, cache_dir=tmp_path, progress=False)
    out = io.StringIO()
    import contextlib
    with contextlib.redirect_stdout(out):
        code = main(["scan", str(folders / "train"), "--method", "colour_dct", "--hash-size", "16",
                     "--threshold", "24", "--cache-dir", str(tmp_path), "--json", "--no-progress"])
    assert code == 0
    doc = json.loads(out.getvalue())
    assert doc["n_kept"] == len(s)


# --------------------------------------------------------------------------- ranks


def _rank(rank: int, out: str, init: str, root: str) -> None:
    from torch_dedup.distributed_hashing import hash_dataset_distributed

    out_p = Path(out)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    report: dict = {}
    try:
        ds = ImageFolder(Path(root) / "train")
        h = hash_dataset_distributed(ds, method="colour_dct", hash_size=16, cache_dir=out_p / "cache",
                                     progress=False)
        np.save(out_p / f"codes_{rank}.npy", h.hashes)
        report["fit"] = h.meta["fit"]
        again = hash_dataset_distributed(ds, method="colour_dct", hash_size=16, cache_dir=out_p / "cache",
                                         progress=False)
        report["again_from_cache"] = bool(again.from_cache)
        report["again_fit"] = again.meta["fit"]
        plan = plan_dataset(ds, threshold=24, method="colour_dct", hash_size=16, cache_dir=out_p / "cache",
                            against=ImageFolder(Path(root) / "test"), progress=False)
        np.save(out_p / f"keep_{rank}.npy", plan.keep)
    except Exception:  # noqa: BLE001 - the test reads the traceback
        report["error"] = traceback.format_exc()
    finally:
        (out_p / f"report_{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_share_one_fit_and_the_one_process_codes(folders, tmp_path):
    from ddp_utils import run_ranks

    reports = run_ranks(_rank, (str(tmp_path), f"file://{tmp_path / 'rdv'}", str(folders)), tmp_path)
    train, test = ImageFolder(folders / "train"), ImageFolder(folders / "test")
    fit = dataset_fit(train, DedupOptions(method="colour_dct", hash_size=16, cache_dir=False))
    want = fit.codes(colour_dct_features(_paths(train)))
    one = plan_dataset(train, threshold=24, method="colour_dct", hash_size=16, cache_dir=False, against=test,
                       progress=False, distributed=False)
    for r, rep in enumerate(reports):
        assert rep["fit"] == rep["again_fit"] == fit.fingerprint
        assert rep["again_from_cache"]
        np.testing.assert_array_equal(np.load(tmp_path / f"codes_{r}.npy"), want)
        np.testing.assert_array_equal(np.load(tmp_path / f"keep_{r}.npy"), one.keep)
    assert isinstance(ColourDctFit.from_arrays(*fit.to_arrays()), ColourDctFit)
