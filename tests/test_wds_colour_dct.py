"""colour_dct on webdataset shards: one fit per shard set, applied to every shard and every against= set.

Oracle: ``hash_images(pil_images, "colour_dct", hs, fit=fit)`` of the images webdataset itself
reads from the same shards, bit for bit. Shards are written here with webdataset's ``TarWriter``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageEnhance

from torch_dedup import dataset_fits
from torch_dedup.cli._wds import register
from torch_dedup.errors import ImageDecodeError, SidecarError
from torch_dedup.hashing import (
    ColourDctFit,
    colour_dct_features,
    fit_colour_dct,
    hash_images,
)
from torch_dedup.wds import (
    ShardPlan,
    dedup_filter,
    fit_shards,
    hash_shard,
    hash_shards,
    plan_shards,
)
from torch_dedup.wds import shard_features as shard_features_mod
from torch_dedup.wds import shard_fit as shard_fit_mod
from torch_dedup.wds.shard_features import read_shard_features, shard_features_paths
from torch_dedup.wds.shard_fit import shard_fit
from torch_dedup.wds.shard_plan import STATUS_DUPLICATE, STATUS_LEAKED
from torch_dedup.wds.shard_sidecar import read_shard_sidecar, shard_sidecar_paths
from torch_dedup.wds.shards import _hash_and_store

HS = 16  # 256-bit codes
T = 22  # DEFAULT_THRESHOLD of colour_dct: a starting threshold for 256-bit codes

# webdataset 1.0.2 leaves its shard file objects for the garbage collector to close
pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def _texture(seed: int, size: int = 56) -> Image.Image:
    """Smooth random colour texture: well spread codes, no accidental near-duplicates."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 5, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8), "RGB")


def _encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _near_copy(img: Image.Image) -> bytes:
    """Re-encoded at a lower quality, a little brighter: what a scraped copy looks like."""
    return _encode(ImageEnhance.Brightness(img).enhance(1.05), quality=60)


def _write_shards(folder, shards: list[list[dict]]) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    urls = []
    for s, samples in enumerate(shards):
        path = os.path.join(folder, f"shard-{s:06d}.tar")
        with wds.TarWriter(path, encoder=False) as sink:
            for sample in samples:
                sink.write(sample)
        urls.append(path)
    return urls


def _shard_samples(first_seed: int, n: int, *, png_every: int = 0, no_image_at: int | None = None) -> list[dict]:
    out = []
    for i in range(n):
        key = f"{i:06d}"
        if i == no_image_at:
            out.append({"__key__": key, "txt": b"no image"})
            continue
        png = png_every and i % png_every == png_every - 1
        data = _encode(_texture(first_seed + i), "PNG" if png else "JPEG")
        out.append({"__key__": key, "png" if png else "jpg": data, "cls": str(i).encode()})
    return out


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """3 train shards; shard 2's sample 7 is a near copy of shard 0's sample 3 (planted across shards)."""
    d = tmp_path_factory.mktemp("train")
    shards = [_shard_samples(1000 * s, 20, png_every=6, no_image_at=11 if s == 1 else None) for s in range(3)]
    shards[2][7] = {"__key__": "000007", "jpg": _near_copy(_texture(3)), "cls": b"3"}
    return _write_shards(d, shards)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """2 test shards; test shard 1's sample 4 is a near copy of train shard 1's sample 9 (a leak)."""
    d = tmp_path_factory.mktemp("test")
    shards = [_shard_samples(50_000 + 1000 * s, 12) for s in range(2)]
    shards[1][4] = {"__key__": "000004", "jpg": _near_copy(_texture(1009)), "cls": b"9"}
    return _write_shards(d, shards)


def _pil_images(url: str) -> tuple[list[int], list[Image.Image]]:
    """Each sample's image as webdataset reads it (first of jpg, png), with its index in the shard."""
    idx, images = [], []
    for i, s in enumerate(wds.WebDataset(url, shardshuffle=False)):
        ext = next((e for e in ("jpg", "png") if e in s), None)
        if ext is not None:
            idx.append(i)
            images.append(Image.open(io.BytesIO(s[ext])))
    return idx, images


def _assert_codes_equal_hash_images(h, fit: ColourDctFit) -> None:
    for sc in h.sidecars:
        idx, images = _pil_images(sc.url)
        direct = np.asarray(hash_images(images, "colour_dct", HS, fit=fit).hashes)
        assert sc.valid[idx].all() and np.array_equal(sc.hashes[idx], direct), sc.url
        assert not np.delete(sc.valid, idx).any()


