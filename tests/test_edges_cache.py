"""Issue 14 item 3: cache freshness — what a sidecar is keyed on, said exactly and tested.

Each test failed on the code before the fix: a file rewritten with its size and mtime kept
was served its old hash with no way to ask for a content check; the hash environment held
Pillow's major version only and not torch_dedup's own hashing version; every Subset and
random_split hashed into a sidecar of its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import imagehash
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, features
from torch.utils.data import ConcatDataset, Subset, random_split

import torch_dedup.sidecar as sidecar
from test_sources import fashion_mnist, image_folder
from torch_dedup.dataset_hashes import hash_dataset
from torch_dedup.errors import ImageDecodeError
from torch_dedup.planning import plan_dataset
from torch_dedup.sources import source_of


def _bmp_folder(root: Path, n: int = 6) -> torchvision.datasets.ImageFolder:
    """An ImageFolder of uncompressed BMPs: a new image of the same size is a file of the same size."""
    rng = np.random.default_rng(3)
    (root / "cls").mkdir(parents=True)
    for i in range(n):
        small = rng.integers(0, 256, (4, 4), dtype=np.uint8)
        Image.fromarray(small).resize((40, 32), Image.BICUBIC).convert("RGB").save(root / "cls" / f"{i}.bmp")
    return torchvision.datasets.ImageFolder(root)


def _rewrite_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    flipped = Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(path)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_same_size_rewrite_with_restored_mtime_is_caught_only_by_content(tmp_path):
    ds = _bmp_folder(tmp_path / "imgs")
    victim = Path(ds.samples[2][0])
    stat_first = hash_dataset(ds, progress=False)
    content_first = hash_dataset(ds, progress=False, fingerprint="content")
    assert content_first.sidecar_path != stat_first.sidecar_path
    _rewrite_keeping_size_and_mtime(victim)
    new_hash = str(imagehash.phash(Image.open(victim)))
    assert new_hash != f"{int(stat_first.hashes[2]):016x}"
    # the default (path, size, mtime) cannot see it: the documented limit
    stale = hash_dataset(ds, progress=False)
    assert stale.from_cache and f"{int(stale.hashes[2]):016x}" != new_hash
    # the content fingerprint does
    fresh = hash_dataset(ds, progress=False, fingerprint="content")
    assert not fresh.from_cache and f"{int(fresh.hashes[2]):016x}" == new_hash
    assert fresh.fingerprint.startswith("files-content:")
    assert hash_dataset(ds, progress=False, fingerprint="content").from_cache
    # the option reaches planning (and so the sampler and the dataset wrapper)
    plan = plan_dataset(ds, threshold=0, progress=False, fingerprint="content")
    assert plan.provenance["fingerprint"] == fresh.fingerprint


def test_content_fingerprint_follows_bytes_not_stat(tmp_path):
    ds = _bmp_folder(tmp_path / "imgs")
    fp = source_of(ds, fingerprint="content").fingerprint
    victim = Path(ds.samples[0][0])
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert source_of(ds, fingerprint="content").fingerprint == fp
    victim.unlink()
    assert source_of(ds, fingerprint="content").fingerprint != fp  # a missing file changes it too


def test_hash_environment_names_exact_versions(monkeypatch):
    env = sidecar.hash_environment()
    v = sidecar.library_versions()
    assert f"torch_dedup-hashing-{sidecar.HASHING_VERSION}/" in env
    assert f"/imagehash-{v['imagehash']}/" in env and f"/Pillow-{v['Pillow']}/" in env
    assert v["Pillow"].count(".") >= 2 and v["imagehash"].count(".") >= 2  # full versions, not major.minor
    if features.version("jpg"):
        assert f"libjpeg-{features.version('jpg')}" in env
    if features.version("libjpeg_turbo"):
        assert f"libjpeg-turbo-{features.version('libjpeg_turbo')}" in env


@pytest.mark.parametrize("change", ["hashing", "pillow_patch"])
def test_another_hash_environment_makes_the_sidecar_stale(tmp_path, monkeypatch, caplog, change):
    ds = fashion_mnist(tmp_path)
    first = hash_dataset(ds, progress=False)
    assert hash_dataset(ds, progress=False).from_cache
    if change == "hashing":
        monkeypatch.setattr(sidecar, "HASHING_VERSION", sidecar.HASHING_VERSION + 1)
    else:  # a Pillow patch release (same major version) may decode JPEGs differently
        real = sidecar.library_versions
        monkeypatch.setattr(sidecar, "library_versions", lambda: {**real(), "Pillow": real()["Pillow"] + ".post1"})
    with caplog.at_level(logging.WARNING, logger="torch_dedup.sidecar"):
        again = hash_dataset(ds, progress=False)
    assert not again.from_cache and again.sidecar_path == first.sidecar_path  # rewritten in place, no pile-up
    assert any("hash_env" in r.getMessage() for r in caplog.records)


def test_subsets_and_splits_slice_the_base_sidecar(tmp_path):
    ds = fashion_mnist(tmp_path)
    train, val = random_split(ds, [8000, 2000], generator=torch.Generator().manual_seed(0))
    h_val = hash_dataset(val, progress=False)  # arrays: the whole base is hashed and cached once
    h_train = hash_dataset(train, progress=False)
    assert h_train.from_cache and h_train.sidecar_path == h_val.sidecar_path
    full = hash_dataset(ds, progress=False)
    assert full.from_cache and full.sidecar_path == h_val.sidecar_path
    np.testing.assert_array_equal(h_train.hashes, full.hashes[train.indices])
    np.testing.assert_array_equal(h_val.labels, ds.targets.numpy()[val.indices])
    other = random_split(ds, [5000, 5000], generator=torch.Generator().manual_seed(1))[0]
    assert hash_dataset(ConcatDataset([Subset(other, [4, 2]), Subset(ds, [9])]), progress=False).from_cache
    assert [p.name for p in (Path(tmp_path) / ".torch_dedup").iterdir()] == [full.sidecar_path.name]


def test_small_file_subset_hashes_only_its_items_until_the_base_is_cached(tmp_path, caplog):
    tree = image_folder(tmp_path / "imgs")
    ds = torchvision.datasets.ImageFolder(tree["root"])
    small = Subset(ds, [3, 1])
    with caplog.at_level(logging.INFO, logger="torch_dedup.dataset_hashes"):
        first = hash_dataset(small, progress=False)
    assert first.sidecar_path is None and not any(Path(ds.root).glob(".torch_dedup*"))
    assert any("hash_dataset on the whole dataset" in r.getMessage() for r in caplog.records)
    full = hash_dataset(ds, progress=False)
    again = hash_dataset(small, progress=False)
    assert again.from_cache and again.sidecar_path == full.sidecar_path
    np.testing.assert_array_equal(again.hashes, first.hashes)
    np.testing.assert_array_equal(again.hashes, full.hashes[[3, 1]])
    # a big subset hashes (and caches) the whole base instead
    big = Subset(ds, list(range(10)))
    (full.sidecar_path).unlink()
    h = hash_dataset(big, progress=False)
    assert h.sidecar_path == full.sidecar_path and full.sidecar_path.exists()


def test_a_bad_base_file_fails_only_the_views_that_hold_it(tmp_path):
    tree = image_folder(tmp_path / "imgs")
    ds = torchvision.datasets.ImageFolder(tree["root"])
    Path(ds.samples[7][0]).write_bytes(b"not an image")
    without = Subset(ds, [i for i in range(len(ds)) if i != 7])
    h = hash_dataset(without, progress=False)  # hashes the base, recording item 7's failure
    assert h.valid.all() and not h.failures and h.sidecar_path is not None
    with_it = Subset(ds, [7, 0, 7])
    with pytest.raises(ImageDecodeError) as err:
        hash_dataset(with_it, progress=False)
    assert err.value.index == 0 and ds.samples[7][0] in str(err.value)
    skipped = hash_dataset(with_it, progress=False, on_error="skip")
    assert skipped.from_cache and skipped.valid.tolist() == [False, True, False]
    assert [f[0] for f in skipped.failures] == [0, 2]
