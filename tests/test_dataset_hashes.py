"""hash_dataset / plan_dataset: compute-or-load over real torchvision datasets, held to imagehash."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import imagehash
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import transforms

from naive import distance_matrix
from test_sources import cifar10, fashion_mnist, image_folder
from torch_dedup._store import write_store
from torch_dedup.errors import ImageDecodeError
from torch_dedup.dataset_hashes import DatasetHashes, hash_dataset, hash_source_range, sidecar_for, store_cached
from torch_dedup.planning import plan_dataset
from torch_dedup.sidecar import read_sidecar
from torch_dedup.sources import source_of


def _hex(h) -> str:
    return f"{int(h):016x}"


def _naive_greedy(hashes: np.ndarray, threshold: int, valid=None) -> np.ndarray:
    n = len(hashes)
    valid = np.ones(n, bool) if valid is None else valid
    d = distance_matrix(hashes, hashes)
    keep = np.zeros(n, bool)
    for i in range(n):
        if valid[i] and not np.any(keep & (d[i] <= threshold)):
            keep[i] = True
    return keep


@pytest.fixture
def folder(tmp_path):
    tree = image_folder(tmp_path / "imgs")
    return torchvision.datasets.ImageFolder(tree["root"], transform=transforms.RandomResizedCrop(16)), tree


# ------------------------------------------------------------------ bits and cache hits


def test_fashion_mnist_hashes_match_imagehash_and_hit_the_sidecar(tmp_path):
    ds = fashion_mnist(tmp_path, transform=transforms.ToTensor())
    first = hash_dataset(ds, progress=False)
    assert not first.from_cache and first.hashes.shape == (10000,) and first.valid.all()
    assert first.sidecar_path.parent == Path(tmp_path) / ".torch_dedup"
    for i in (0, 1, 4242, 9999):
        assert _hex(first.hashes[i]) == str(imagehash.phash(Image.fromarray(ds.data[i].numpy())))
    second = hash_dataset(ds, progress=False)
    assert second.from_cache and second.sidecar_path == first.sidecar_path
    np.testing.assert_array_equal(second.hashes, first.hashes)
    np.testing.assert_array_equal(second.labels, ds.targets.numpy())
    assert second.meta["fingerprint"] == first.fingerprint == source_of(ds).fingerprint
    # other settings get their own sidecar
    d = hash_dataset(ds, "dhash", progress=False)
    assert not d.from_cache and d.sidecar_path != first.sidecar_path
    assert _hex(d.hashes[7]) == str(imagehash.dhash(Image.fromarray(ds.data[7].numpy())))


def test_cifar_hashes_ignore_the_transform(tmp_path):
    ds = cifar10(tmp_path, transform=transforms.Compose([transforms.RandomCrop(24), transforms.ToTensor()]))
    h = hash_dataset(ds, progress=False, cache_dir=False)
    assert h.sidecar_path is None and not h.from_cache
    for i in range(0, 40, 7):
        assert _hex(h.hashes[i]) == str(imagehash.phash(Image.fromarray(ds.data[i])))


def test_subset_hashes_are_the_base_hashes(tmp_path):
    base = cifar10(tmp_path)
    full = hash_dataset(base, progress=False)
    sub = hash_dataset(Subset(base, [9, 3, 3, 0]), progress=False)
    np.testing.assert_array_equal(sub.hashes, full.hashes[[9, 3, 3, 0]])
    # the subset reads its base's sidecar (a slice of it) and writes none of its own
    assert sub.from_cache and sub.sidecar_path == full.sidecar_path
    assert sub.fingerprint == source_of(Subset(base, [9, 3, 3, 0])).fingerprint != full.fingerprint
    assert len(list(full.sidecar_path.parent.iterdir())) == 1


def test_image_folder_matches_imagehash_on_the_files(folder):
    ds, tree = folder
    h = hash_dataset(ds, progress=False, workers=2)
    assert h.valid.all() and h.hashes.shape == (len(ds),)
    for i, (path, _) in enumerate(ds.samples):
        assert _hex(h.hashes[i]) == str(imagehash.phash(Image.open(path))), path
    # the injected copies are near their originals
    index = {p: i for i, (p, _) in enumerate(ds.samples)}
    d = distance_matrix(h.hashes, h.hashes)
    assert max(d[index[c], index[o]] for c, o in tree["dups"].items()) <= 10
    again = hash_dataset(ds, progress=False, workers=0)
    assert again.from_cache and np.array_equal(again.hashes, h.hashes)


def test_image_folder_stays_loadable_after_its_sidecar_is_written(folder):
    # Every sub-folder of an ImageFolder root is a class: a <root>/.torch_dedup/ folder made
    # ImageFolder(root) fail on the next run ("Found no valid file for the classes .torch_dedup").
    ds, _ = folder
    first = hash_dataset(ds, progress=False, workers=0)
    assert first.sidecar_path.parent == Path(ds.root) and first.sidecar_path.name.startswith(".torch_dedup-")
    assert sorted(p.name for p in Path(ds.root).iterdir() if p.is_dir()) == ds.classes
    again = torchvision.datasets.ImageFolder(ds.root)
    assert again.classes == ds.classes and again.samples == ds.samples
    second = hash_dataset(again, progress=False, workers=0)
    assert second.from_cache and np.array_equal(second.hashes, first.hashes)
    # a Subset of it, or its images read through image_fn, keep the rule
    assert sidecar_for(source_of(Subset(again, [1, 2]))).parent == Path(ds.root)
    via_fn = source_of(again, image_fn=lambda i: again.samples[i][0], fingerprint="v1")
    assert sidecar_for(via_fn).parent == Path(ds.root) and sidecar_for(via_fn).name.startswith(".torch_dedup-")
    assert not (Path(ds.root) / ".torch_dedup").exists()


def test_changed_file_makes_the_sidecar_stale(folder):
    ds, _ = folder
    first = hash_dataset(ds, progress=False, workers=0)
    victim = Path(ds.samples[5][0])
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))).convert("RGB").save(victim)
    second = hash_dataset(ds, progress=False, workers=0)
    assert not second.from_cache and second.fingerprint != first.fingerprint
    assert second.hashes[5] != first.hashes[5]
    assert _hex(second.hashes[5]) == str(imagehash.phash(Image.open(victim)))
    np.testing.assert_array_equal(np.delete(second.hashes, 5), np.delete(first.hashes, 5))
    assert hash_dataset(ds, progress=False, workers=0).from_cache
    # touching a file (mtime only) is enough to distrust the cache
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    assert not hash_dataset(ds, progress=False, workers=0).from_cache


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) - 9])
    elif how == "bitflip":
        b = bytearray(raw)
        b[len(b) - 100] ^= 0x10  # inside the hashes (the last bytes are alignment padding)
        path.write_bytes(bytes(b))
    elif how == "wrong_kind":
        write_store(path, "plan", {"count": 3}, {"x": np.zeros(3, np.uint64)})
    elif how == "wrong_version":
        write_store(path, "sidecar", {"sidecar_version": 999}, {"x": np.zeros(3, np.uint64)})
    elif how == "stale_fingerprint":  # same file name, contents claiming other data
        sc = read_sidecar(path)
        from torch_dedup.sidecar import write_sidecar
        write_sidecar(path, sc.hashes, sc.valid, method="phash", hash_size=8, fingerprint="array:other")
    elif how == "other_imagehash":  # right data and settings, written under another imagehash/Pillow
        sc = read_sidecar(path)
        from torch_dedup.sidecar import write_sidecar
        write_sidecar(path, sc.hashes, sc.valid, method="phash", hash_size=8, fingerprint=sc.meta["fingerprint"],
                      extra={**sc.meta["extra"], "hash_env": "imagehash-4.2/Pillow-9"})


@pytest.mark.parametrize("how", ["truncated", "bitflip", "wrong_kind", "wrong_version", "stale_fingerprint",
                                 "other_imagehash"])
def test_damaged_sidecar_warns_recomputes_and_rewrites(tmp_path, caplog, how):
    ds = cifar10(tmp_path)
    first = hash_dataset(ds, progress=False)
    _damage(first.sidecar_path, how)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        second = hash_dataset(ds, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(first.sidecar_path) in warnings[0]
    assert not second.from_cache
    np.testing.assert_array_equal(second.hashes, first.hashes)
    third = hash_dataset(ds, progress=False)
    assert third.from_cache and np.array_equal(third.hashes, first.hashes)


def test_refresh_recomputes(tmp_path):
    ds = cifar10(tmp_path)
    hash_dataset(ds, progress=False)
    assert not hash_dataset(ds, progress=False, refresh=True).from_cache


def test_cache_dir_override_and_unwritable_root(tmp_path, monkeypatch):
    ds = cifar10(tmp_path / "data")
    h = hash_dataset(ds, progress=False, cache_dir=tmp_path / "mine")
    assert h.sidecar_path.parent == tmp_path / "mine" and not (tmp_path / "data" / ".torch_dedup").exists()
    assert hash_dataset(ds, progress=False, cache_dir=tmp_path / "mine").from_cache
    # a root that cannot take a .torch_dedup folder: sidecars go to $TORCH_DEDUP_CACHE
    monkeypatch.setenv("TORCH_DEDUP_CACHE", str(tmp_path / "env-cache"))
    (tmp_path / "data" / ".torch_dedup").write_bytes(b"in the way")
    h2 = hash_dataset(ds, progress=False)
    assert h2.sidecar_path.parent == tmp_path / "env-cache" and h2.sidecar_path.exists()
    assert hash_dataset(ds, progress=False).from_cache


def test_write_failure_is_a_warning_not_an_error(tmp_path, caplog):
    ds = cifar10(tmp_path)
    src = source_of(ds)
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"")
    res = hash_source_range(src)
    with caplog.at_level(logging.WARNING):
        assert store_cached(blocker / "sub" / "x.tdhash", res, src, "phash", 8) is None
    assert "could not write sidecar" in caplog.text


# ------------------------------------------------------------------ errors, image_fn, fallback


def test_on_error_with_a_broken_file(folder, caplog):
    ds, _ = folder
    broken = Path(ds.samples[4][0])
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ds = torchvision.datasets.ImageFolder(ds.root)
    with pytest.raises(ImageDecodeError) as info:
        hash_dataset(ds, progress=False, workers=0)
    assert str(broken) in str(info.value)
    skipped = hash_dataset(ds, progress=False, workers=0, on_error="skip")
    assert skipped.valid.tolist() == [i != 4 for i in range(len(ds))]
    assert [(i, s) for i, s, _ in skipped.failures] == [(4, str(broken))]
    cached = hash_dataset(ds, progress=False, workers=0, on_error="skip")
    assert cached.from_cache and cached.failures == skipped.failures
    with pytest.raises(ImageDecodeError):  # a cached failure still raises under on_error="raise"
        hash_dataset(ds, progress=False, workers=0)
    plan = plan_dataset(ds, 0, on_error="skip", progress=False, workers=0)
    assert not plan.keep[4] and plan.failed[4]


def test_image_fn_items_and_caching_needs_a_fingerprint(tmp_path, caplog):
    base = cifar10(tmp_path)
    tensors = [transforms.functional.to_tensor(Image.fromarray(a)) for a in base.data]
    with caplog.at_level(logging.INFO, logger="torch_dedup.dataset_hashes"):
        h = hash_dataset(base, image_fn=lambda i: tensors[i], progress=False)
    assert h.sidecar_path is None and "fingerprint" in caplog.text
    for i in (0, 13):
        assert _hex(h.hashes[i]) == str(imagehash.phash(Image.fromarray(base.data[i])))
    h1 = hash_dataset(base, image_fn=lambda i: base.data[i], fingerprint="cifar-v1", progress=False)
    h2 = hash_dataset(base, image_fn=lambda i: base.data[i], fingerprint="cifar-v1", progress=False)
    assert h1.sidecar_path is not None and h2.from_cache
    np.testing.assert_array_equal(h2.hashes, h.hashes)


def test_image_fn_failures_follow_on_error(tmp_path):
    base = cifar10(tmp_path)

    def flaky(i):
        if i == 3:
            raise OSError("disk on fire")
        return base.data[i]

    with pytest.raises(ImageDecodeError, match="disk on fire"):
        hash_dataset(base, image_fn=flaky, progress=False)
    h = hash_dataset(base, image_fn=flaky, progress=False, on_error="skip")
    assert not h.valid[3] and h.valid.sum() == 39 and h.failures[0][:2] == (3, "item 3")
    # an image that loads but cannot be hashed is named by its dataset index, not its batch position
    bad = lambda i: base.data[i] if i != 7 else np.zeros((0, 4), np.uint8)  # noqa: E731
    src = source_of(base, image_fn=bad)
    with pytest.raises(ImageDecodeError) as info:
        hash_source_range(src, 5, 10, batch_size=4)
    assert info.value.index == 7 and info.value.source == "item 7" and "empty" in info.value.reason
    res = hash_source_range(src, 5, 10, batch_size=4, on_error="skip")
    assert [f[:2] for f in res.failures] == [(7, "item 7")]


def test_getitem_fallback_with_transform_warns(caplog):
    class Pics(Dataset):
        transform = transforms.Grayscale()

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return self.transform(Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8))), i

    with caplog.at_level(logging.WARNING):
        h = hash_dataset(Pics(), progress=False)
    assert "transform" in caplog.text and h.sidecar_path is None
    assert _hex(h.hashes[2]) == str(imagehash.phash(Pics()[2][0]))


def test_bad_options_are_named():
    ds = torch.utils.data.TensorDataset(torch.zeros(2))
    with pytest.raises(ValueError, match="method='xhash'"):
        hash_dataset(ds, "xhash")
    with pytest.raises(ValueError, match="on_error"):
        hash_dataset(ds, on_error="ignore")
    with pytest.raises(ValueError, match="workers"):
        hash_dataset(ds, workers=-1)


# ------------------------------------------------------------------ distributed pieces


def test_range_pieces_concatenate_to_the_whole(folder):
    ds, _ = folder
    Path(ds.samples[7][0]).write_bytes(b"garbage")
    ds = torchvision.datasets.ImageFolder(ds.root)
    src = source_of(ds)
    whole = hash_source_range(src, on_error="skip", workers=0)
    parts = [hash_source_range(src, a, b, on_error="skip", workers=0) for a, b in ((0, 5), (5, 11), (11, 18))]
    np.testing.assert_array_equal(np.concatenate([p.hashes for p in parts]), whole.hashes)
    assert [f[0] for p in parts for f in p.failures] == [7] == [f[0] for f in whole.failures]
    path = sidecar_for(src, cache_dir=None)
    assert path.parent == Path(ds.root) and path.name.startswith(".torch_dedup-phash8-exact-")
    with pytest.raises(ValueError, match="start"):
        hash_source_range(src, 10, 5)
    with pytest.raises(ImageDecodeError) as info:
        hash_source_range(src, 5, 11, workers=0)
    assert info.value.index == 7 and info.value.source == ds.samples[7][0]


def _race_hash(root: str, cache: str, barrier) -> None:
    ds = torchvision.datasets.ImageFolder(root)
    barrier.wait()
    hash_dataset(ds, progress=False, workers=0, cache_dir=cache, refresh=True)


def test_racing_hash_dataset_processes(folder, tmp_path):
    ds, tree = folder
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race_hash, args=(str(tree["root"]), str(tmp_path / "c"), barrier))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    h = hash_dataset(torchvision.datasets.ImageFolder(tree["root"]), progress=False, workers=0,
                     cache_dir=tmp_path / "c")
    assert h.from_cache
    assert [p.name for p in (tmp_path / "c").iterdir()] == [h.sidecar_path.name]


# ------------------------------------------------------------------ plans


def test_plan_dataset_matches_naive_greedy_and_records_provenance(folder, caplog):
    ds, tree = folder
    with caplog.at_level(logging.DEBUG, logger="torch_dedup.planning"):
        plan = plan_dataset(ds, threshold=10, progress=False, workers=0)
    hashes = np.array([int(str(imagehash.phash(Image.open(p))), 16) for p, _ in ds.samples], dtype=np.uint64)
    np.testing.assert_array_equal(plan.keep, _naive_greedy(hashes, 10))
    index = {p: i for i, (p, _) in enumerate(ds.samples)}
    groups = {}
    for copy, orig in tree["dups"].items():  # ImageFolder sorts dup_* before img_000: one of each group stays
        groups.setdefault(orig, {index[orig]}).add(index[copy])
    assert all(plan.keep[sorted(g)].sum() == 1 for g in groups.values())
    assert plan.provenance["fingerprint"] == source_of(ds).fingerprint
    assert plan.provenance["method"] == "phash" and plan.provenance["hash_size"] == 8
    assert plan.provenance["sidecar"].endswith(".tdhash")
    assert "18 -> 12 items" in caplog.text and "sidecar miss" in caplog.text
    plan.check_compatible(len(ds), source_of(ds).fingerprint)
    with caplog.at_level(logging.DEBUG, logger="torch_dedup.planning"):
        plan_dataset(ds, threshold=10, progress=False, workers=0)
    assert "sidecar hit" in caplog.text


def test_plan_priority_labels_and_against(tmp_path):
    ds = cifar10(tmp_path)  # test items 1..3 are near copies of item 0
    h = hash_dataset(ds, progress=False)
    base = plan_dataset(ds, threshold=8, progress=False)
    np.testing.assert_array_equal(base.keep, _naive_greedy(h.hashes, 8))
    assert not base.keep[1] and base.keep[0]
    score = np.zeros(len(ds))
    score[2] = 1.0
    by_array = plan_dataset(ds, threshold=8, priority=score, progress=False)
    by_fn = plan_dataset(ds, threshold=8, priority=lambda i: score[i], progress=False)
    np.testing.assert_array_equal(by_array.keep, by_fn.keep)
    assert by_array.keep[2] and not by_array.keep[0]
    per_class = plan_dataset(ds, threshold=8, per_class=True, progress=False)
    np.testing.assert_array_equal(per_class.labels, np.asarray(ds.targets))
    with pytest.raises(ValueError, match="per_class"):
        plan_dataset(torch.utils.data.TensorDataset(torch.zeros(3)), per_class=True, progress=False)
    # against: the dataset itself, a list with a disjoint set, and raw hashes all agree
    other = cifar10(tmp_path / "other", seed=5, duplicates=False)
    leak = plan_dataset(ds, threshold=0, against=[other, Subset(ds, [0])], progress=False)
    other_h = hash_dataset(other, progress=False).hashes
    leaked = (distance_matrix(h.hashes, np.concatenate([other_h, h.hashes[:1]])) == 0).any(axis=1)
    assert leaked[0] and leaked[1] and not leaked.all()
    np.testing.assert_array_equal(leak.leaked, leaked)
    np.testing.assert_array_equal(leak.keep, _naive_greedy(h.hashes, 0, valid=~leaked))
    leak2 = plan_dataset(ds, threshold=0, against=np.concatenate([other_h, h.hashes[:1]]), progress=False)
    np.testing.assert_array_equal(leak.keep, leak2.keep)
    leak3 = plan_dataset(ds, threshold=0, against=DatasetHashes(h.hashes[:1], np.ones(1, bool)), progress=False)
    np.testing.assert_array_equal(leak.keep, leak3.keep)


def test_plan_round_trips_through_save(tmp_path):
    ds = cifar10(tmp_path)
    plan = plan_dataset(ds, threshold=6, progress=False, sweep_max=10)
    plan.save(tmp_path / "plan.tdplan")
    from torch_dedup.plan import DedupPlan
    again = DedupPlan.load(tmp_path / "plan.tdplan")
    np.testing.assert_array_equal(again.kept_indices, plan.kept_indices)
    assert again.provenance["fingerprint"] == plan.provenance["fingerprint"]


# ------------------------------------------------------------------ real data


@pytest.mark.slow
def test_cifar10_jpg_test_split(cifar10_jpg, tmp_path):
    ds = torchvision.datasets.ImageFolder(cifar10_jpg / "test")
    t0 = time.perf_counter()
    h = hash_dataset(ds, progress=False, workers=2, cache_dir=tmp_path)
    assert len(h) == 10000 and h.valid.all() and time.perf_counter() - t0 >= 0
    for i in (0, 4321, 9999):
        assert _hex(h.hashes[i]) == str(imagehash.phash(Image.open(ds.samples[i][0])))
    plan = plan_dataset(ds, threshold=4, progress=False, workers=2, cache_dir=tmp_path)
    assert plan.provenance["from_cache"] and 0 < plan.n_removed < 1000