def _index(plan: ShardPlan, url: str, key: str) -> int:
    s = plan.urls.index(url)
    return int(plan.shard_offsets[s]) + plan.shard_keys(s).index(key)


# --------------------------------------------------------------------------- codes and caching
def test_codes_equal_hash_images_and_rerun_reads_sidecars_and_fit_file(train, monkeypatch):
    h = hash_shards(train, "colour_dct", HS, workers=0, progress=False)
    fit = h.fit
    assert fit is not None and fit.bits == HS * HS and h.hashed == train
    assert h.settings["fit"] == fit.fingerprint
    _assert_codes_equal_hash_images(h, fit)
    for sc in h.sidecars:  # keyed on the fit: in the name and in the meta
        assert sc.meta["fit"] == fit.fingerprint and f"fit{fit.fingerprint[:16]}" in sc.path.name
    made = shard_fit(train, "colour_dct", HS, workers=0, progress=False)
    assert made.from_cache and made.fit.fingerprint == fit.fingerprint and made.path.exists()
    assert made.path.parent == h.sidecars[0].path.parent  # beside the shards and their sidecars

    # a re-run neither fits nor decodes: it reads the fit file and the sidecars
    def boom(*a, **k):
        raise AssertionError("refitted or decoded on a re-run")

    monkeypatch.setattr(shard_fit_mod, "fit_colour_dct", boom)
    monkeypatch.setattr(shard_features_mod, "colour_dct_features", boom)
    again = hash_shards(train, "colour_dct", HS, workers=0, progress=False)
    assert again.hashed == [] and again.cached == train and again.fit.fingerprint == fit.fingerprint
    # a lost code sidecar is recoded from the shard's feature sidecar, still without decoding
    os.remove(again.sidecars[1].path)
    third = hash_shards(train, "colour_dct", HS, workers=0, progress=False)
    assert third.hashed == [train[1]] and third.sidecars[1].hashes.tobytes() == h.sidecars[1].hashes.tobytes()


def test_fit_is_a_seeded_sample_over_global_positions(train, tmp_path, monkeypatch):
    # the fit reads the feature sidecars: the sampled rows are the images' exact features, in URL order
    hash_shards(train, "colour_dct", HS, workers=0, progress=False)
    feats = []
    for url in train:
        sf = read_shard_features(shard_features_paths(url)[0])
        idx, images = _pil_images(url)
        assert np.array_equal(sf.features[idx], colour_dct_features(images))
        feats.append(sf.features[sf.valid])
    feats = np.concatenate(feats)
    assert fit_shards(train, hash_size=HS, workers=0, progress=False).fingerprint == \
        fit_colour_dct(feats, bits=HS * HS, seed=dataset_fits.FIT_SEED).fingerprint
    monkeypatch.setattr(dataset_fits, "FIT_SAMPLE", 25)  # fewer than the 59 images: a seeded choice
    small = fit_shards(train, hash_size=HS, sidecar_dir=tmp_path / "sc", workers=0, progress=False)
    chosen = np.sort(np.random.default_rng(dataset_fits.FIT_SEED).choice(len(feats), 25, replace=False))
    assert small.fingerprint == fit_colour_dct(feats[chosen], bits=HS * HS, seed=0).fingerprint


def test_planted_near_copy_across_shards_is_found(train, tmp_path):
    plan = plan_shards(train, T, method="colour_dct", hash_size=HS, workers=0, progress=False,
                       out=tmp_path / "p.tdplan")
    copy, original = _index(plan, train[2], "000007"), _index(plan, train[0], "000003")
    assert plan.status[copy] == STATUS_DUPLICATE and plan.representative[copy] == original
    assert plan.n_removed == 1  # nothing else is that close
    fit = fit_shards(train, hash_size=HS, workers=0, progress=False)
    assert plan.settings["fit"] == fit.fingerprint == plan.plan.provenance["fit"]
    loaded = ShardPlan.load(tmp_path / "p.tdplan")
    assert loaded.settings["fit"] == fit.fingerprint and np.array_equal(loaded.drop, plan.drop)


