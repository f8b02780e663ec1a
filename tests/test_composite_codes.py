"""Composite codes (``method="phash+dhash"``): one decode per image for all parts, the parts'
bits side by side (each equal to imagehash's), the summed Hamming distance, and every consumer
taking them like any other method."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
import torch
from PIL import Image

from torch_dedup import DedupOptions, DedupSampler, find_duplicates, plan_dataset
from torch_dedup.embedded import load_sample
from torch_dedup.hashing import _decode, from_hex, hash_array, hash_bits, hash_images, to_hex

IMAGEHASH = {"ahash": imagehash.average_hash, "dhash": imagehash.dhash, "phash": imagehash.phash,
             "whash": imagehash.whash}


def _oracle(images, method: str, hash_size: int = 8) -> list[str]:
    return ["+".join(str(IMAGEHASH[p](im, hash_size)) for p in method.split("+")) for im in images]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """PNG files of mixed sizes: small ones (stacked kernels) and big ones (Pillow resize)."""
    x, _ = load_sample(24)
    root = tmp_path_factory.mktemp("composite")
    paths = []
    for k, a in enumerate(x):
        im = Image.fromarray(a).convert("RGB")
        if k % 3 == 0:
            im = im.resize((260, 190), Image.Resampling.BICUBIC)  # over 128x128: Pillow converts and resizes
        p = root / f"{k:03d}.png"
        im.save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("method,hash_size", [("phash+dhash", 8), ("dhash+phash+ahash", 8), ("phash+whash", 16),
                                              ("ahash+dhash", 16)])
def test_every_input_kind_gives_the_parts_imagehash_bits(files, method, hash_size):
    x, _ = load_sample(24)
    pil = [Image.fromarray(a) for a in x]
    want = _oracle(pil, method, hash_size)
    assert to_hex(hash_images(x, method, hash_size)) == want                        # stacked array
    assert to_hex(hash_images(pil, method, hash_size)) == want                      # PIL images
    assert to_hex(hash_images(list(torch.from_numpy(x.copy())), method, hash_size)) == want  # tensors one by one
    got = hash_images(files, method, hash_size)                                      # files
    assert to_hex(got) == _oracle([Image.open(p) for p in files], method, hash_size)
    assert got.bits == hash_bits(method, hash_size) == len(method.split("+")) * hash_size ** 2
    np.testing.assert_array_equal(from_hex(to_hex(got), hash_size), got.hashes)


def test_files_are_decoded_once_for_all_parts(files, monkeypatch):
    opened = []
    real = _decode._open

    def counting(path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(_decode, "_open", counting)
    hash_images(files, "phash+dhash+whash", workers=0)
    assert sorted(opened) == sorted(files)  # once each, not three times


def test_worker_processes_hash_composite_codes(files, monkeypatch):
    from torch_dedup.hashing import api
    monkeypatch.setattr(api, "POOL_MIN_FILES", 1)  # start the real worker processes on a short list
    got = hash_images(files, "phash+dhash", workers=2)
    assert to_hex(got) == _oracle([Image.open(p) for p in files], "phash+dhash")


def test_distance_is_the_sum_of_the_parts_distances():
    x, _ = load_sample(300)
    both = hash_array(x, "phash+dhash")
    ph, dh = hash_array(x, "phash"), hash_array(x, "dhash")
    d = lambda a, b: bin(int(a) ^ int(b)).count("1")  # noqa: E731
    t = 40
    plan = find_duplicates(both, t)
    # greedy in dataset order over the summed distance, by brute force
    keep = []
    for i in range(len(x)):
        if all(d(ph[i], ph[j]) + d(dh[i], dh[j]) > t for j in keep):
            keep.append(i)
    assert plan.kept_indices.tolist() == keep


def test_validation_names_the_fix():
    for bad, words in (("phash+md5", "'md5' is unknown"), ("phash+phash", "names a hash twice"),
                       ("phash+", "is unknown")):
        with pytest.raises(ValueError, match=words):
            DedupOptions(method=bad)
    with pytest.raises(ValueError, match="must fill whole 64-bit words: use hash_size 8 or 16"):
        DedupOptions(method="phash+dhash", hash_size=5)
    assert DedupOptions(method="phash+dhash", threshold=128).bits == 128
    with pytest.raises(ValueError, match=r"threshold=129 must be an int in \[0, 128\]"):
        DedupOptions(method="phash+dhash", threshold=129)


def test_sampler_caches_composite_hashes_and_plans_like_the_api(tmp_path):
    x, y = load_sample(500)
    data = np.concatenate([x, x[:50]])

    class Arr(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i], 0

    s1 = DedupSampler(Arr(), threshold=10, method="phash+dhash", cache_dir=tmp_path, fingerprint="v1",
                      progress=False)
    assert s1.plan.settings["method"] == "phash+dhash" and s1.plan.settings["hash_bits"] == 128
    assert len(s1.kept_indices) <= 500
    p2 = plan_dataset(Arr(), 10, method="phash+dhash", cache_dir=tmp_path, fingerprint="v1", progress=False)
    assert p2.provenance["from_cache"] and p2.kept_indices.tolist() == s1.kept_indices.tolist()
    assert any("phash+dhash" in f.name for f in Path(tmp_path).rglob("*.tdhash"))


def test_cli_takes_composite_codes_and_refuses_bad_ones(tmp_path, capsys):
    from torch_dedup.cli import main
    x, y = load_sample(300)
    np.savez(tmp_path / "s.npz", images=x, labels=y)
    assert main(["scan", str(tmp_path / "s.npz"), "--method", "phash+dhash", "-t", "20", "--json", "--no-progress",
                 "--cache-dir", str(tmp_path)]) == 0
    got = json.loads(capsys.readouterr().out)
    want = find_duplicates(hash_array(x, "phash+dhash"), 20, labels=y)
    assert got["n_kept"] == want.n_kept and got["settings"]["method"] == "phash+dhash"
    with pytest.raises(SystemExit) as info:
        main(["scan", str(tmp_path / "s.npz"), "--method", "phash+md5"])
    assert info.value.code == 2 and "'md5' is unknown" in capsys.readouterr().err


def test_webdataset_shards_take_composite_codes(tmp_path):
    wds = pytest.importorskip("webdataset")
    from torch_dedup.wds import hash_shards, plan_shards
    x, _ = load_sample(40)
    path = tmp_path / "shard-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for k, a in enumerate(x):
            sink.write({"__key__": f"s{k:03d}", "png": Image.fromarray(a), "cls": 0})
    h = hash_shards([str(path)], "phash+dhash", progress=False)
    sc = h.sidecars[0]
    assert sc.hashes.shape == (40, 2)
    want = _oracle([Image.fromarray(a) for a in x], "phash+dhash")
    got = ["+".join(f"{int(v):016x}" for v in row) for row in sc.hashes]
    assert got == want
    plan = plan_shards([str(path)], 20, method="phash+dhash", progress=False)
    assert plan.plan.settings["hash_bits"] == 128


@pytest.mark.skipif(sys.platform != "linux", reason="sidecar file names are checked on Linux")
def test_sidecar_names_stay_portable(tmp_path):
    from torch_dedup.sidecar import sidecar_name
    name = sidecar_name("f" * 16, "phash+dhash", 8, "exact")
    assert os.sep not in name and "phash+dhash" in name
