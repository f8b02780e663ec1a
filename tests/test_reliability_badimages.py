"""Bad and unusual images through every entry point: hash_images, hash_dataset (ImageFolder),
webdataset shards, and the CLI.

- ``on_error="raise"``: an :class:`ImageDecodeError` naming the file and the cause.
- ``on_error="skip"``: the file is recorded with its reason, everything else is hashed, and
  the result equals the run where the bad file is absent.
- Valid but unusual images (CMYK, 16-bit, palette+transparency, 1-bit, LA, 1x1, 1xN,
  EXIF-rotated, animated GIF, WebP) hash deterministically and bit for bit like imagehash
  (which applies no EXIF orientation, and neither do we).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import imagehash
import numpy as np
import pytest
from badimages import BAD, ODD, good_image_bytes, write_corpus
from PIL import Image

from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing.api import hash_images, to_hex
from torch_dedup import hash_dataset, plan_dataset

#: The exception class Pillow raises for each bad input (the cause our reason must name).
CAUSE = {
    "truncated_jpeg": "OSError",
    "truncated_png": "OSError",
    "zero_bytes": "UnidentifiedImageError",
    "text_as_jpeg": "UnidentifiedImageError",
    "png_broken_crc": "UnidentifiedImageError",
    "bomb_over_2x": "DecompressionBombError",
    "bomb_over_1x": "DecompressionBombWarning",
}
ORACLE = {"ahash": imagehash.average_hash, "dhash": imagehash.dhash, "phash": imagehash.phash,
          "whash": imagehash.whash}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def goods(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("goods")
    out = []
    for k in range(6):
        p = folder / f"good{k}.png"
        p.write_bytes(good_image_bytes(k % 4))  # 4 and 5 are exact copies of 0 and 1: real duplicates
        out.append(p)
    return out


def test_corpus_is_complete():
    wanted = {"truncated_jpeg", "truncated_png", "zero_bytes", "text_as_jpeg", "png_broken_crc", "bomb_over_2x",
              "bomb_over_1x", "cmyk_jpeg", "gray16_png", "palette_transparency", "one_bit", "la", "one_by_one",
              "one_by_n", "exif_rotated_jpeg", "animated_gif", "webp"}
    assert wanted <= set(BAD) | set(ODD)
    assert set(CAUSE) == set(BAD)


# ------------------------------------------------------------------ hash_images

@pytest.mark.parametrize("name", sorted(BAD))
def test_hash_images_raise_names_file_and_cause(corpus, goods, name):
    path = corpus[name]
    with pytest.raises(ImageDecodeError) as info:
        hash_images([goods[0], path, goods[1]], "phash", on_error="raise", workers=0)
    err = info.value
    assert err.source == str(path) and err.index == 1
    assert err.reason.startswith(CAUSE[name] + ":")
    assert str(path) in str(err) and CAUSE[name] in str(err)


@pytest.mark.parametrize("name", sorted(BAD))
def test_hash_images_skip_equals_absent(corpus, goods, name):
    path = corpus[name]
    items = [goods[0], path, goods[1], goods[2]]
    res = hash_images(items, "phash", on_error="skip", workers=0)
    assert res.valid.tolist() == [True, False, True, True]
    assert len(res.failures) == 1
    index, source, reason = res.failures[0]
    assert (index, source) == (1, str(path)) and reason.startswith(CAUSE[name] + ":")
    clean = hash_images([goods[0], goods[1], goods[2]], "phash", workers=0)
    np.testing.assert_array_equal(np.asarray(res.hashes)[res.valid], np.asarray(clean.hashes))


def test_bomb_is_an_error_whatever_the_warning_filters(corpus):
    """Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; we fail the file under any warning filter."""
    import warnings

    for action in ("ignore", "default", "error"):
        with warnings.catch_warnings():
            warnings.simplefilter(action)
            res = hash_images([corpus["bomb_over_1x"]], on_error="skip", workers=0)
        assert not res.valid[0] and "DecompressionBombWarning" in res.failures[0][2]


def test_bomb_limit_is_the_real_one_and_can_be_raised(corpus, monkeypatch):
    """The corpus bombs sit just over 1x and 2x the real limit; lifting the limit lets the same header through
    to the decoder (which then finds the file truncated: the bytes were never there)."""
    with open(corpus["bomb_over_1x"], "rb") as f:
        head = f.read(24)
    side = int.from_bytes(head[16:20], "big")
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    res = hash_images([corpus["bomb_over_1x"]], on_error="skip", workers=0)
    assert "Bomb" not in res.failures[0][2] and res.failures[0][2].startswith("OSError")


@pytest.mark.parametrize("method", sorted(ORACLE))
def test_unusual_images_hash_like_imagehash(corpus, method):
    names = sorted(ODD)
    paths = [corpus[n] for n in names]
    first = hash_images(paths, method, workers=0)
    again = hash_images(list(reversed(paths)), method, workers=0)
    np.testing.assert_array_equal(np.asarray(first.hashes), np.asarray(again.hashes)[::-1])  # deterministic
    ours = to_hex(first.hashes)
    for name, hx in zip(names, ours):
        with Image.open(corpus[name]) as im:
            assert hx == str(ORACLE[method](im)), name


def test_exif_orientation_is_not_applied(corpus):
    """Like imagehash, the pixels are hashed as stored: the EXIF-rotated JPEG hashes as its raw pixels."""
    from PIL import ImageOps

    path = corpus["exif_rotated_jpeg"]
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 6
        raw = str(imagehash.phash(im))
        upright = str(imagehash.phash(ImageOps.exif_transpose(im)))
    assert raw != upright
    assert to_hex(hash_images([path], workers=0).hashes)[0] == raw


def test_pil_images_in_memory_unusual_modes(corpus):
    """The same images handed over as opened PIL images (another code path) hash identically."""
    names = sorted(ODD)
    opened = [Image.open(corpus[n]) for n in names]
    try:
        from_pil = hash_images(opened, workers=0)
    finally:
        for im in opened:
            im.close()
    from_files = hash_images([corpus[n] for n in names], workers=0)
    np.testing.assert_array_equal(np.asarray(from_pil.hashes), np.asarray(from_files.hashes))


# ------------------------------------------------------------------ ImageFolder

def _folder(root: Path, goods: list[Path], extra: dict[str, Path]) -> Path:
    for k, g in enumerate(goods):
        d = root / ("cat" if k % 2 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        (d / g.name).write_bytes(g.read_bytes())
    for p in extra.values():
        (root / "dog" / p.name).write_bytes(p.read_bytes())
    return root


def _folders(tmp_path, goods, corpus, names):
    from torchvision.datasets import ImageFolder

    with_bad = ImageFolder(str(_folder(tmp_path / "with", goods, {n: corpus[n] for n in names})))
    without = ImageFolder(str(_folder(tmp_path / "without", goods, {})))
    return with_bad, without


def test_image_folder_raise_names_the_file(tmp_path, goods, corpus):
    with_bad, _ = _folders(tmp_path, goods, corpus, ["truncated_jpeg"])
    with pytest.raises(ImageDecodeError) as info:
        hash_dataset(with_bad, cache_dir=tmp_path / "cache", progress=False)
    bad_path = os.path.join(with_bad.root, "dog", corpus["truncated_jpeg"].name)
    assert info.value.source == bad_path and "truncated" in info.value.reason
    assert with_bad.samples[info.value.index][0] == bad_path


@pytest.mark.parametrize("policy", ["greedy", "components"])
def test_image_folder_skip_equals_absent(tmp_path, goods, corpus, policy):
    names = sorted(BAD)
    with_bad, without = _folders(tmp_path, goods, corpus, names)
    paths = [p for p, _ in with_bad.samples]
    for cache in (tmp_path / "cache", tmp_path / "cache"):  # computed, then from the sidecar
        plan = plan_dataset(with_bad, threshold=4, policy=policy, on_error="skip", cache_dir=cache,
                            progress=False)
        failed = sorted(Path(paths[i]).name for i in np.flatnonzero(plan.failed))
        assert failed == sorted(corpus[n].name for n in names)
        ref = plan_dataset(without, threshold=4, policy=policy, cache_dir=False, progress=False)
        kept = [os.path.relpath(paths[i], with_bad.root) for i in plan.kept_indices]
        ref_kept = [os.path.relpath(without.samples[i][0], without.root) for i in ref.kept_indices]
        assert kept == ref_kept and ref.n_kept < len(without)   # real duplicates were removed
    dh = hash_dataset(with_bad, cache_dir=tmp_path / "cache", on_error="skip", progress=False)
    assert dh.from_cache and {Path(s).name for _, s, _ in dh.failures} == {corpus[n].name for n in names}
    # a "raise" run over the sidecar of a "skip" run still raises, naming the file
    with pytest.raises(ImageDecodeError, match="recorded in sidecar"):
        hash_dataset(with_bad, cache_dir=tmp_path / "cache", progress=False)


# ------------------------------------------------------------------ webdataset shards

def _shard(path: Path, members: list[tuple[str, str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for key, ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{key}.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"0"))
    return str(path)


def test_shards_raise_and_skip(tmp_path, goods, corpus):
    from torch_dedup.wds import hash_shards, plan_shards

    good = [(f"g{k:03d}", "png", g.read_bytes()) for k, g in enumerate(goods)]
    bad = [(f"b_{n}", corpus[n].suffix.lstrip("."), corpus[n].read_bytes()) for n in sorted(BAD)]
    odd = [(f"o_{n}", corpus[n].suffix.lstrip("."), corpus[n].read_bytes()) for n in sorted(ODD)
           if corpus[n].suffix != ".gif"]
    members = good[:3] + bad + odd + good[3:]
    url = _shard(tmp_path / "with.tar", members)
    clean = _shard(tmp_path / "without.tar", good[:3] + odd + good[3:])
    with pytest.raises(ImageDecodeError) as info:
        hash_shards(url, sidecar_dir=tmp_path / "sc1", progress=False)
    first_bad = bad[0]
    assert info.value.source == f"{url}:{first_bad[0]}.{first_bad[1]}"
    h = hash_shards(url, sidecar_dir=tmp_path / "sc2", on_error="skip", progress=False)
    (sc,) = h.sidecars
    failed = {sc.keys[i]: why for i, _, why in sc.failures}
    assert {k: why.split(":")[0] for k, why in failed.items()} == {f"b_{n}": CAUSE[n] for n in sorted(BAD)}
    ref = hash_shards(clean, sidecar_dir=tmp_path / "sc3", progress=False).sidecars[0]
    ours = dict(zip(np.array(sc.keys)[sc.valid], np.asarray(sc.hashes)[sc.valid].tolist()))
    assert ours == dict(zip(ref.keys, np.asarray(ref.hashes).tolist()))
    for key, ext, data in odd:  # shard members hash as imagehash hashes the same bytes
        assert to_hex(np.array([ours[key]], np.uint64))[0] == str(imagehash.phash(Image.open(io.BytesIO(data))))
    plan = plan_shards(url, threshold=4, sidecar_dir=tmp_path / "sc2", on_error="skip", progress=False)
    ref_plan = plan_shards(clean, threshold=4, sidecar_dir=tmp_path / "sc3", progress=False)
    kept = [plan.sample(i)[1] for i in range(plan.n) if not plan.drop[i]]
    ref_kept = [ref_plan.sample(i)[1] for i in range(ref_plan.n) if not ref_plan.drop[i]]
    assert kept == ref_kept and len(ref_kept) < ref_plan.n


# ------------------------------------------------------------------ CLI

def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:torch_dedup"}
    return subprocess.run([sys.executable, "-m", "torch_dedup.cli", *args], capture_output=True, text=True, check=False,
                          timeout=300, cwd=cwd, env=env)


def test_cli_hash_and_scan(tmp_path, goods, corpus):
    names = ["truncated_png", "text_as_jpeg", "bomb_over_2x"]
    root = _folder(tmp_path / "data", goods, {n: corpus[n] for n in names})
    bad = root / "dog" / corpus["text_as_jpeg"].name
    clean = _folder(tmp_path / "clean", goods, {})
    r = _cli("hash", str(root), "--cache-dir", str(tmp_path / "c"), "--no-progress")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert str(root / "dog" / corpus["bomb_over_2x"].name) in r.stderr or str(bad) in r.stderr \
        or str(root / "dog" / corpus["truncated_png"].name) in r.stderr
    r = _cli("scan", str(root), "--on-error", "skip", "--json", "-t", "4", "--cache-dir", str(tmp_path / "c"),
             "--keep-list", str(tmp_path / "keep.txt"), "--no-progress")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n_failed"] == len(names) and d["n"] == len(goods) + len(names)
    r2 = _cli("scan", str(clean), "--json", "-t", "4", "--cache-dir", str(tmp_path / "c2"),
              "--keep-list", str(tmp_path / "keep2.txt"), "--no-progress")
    assert r2.returncode == 0, r2.stderr
    rel = [os.path.relpath(p, root) for p in (tmp_path / "keep.txt").read_text().split()]
    rel2 = [os.path.relpath(p, clean) for p in (tmp_path / "keep2.txt").read_text().split()]
    assert rel == rel2 and json.loads(r2.stdout)["n_kept"] == d["n_kept"]