# --------------------------------------------------------------------------- against= and explicit fits
def test_against_is_coded_with_the_train_fit(train, heldout, tmp_path):
    fit = fit_shards(train, hash_size=HS, workers=0, progress=False)
    gate = plan_shards(heldout, T, method="colour_dct", hash_size=HS, fit=fit, against=train, workers=0,
                       progress=False, out=tmp_path / "gate.tdplan")
    leak = _index(gate, heldout[1], "000004")
    assert gate.status[leak] == STATUS_LEAKED and gate.plan.leaked.sum() == 1 and gate.drop[leak]
    assert gate.settings["fit"] == fit.fingerprint and gate.plan.provenance["against"][0]["fit"] == fit.fingerprint
    # the test shards' codes are those computed directly with the train fit
    _assert_codes_equal_hash_images(hash_shards(heldout, "colour_dct", HS, fit=fit, workers=0, progress=False), fit)
    # the plan file round-trips, and the stream filter drops the leaked sample
    loaded = ShardPlan.load(tmp_path / "gate.tdplan")
    assert loaded.status[leak] == STATUS_LEAKED and loaded.summary["n_leaked"] == 1
    seen = [(s["__url__"], s["__key__"]) for s in wds.WebDataset(heldout, shardshuffle=False)
            .compose(dedup_filter(loaded))]
    assert (heldout[1], "000004") not in seen and len(seen) == loaded.n_kept


def test_against_without_fit_uses_the_planned_shards_fit(train, heldout, tmp_path):
    gate = plan_shards(heldout, T, method="colour_dct", hash_size=HS, against=train, sidecar_dir=tmp_path,
                       workers=0, progress=False)
    test_fit = fit_shards(heldout, hash_size=HS, sidecar_dir=tmp_path, workers=0, progress=False)
    assert gate.settings["fit"] == test_fit.fingerprint
    assert gate.plan.leaked.sum() == 1
    # the train shards were coded in the test shards' space (sidecars keyed on that fit)
    h = hash_shards(train, "colour_dct", HS, fit=test_fit, sidecar_dir=tmp_path, workers=0, progress=False)
    assert h.cached == train
    _assert_codes_equal_hash_images(h, test_fit)


def test_wrong_fits_are_refused(train, tmp_path):
    fit = fit_shards(train, hash_size=HS, workers=0, progress=False)
    with pytest.raises(ValueError, match=r"256-bit codes but hash_size=8"):
        hash_shards(train, "colour_dct", 8, fit=fit, workers=0, progress=False)
    with pytest.raises(ValueError, match=r"256-bit codes but hash_size=8"):
        plan_shards(train, 6, method="colour_dct", hash_size=8, fit=fit, workers=0, progress=False)
    with pytest.raises(ValueError, match=r"fit= applies to method='colour_dct' only"):
        hash_shards(train, "phash", 8, fit=fit, workers=0, progress=False)
    with pytest.raises(ValueError, match="fast_decode"):
        hash_shards(train, "colour_dct", HS, fast_decode=True, workers=0, progress=False)
    # ShardHashes of another fit are never planned, nor compared, in this fit's space
    other = fit_colour_dct(colour_dct_features(_pil_images(train[0])[1]), bits=HS * HS, seed=1)
    h_other = hash_shards(train, "colour_dct", HS, fit=other, workers=0, progress=False)
    with pytest.raises(ValueError, match="codes of different fits are not comparable"):
        plan_shards(h_other, T, method="colour_dct", hash_size=HS, fit=fit, progress=False)
    with pytest.raises(ValueError, match=r"against set 0 \(ShardHashes\) was hashed with .*fit="):
        plan_shards(train, T, method="colour_dct", hash_size=HS, fit=fit, against=h_other, workers=0,
                    progress=False)
    # a sidecar of another fit put under this fit's name is stale, never read as these codes
    mine = shard_sidecar_paths(train[0], "colour_dct", HS, fit_fingerprint=fit.fingerprint)[0]
    with pytest.raises(SidecarError, match="stale: fit"):
        read_shard_sidecar(h_other.sidecars[0].path, expect={"fit": fit.fingerprint})
    shutil.copy(h_other.sidecars[0].path, mine)
    again = hash_shards(train, "colour_dct", HS, fit=fit, workers=0, progress=False)
    assert again.hashed == [train[0]]
    _assert_codes_equal_hash_images(again, fit)


def test_hash_shard_without_fit_names_the_fix(train):
    with pytest.raises(ValueError, match=r"needs fit=.*fit_shards\(urls, hash_size=16\)"):
        hash_shard(train[0], "colour_dct", HS)
    fit = fit_shards(train, hash_size=HS, workers=0, progress=False)
    sc = hash_shard(train[0], "colour_dct", HS, fit=fit)
    idx, images = _pil_images(train[0])
    assert np.array_equal(sc.hashes[idx], np.asarray(hash_images(images, "colour_dct", HS, fit=fit).hashes))


