"""Sources: raw images, labels and fingerprints of real torchvision datasets, without their transforms.

The dataset builders here (``fashion_mnist``, ``cifar10``, ``svhn``, ``image_folder``) make
*real* torchvision classes over honest files in ``tmp_path``; ``test_index.py`` reuses them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset, IterableDataset, Subset, TensorDataset
from torchvision import transforms

from torch_dedup.embedded import load_sample, materialize_fashion_mnist
from torch_dedup.sources import labels_of, source_of

# ------------------------------------------------------------------ honest dataset builders


def lay_out_mnist(root: Path, folder: str = "FashionMNIST", debian: Path | None = None) -> Path:
    """``ROOT/<folder>/raw`` with the embedded t10k files, for torchvision's MNIST family.

    torchvision's ``_check_exists`` wants the train files too (it only checks they exist).
    They come from Debian's Fashion-MNIST when installed; otherwise the embedded sample is
    written under the train names as well. Datasets built here use ``train=False``, which
    reads only the t10k files, so the stand-in is never read.
    """
    raw = materialize_fashion_mnist(root)
    if folder != "FashionMNIST":
        dst = Path(root) / folder / "raw"
        dst.mkdir(parents=True, exist_ok=True)
        for f in raw.iterdir():
            shutil.copy(f, dst / f.name)
        raw = dst
    for kind in ("images-idx3", "labels-idx1"):
        target = raw / f"train-{kind}-ubyte"
        if target.exists():
            continue
        src = debian / f"train-{kind}-ubyte.gz" if debian is not None else None
        if src is not None and src.exists():
            with gzip.open(src, "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copy(raw / f"t10k-{kind}-ubyte", target)
    return raw


def fashion_mnist(root: Path, cls=torchvision.datasets.FashionMNIST, **kw):
    lay_out_mnist(root, cls.__name__)
    return cls(root, train=False, **kw)


def cifar10(root: Path, n_per_batch: int = 40, seed: int = 0, duplicates: bool = True, **kw):
    """A real ``torchvision.datasets.CIFAR10`` over CIFAR-format pickled batches of random images.

    torchvision checks the batches' MD5s against the official ones, so the class used is a
    subclass whose file lists carry the MD5s of the files written here; loading, layout and
    ``__getitem__`` are torchvision's own. Test batch items 1, 2, 3 are a copy, a brightness
    shift and a 1-pixel shift of item 0 when ``duplicates``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    md5 = {}
    for name in names:
        imgs = _smooth_images(rng, n_per_batch, 32, 32, 3)
        if duplicates and name == "test_batch":
            imgs[1] = imgs[0]
            imgs[2] = np.clip(imgs[0].astype(int) + 6, 0, 255).astype(np.uint8)
            imgs[3] = np.roll(imgs[0], 1, axis=1)
        entry = {"data": imgs.transpose(0, 3, 1, 2).reshape(n_per_batch, -1),
                 "labels": rng.integers(0, 10, n_per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    meta_md5 = hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()
    cls = type("CIFAR10", (torchvision.datasets.CIFAR10,), {
        "__module__": __name__,
        "train_list": [[nm, md5[nm]] for nm in names[:5]], "test_list": [["test_batch", md5["test_batch"]]],
        "meta": {"filename": "batches.meta", "key": "label_names", "md5": meta_md5}})
    return cls(root, train=False, **kw)


def svhn(root: Path, n: int = 30, seed: int = 0, **kw):
    """A real ``torchvision.datasets.SVHN`` over a ``.mat`` file in the original layout (X: HxWxCxN)."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    imgs = _smooth_images(rng, n, 32, 32, 3)
    path = Path(root) / "test_32x32.mat"
    Path(root).mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": imgs.transpose(1, 2, 3, 0), "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    cls = type("SVHN", (torchvision.datasets.SVHN,), {
        "__module__": __name__, "split_list": {"test": ["", "test_32x32.mat", md5]}})
    return cls(root, split="test", **kw)


def _smooth_images(rng, n, h, w, c):
    """Random low-frequency images (distinct perceptual hashes, unlike white noise)."""
    small = rng.integers(0, 256, (n, 4, 4, c)).astype(np.float64)
    out = np.empty((n, h, w, c), np.uint8)
    for i in range(n):
        for ch in range(c):
            out[i, :, :, ch] = np.asarray(Image.fromarray(small[i, :, :, ch].astype(np.uint8)).resize(
                (w, h), Image.BICUBIC))
    return out


def image_folder(root: Path, n_per_class: int = 6, classes=("cat", "dog"), seed: int = 0) -> dict:
    """An ImageFolder tree of generated images with injected near-duplicates.

    Returns ``{"root": Path, "dups": {copy_path: original_path}}``: in each class, items
    ``dup_resized``, ``dup_jpeg``, ``dup_bright`` are a resized, JPEG re-encoded and
    brightness-shifted copy of that class's first image.
    """
    rng = np.random.default_rng(seed)
    dups = {}
    for ci, cname in enumerate(classes):
        d = Path(root) / cname
        d.mkdir(parents=True, exist_ok=True)
        imgs = _smooth_images(rng, n_per_class, 48, 64, 3)
        for i, arr in enumerate(imgs):
            Image.fromarray(arr).save(d / f"img_{i:03d}.png")
        first = Image.fromarray(imgs[0])
        first.resize((96, 72), Image.BILINEAR).save(d / "dup_resized.png")
        buf = io.BytesIO()
        first.save(buf, format="JPEG", quality=80)
        (d / "dup_jpeg.jpg").write_bytes(buf.getvalue())
        ImageEnhance.Brightness(first).enhance(1.1).save(d / "dup_bright.png")
        for name in ("dup_resized.png", "dup_jpeg.jpg", "dup_bright.png"):
            dups[str(d / name)] = str(d / "img_000.png")
    return {"root": Path(root), "dups": dups}


# ------------------------------------------------------------------ array sources


@pytest.mark.parametrize("cls", [torchvision.datasets.FashionMNIST, torchvision.datasets.MNIST,
                                 torchvision.datasets.KMNIST])
def test_mnist_family_reads_data_without_transforms(tmp_path, cls):
    ds = fashion_mnist(tmp_path, cls, transform=transforms.Compose([transforms.RandomCrop(20),
                                                                    transforms.ToTensor()]))
    src = source_of(ds)
    assert src.kind == "array" and src.n == len(ds) == 10000
    images, labels = load_sample()
    np.testing.assert_array_equal(src.array_batch(0, 10000), images)
    np.testing.assert_array_equal(src.labels, labels)
    # the oracle: the dataset's own __getitem__ with the transform removed
    plain = cls(tmp_path, train=False)
    for i in (0, 17, 9999):
        np.testing.assert_array_equal(src.item(i), np.asarray(plain[i][0]))
    assert src.root == Path(tmp_path) and src.fingerprint.startswith("array:")


def test_mnist_family_with_debian_train_split(tmp_path, fashion_mnist_debian):
    lay_out_mnist(tmp_path, debian=fashion_mnist_debian)
    ds = torchvision.datasets.FashionMNIST(tmp_path, train=True)
    src = source_of(ds)
    assert src.kind == "array" and src.n == 60000
    np.testing.assert_array_equal(src.item(123), np.asarray(ds[123][0]))
    np.testing.assert_array_equal(src.labels, ds.targets.numpy())


def test_cifar10_layout_matches_getitem(tmp_path):
    ds = cifar10(tmp_path, transform=transforms.RandomHorizontalFlip(1.0))
    plain = cifar10(tmp_path / "again")
    src = source_of(ds)
    assert src.kind == "array" and src.n == 40
    batch = src.array_batch(0, 40)
    assert batch.shape == (40, 32, 32, 3) and batch.flags.c_contiguous
    for i in (0, 5, 39):
        np.testing.assert_array_equal(batch[i], np.asarray(plain[i][0]))
    np.testing.assert_array_equal(src.labels, np.asarray(ds.targets))


def test_svhn_chw_is_read_as_hwc(tmp_path):
    ds = svhn(tmp_path)
    src = source_of(ds)
    assert src.kind == "array" and src.n == 30
    for i in (0, 29):
        np.testing.assert_array_equal(src.item(i), np.asarray(ds[i][0]))
    np.testing.assert_array_equal(src.labels, ds.labels)


def test_generic_data_attribute_layouts():
    class Arr(Dataset):
        def __init__(self, data):
            self.data = data
            self.targets = list(range(len(data)))

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return self.data[i], self.targets[i]

    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(source_of(Arr(hwc)).array_batch(0, 5), hwc)
    np.testing.assert_array_equal(source_of(Arr(hwc.transpose(0, 3, 1, 2).copy())).array_batch(0, 5), hwc)
    np.testing.assert_array_equal(source_of(Arr(torch.from_numpy(hwc[..., :1]))).array_batch(1, 3), hwc[1:3, ..., 0])
    assert source_of(Arr(hwc.astype(np.float32))).kind == "items"  # not raw uint8 images: no fast path
    assert source_of(Arr(hwc)).labels.dtype == np.int64


def test_array_fingerprint_tracks_content(tmp_path):
    ds = cifar10(tmp_path)
    fp = source_of(ds).fingerprint
    assert source_of(cifar10(tmp_path / "same")).fingerprint == fp  # same content, other folder
    ds.data[3, 4, 5, 0] ^= 1
    assert source_of(ds).fingerprint != fp
    assert source_of(ds, fingerprint="v2").fingerprint.endswith("|user:v2")


# ------------------------------------------------------------------ file sources


def test_image_folder_is_a_files_source(tmp_path):
    tree = image_folder(tmp_path / "imgs")
    ds = torchvision.datasets.ImageFolder(tree["root"], transform=transforms.RandomResizedCrop(16))
    src = source_of(ds)
    assert src.kind == "files" and src.n == len(ds) == 18
    assert src.paths() == [p for p, _ in ds.samples]
    np.testing.assert_array_equal(src.labels, np.asarray(ds.targets))
    assert src.item(4) == ds.samples[4][0] and src.root == tree["root"]


def test_files_fingerprint_tracks_size_and_mtime(tmp_path):
    tree = image_folder(tmp_path / "imgs")
    ds = torchvision.datasets.ImageFolder(tree["root"])
    fp = source_of(ds).fingerprint
    assert source_of(torchvision.datasets.ImageFolder(tree["root"])).fingerprint == fp
    victim = Path(ds.samples[2][0])
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fp_mtime = source_of(ds).fingerprint
    assert fp_mtime != fp
    with open(victim, "ab") as f:
        f.write(b"\0")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same mtime, new size
    assert source_of(ds).fingerprint not in (fp, fp_mtime)


def test_custom_loader_is_called_without_transform(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"x{i}.npy", np.full((8, 8), 40 * i, np.uint8))
    (tmp_path / "cls").mkdir()
    for f in tmp_path.glob("*.npy"):
        f.rename(tmp_path / "cls" / f.name)
    ds = torchvision.datasets.DatasetFolder(str(tmp_path), loader=np.load, extensions=(".npy",),
                                            transform=lambda a: a * 0)
    src = source_of(ds)
    assert src.kind == "items" and src.fingerprint.startswith("files:")
    np.testing.assert_array_equal(src.item(2), np.full((8, 8), 80, np.uint8))


# ------------------------------------------------------------------ subsets, image_fn, fallback


def test_subset_maps_through_indices(tmp_path):
    base = cifar10(tmp_path)
    sub = Subset(base, [5, 1, 30, 2])
    src = source_of(sub)
    assert src.kind == "array" and src.n == 4
    np.testing.assert_array_equal(src.array_batch(0, 4), base.data[[5, 1, 30, 2]])
    np.testing.assert_array_equal(src.labels, np.asarray(base.targets)[[5, 1, 30, 2]])
    nested = Subset(sub, [3, 0])
    nsrc = source_of(nested)
    np.testing.assert_array_equal(nsrc.array_batch(0, 2), base.data[[2, 5]])
    np.testing.assert_array_equal(labels_of(nested), np.asarray(base.targets)[[2, 5]])
    fps = {source_of(base).fingerprint, src.fingerprint, nsrc.fingerprint,
           source_of(Subset(base, [5, 1, 30, 3])).fingerprint}
    assert len(fps) == 4

    tree = image_folder(tmp_path / "imgs")
    folder = torchvision.datasets.ImageFolder(tree["root"])
    fsub = source_of(Subset(folder, [7, 0]))
    assert fsub.kind == "files" and fsub.paths() == [folder.samples[7][0], folder.samples[0][0]]


def test_image_fn_takes_precedence_and_needs_a_fingerprint_to_cache(tmp_path):
    base = cifar10(tmp_path)
    src = source_of(base, image_fn=lambda i: base.data[len(base) - 1 - i])
    assert src.kind == "items" and src.fingerprint is None
    np.testing.assert_array_equal(src.item(0), base.data[-1])
    np.testing.assert_array_equal(src.labels, np.asarray(base.targets))
    fp = source_of(base, image_fn=lambda i: base.data[i], fingerprint="rev-1").fingerprint
    assert fp is not None and "rev-1" in fp


def test_getitem_fallback_warns_about_transforms(caplog):
    class Pics(Dataset):
        def __init__(self, transform=None):
            self.transform = transform
            self.imgs = [Image.new("L", (8, 8), 30 * i) for i in range(4)]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            img = self.imgs[i]
            return (self.transform(img) if self.transform else img), i

    with caplog.at_level(logging.WARNING, logger="torch_dedup.sources"):
        src = source_of(Pics())
    assert src.kind == "items" and not caplog.records
    assert np.asarray(src.item(2)).max() == 60
    with caplog.at_level(logging.WARNING, logger="torch_dedup.sources"):
        source_of(Pics(transform=transforms.RandomRotation(30)))
    assert len(caplog.records) == 1 and "image_fn" in caplog.records[0].getMessage()
    t = source_of(TensorDataset(torch.arange(6).reshape(3, 2)))
    assert t.kind == "items" and t.item(1).tolist() == [2, 3] and t.labels is None


class Stream(IterableDataset):
    """A stream: no random access, no length."""

    def __iter__(self):
        yield from range(3)


class NoLen(Dataset):
    """Map-style but without ``__len__``."""

    def __getitem__(self, i):
        return i


def test_streams_and_unsized_datasets_are_refused():
    with pytest.raises(TypeError, match="torch_dedup.wds"):
        source_of(Stream())
    with pytest.raises(TypeError, match="__len__"):
        source_of(NoLen())


def test_ranges_are_checked(tmp_path):
    src = source_of(cifar10(tmp_path))
    with pytest.raises(ValueError, match="start"):
        src.array_batch(5, 2)
    with pytest.raises(TypeError, match="files source"):
        src.paths()
    with pytest.raises(IndexError):
        src.item(40)


def test_file_fingerprint_takes_relative_paths_as_relpath_would(tmp_path):
    """The fast prefix strip and os.path.relpath give the same fingerprint (odd paths take relpath)."""
    import hashlib
    import os

    from torch_dedup.sources import _files_digest
    (tmp_path / "cat").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("cat/1.jpg", ".hidden/2.jpg"):
        (tmp_path / name).write_bytes(b"x")
    root = str(tmp_path)
    paths = [os.path.join(root, "cat", "1.jpg"), os.path.join(root, ".", "cat", "1.jpg"), root + "//cat/1.jpg",
             os.path.join(root, ".hidden", "2.jpg"), os.path.join(root, "cat", "..", "cat", "1.jpg")]

    def reference(ps):
        h = hashlib.blake2b(digest_size=16)
        for p in ps:
            st = os.stat(p)
            h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    assert _files_digest(paths, tmp_path) == reference(paths)
