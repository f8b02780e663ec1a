"""Issue 14 item 4: the hashing worker processes end with the call, never import torch, and
``workers=`` reaches the sampler and the dataset wrapper."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from torch_dedup.hashing import api
from torch_dedup.hashing._workers import FilePool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for child processes")


def _children() -> set[int]:
    """Live (not zombie) child processes of this process, from /proc."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # ended while we looked
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z":
                out.add(int(entry))
    return out


def _images(folder: Path, n: int, classes: int = 1) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        sub = folder / f"c{i % classes}"
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"{i:04d}.png"
        Image.fromarray((rng.random((10 + i % 5, 12)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


class _Spy(FilePool):
    started: list[tuple[int, list[int]]] = []

    def __enter__(self):
        pool = super().__enter__()
        _Spy.started.append((self.workers, self.pids))
        return pool


@pytest.fixture
def spy(monkeypatch):
    monkeypatch.setattr(api, "POOL_MIN_FILES", 1)  # a pool even for a handful of files
    monkeypatch.setattr(api, "FilePool", _Spy)
    _Spy.started = []
    return _Spy.started


def test_pool_ends_with_the_hashing_that_started_it(tmp_path, spy):
    paths = _images(tmp_path, 24)
    before = _children()
    got = api.hash_images(paths, "dhash", workers=2, batch_size=8)
    assert [w for w, _ in spy] == [2]  # the pool was used...
    assert _children() == before  # ...and no worker outlives the call
    with Image.open(paths[5]) as im:
        assert api.to_hex(got)[5] == str(imagehash.dhash(im))


def test_pool_ends_when_the_hashing_fails(tmp_path, spy):
    paths = _images(tmp_path, 12)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    before = _children()
    with pytest.raises(api.ImageDecodeError, match="bad.jpg"):
        api.hash_images([*paths, tmp_path / "bad.jpg"], "dhash", workers=2)
    assert spy and _children() == before


def test_workers_do_not_import_torch():
    import torch  # noqa: F401 - this process has torch; its workers must not

    with FilePool(2, "phash", 8) as pool:
        modules = pool.modules()
    assert len(modules) == 2
    for names in modules:
        assert "torch" not in names and "torch_dedup.sampler" not in names and "torch_dedup.hashing._decode" in names


def test_a_killed_worker_leaves_exact_hashes(tmp_path):
    paths = _images(tmp_path, 40)
    tasks = [(i, str(p)) for i, p in enumerate(paths)]
    chunks = [tasks[k:k + 4] for k in range(0, 40, 4)]
    with FilePool(2, "phash", 8) as pool:
        pool.modules()  # both started
        os.kill(pool.pids[0], signal.SIGKILL)
        results = pool.hash_chunks(chunks, "phash", 8, False)
    words = [w for chunk in results for _, w, _ in chunk]
    for p, w in zip(paths, words):
        with Image.open(p) as im:
            assert api.to_hex(np.asarray(w))[0] == str(imagehash.phash(im))


@pytest.mark.parametrize("consumer", ["DedupSampler", "DedupDataset"])
def test_workers_reach_the_sampler_and_the_dataset(tmp_path, spy, consumer):
    from torchvision.datasets import ImageFolder

    import torch_dedup

    _images(tmp_path, 30, classes=3)
    ds = ImageFolder(str(tmp_path))
    make = getattr(torch_dedup, consumer)
    make(ds, threshold=0, workers=2, cache_dir=False, progress=False)
    assert [w for w, _ in spy] == [2]
    make(ds, threshold=0, workers=0, cache_dir=False, progress=False)
    assert [w for w, _ in spy] == [2]  # workers=0: no pool