def test_worker_task_rebuilds_the_fit_and_checks_its_fingerprint(train, tmp_path):
    fit = fit_shards(train, hash_size=HS, workers=0, progress=False)
    arrays, meta = fit.to_arrays()
    paths = [str(p) for p in shard_sidecar_paths(train[0], "colour_dct", HS, sidecar_dir=tmp_path,
                                                 fit_fingerprint=fit.fingerprint)]
    feature_paths = [str(p) for p in shard_features_paths(train[0], tmp_path)]
    exts = ("jpg", "png")
    res = _hash_and_store(train[0], paths, "colour_dct", HS, exts, "raise", False, (arrays, meta), feature_paths)
    assert res == ("ok", paths[0]) and os.path.exists(feature_paths[0])
    idx, images = _pil_images(train[0])
    assert np.array_equal(read_shard_sidecar(paths[0]).hashes[idx],
                          np.asarray(hash_images(images, "colour_dct", HS, fit=fit).hashes))
    edited = dict(arrays, planes=arrays["planes"] * 2)
    with pytest.raises(ValueError, match="does not match its arrays"):
        _hash_and_store(train[0], paths, "colour_dct", HS, exts, "raise", False, (edited, meta), feature_paths)


def test_worker_processes_get_the_fit(train, tmp_path):
    fit = fit_shards(train, hash_size=HS, workers=0, progress=False)
    h = hash_shards(train, "colour_dct", HS, fit=fit, sidecar_dir=tmp_path, workers=2, progress=False)
    assert h.hashed == train
    _assert_codes_equal_hash_images(h, fit)


def test_ray_engine_carries_the_fit(train, tmp_path):
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        # auto fit: the feature pass runs as Ray tasks; explicit fit: each task gets the fit's arrays
        auto = hash_shards(train, "colour_dct", HS, engine="ray", sidecar_dir=tmp_path / "a", progress=False)
        given = hash_shards(train, "colour_dct", HS, fit=auto.fit, engine="ray", sidecar_dir=tmp_path / "b",
                            progress=False)
    finally:
        if started:
            ray.shutdown()
    local = fit_shards(train, hash_size=HS, workers=0, progress=False)
    assert auto.fit.fingerprint == local.fingerprint and given.hashed == train
    for h in (auto, given):
        _assert_codes_equal_hash_images(h, local)


def test_undecodable_image_skip_then_raise(tmp_path):
    samples = _shard_samples(7000, 8)
    samples[2] = {"__key__": "000002", "jpg": b"\xff\xd8 not a jpeg"}
    urls = _write_shards(tmp_path / "bad", [samples, _shard_samples(8000, 8)])
    plan = plan_shards(urls, T, method="colour_dct", hash_size=HS, on_error="skip", workers=0, progress=False)
    assert plan.summary["n_failed"] == 1 and plan.drop[2]
    with pytest.raises(ImageDecodeError, match="on_error='skip'"):
        plan_shards(urls, T, method="colour_dct", hash_size=HS, workers=0, progress=False)


# --------------------------------------------------------------------------- command line
def _run(argv: list[str]) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="torch-dedup")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    lines: list[str] = []
    return args.func(args, lines.append), lines


def test_cli_hash_plan_against_rewrite(train, heldout, tmp_path, capsys):
    fit = fit_shards(train, hash_size=HS, workers=0, progress=False)
    rc, _ = _run(["wds", "hash", *train, "--method", "colour_dct", "--hash-size", "16", "--workers", "0",
                  "--json", "--no-progress"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0 and info["fit"] == fit.fingerprint and info["hashed"] + info["cached"] == 3
    out = tmp_path / "p.tdplan"
    rc, lines = _run(["wds", "plan", *train, "--method", "colour_dct", "--hash-size", "16", "-t", str(T),
                      "--out", str(out), "--workers", "0", "--no-progress"])
    assert rc == 0 and fit.fingerprint in "\n".join(lines) and "dropping 1 " in lines[0]
    rc, lines = _run(["wds", "plan", *heldout, "--against", *train, "--method", "colour_dct", "--hash-size", "16",
                      "-t", str(T), "--out", str(tmp_path / "gate.tdplan"), "--workers", "0", "--no-progress"])
    assert rc == 0 and "1 leaked into --against" in lines[0]
    # a rewrite keeps the codes' fit: the new shards' sidecars are read as these codes
    rc, _ = _run(["wds", "rewrite", "--plan", str(out), "--out", str(tmp_path / "new"), "--maxcount", "100"])
    new = sorted(str(p) for p in (tmp_path / "new").glob("*.tar"))
    h = hash_shards(new, "colour_dct", HS, fit=fit, workers=0, progress=False)
    assert rc == 0 and h.cached == new and h.n_samples == ShardPlan.load(out).n_kept
    _assert_codes_equal_hash_images(h, fit)
