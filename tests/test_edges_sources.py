"""Issue 14 item 1 (and item 8's tensor message): raw images behind wrappers, no silent transforms.

Every test here failed on the code before the fix: wrappers hid their base's transforms,
a random transform gave a different plan on every build, normalised tensors were hashed
as noise, and channels-last tensors were told they had 28 channels.
"""

from __future__ import annotations

import logging

import imagehash
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset, random_split
from torchvision import transforms

from test_sources import cifar10, fashion_mnist, image_folder
from torch_dedup.dataset import DedupDataset
from torch_dedup.dataset_hashes import hash_dataset
from torch_dedup.errors import DedupError, ImageDecodeError
from torch_dedup.hashing.api import hash_images
from torch_dedup.planning import plan_dataset
from torch_dedup.sampler import DedupSampler
from torch_dedup.sources import labels_of, source_of

# FashionMNIST's usual training transform: random, and normalised to mean 0, std 1
AUGMENT = transforms.Compose([transforms.RandomCrop(28, padding=4), transforms.ToTensor(),
                              transforms.Normalize((0.2860,), (0.3530,))])


def _phash_hex(arr: np.ndarray) -> str:
    return str(imagehash.phash(Image.fromarray(arr)))


# ------------------------------------------------------------------ the repro


def test_concat_of_subset_with_random_normalising_transform_gives_one_plan(tmp_path):
    """``ConcatDataset([Subset(ds_with_RandomCrop_and_Normalize, ...)])`` built twice: 2,900 vs 2,904 kept."""
    ds = fashion_mnist(tmp_path, transform=AUGMENT)
    raw = fashion_mnist(tmp_path)
    picked = list(range(0, 6000, 2))
    plans = [plan_dataset(ConcatDataset([Subset(ds, picked)]), threshold=8, cache_dir=False, progress=False)
             for _ in range(2)]
    np.testing.assert_array_equal(plans[0].kept_indices, plans[1].kept_indices)
    # and it is the plan of the raw images, not of any augmentation
    truth = plan_dataset(Subset(raw, picked), threshold=8, cache_dir=False, progress=False)
    np.testing.assert_array_equal(plans[0].kept_indices, truth.kept_indices)
    assert 0 < len(truth.kept_indices) < len(picked)  # the threshold does remove items here


def test_sampler_over_dedup_dataset_reads_the_raw_base(tmp_path):
    ds = fashion_mnist(tmp_path, transform=AUGMENT)
    dd = DedupDataset(ds, threshold=2, cache_dir=False, progress=False)
    base = hash_dataset(ds, cache_dir=False, progress=False).hashes
    again = hash_dataset(dd, cache_dir=False, progress=False)
    np.testing.assert_array_equal(again.hashes, base[dd.indices])
    samplers = [DedupSampler(dd, threshold=10, cache_dir=False, progress=False, shuffle=False) for _ in range(2)]
    assert list(samplers[0]) == list(samplers[1])
    assert len(samplers[0]) < len(dd)


# ------------------------------------------------------------------ any depth, any mix


def test_random_split_of_concat_of_subsets_reads_every_base(tmp_path):
    a = cifar10(tmp_path / "a", transform=transforms.RandomHorizontalFlip(1.0))
    b = cifar10(tmp_path / "b", seed=1, transform=transforms.ToTensor())
    both = ConcatDataset([Subset(a, [5, 1, 30]), b])
    first, second = random_split(both, [20, 23], generator=torch.Generator().manual_seed(0))
    expected = np.concatenate([a.data[[5, 1, 30]], b.data])
    labels = np.concatenate([np.asarray(a.targets)[[5, 1, 30]], b.targets])
    for part in (first, second):
        src = source_of(part)
        assert src.kind == "array" and src.n == len(part)
        np.testing.assert_array_equal(src.array_batch(0, src.n), expected[part.indices])
        np.testing.assert_array_equal(labels_of(part), labels[part.indices])
        assert src.item(3).shape == (32, 32, 3)
    # two subsets of one dataset, concatenated, are a view of that dataset
    one = source_of(ConcatDataset([Subset(a, [0, 2]), Subset(a, [7])]))
    assert one.base is not None and one.base_indices.tolist() == [0, 2, 7]


def test_concat_of_files_and_of_mixed_kinds(tmp_path):
    t1, t2 = image_folder(tmp_path / "one"), image_folder(tmp_path / "two", seed=1)
    f1 = torchvision.datasets.ImageFolder(t1["root"], transform=transforms.RandomResizedCrop(8))
    f2 = torchvision.datasets.ImageFolder(t2["root"])
    files = source_of(ConcatDataset([f1, Subset(f2, [4, 0])]))
    assert files.kind == "files"
    assert files.paths() == [p for p, _ in f1.samples] + [f2.samples[4][0], f2.samples[0][0]]
    mnist = fashion_mnist(tmp_path / "m", transform=AUGMENT)
    mixed = ConcatDataset([Subset(mnist, [3]), f2])  # 28x28 gray and 48x64 RGB files: one by one
    src = source_of(mixed)
    assert src.kind == "items" and src.n == 1 + len(f2)
    np.testing.assert_array_equal(src.item(0), mnist.data[3].numpy())
    assert src.item(1) == f2.samples[0][0]
    h = hash_dataset(mixed, cache_dir=False, progress=False)
    assert f"{int(h.hashes[0]):016x}" == _phash_hex(mnist.data[3].numpy())
    assert f"{int(h.hashes[1]):016x}" == str(imagehash.phash(Image.open(f2.samples[0][0])))


# ------------------------------------------------------------------ what cannot be bypassed is loud


class Wrapped(Dataset):
    """A user wrapper that holds a transformed dataset: no fast path, no transform of its own."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


def test_hidden_transform_inside_an_unknown_wrapper_warns_with_the_fix(tmp_path, caplog):
    ds = fashion_mnist(tmp_path, transform=transforms.RandomCrop(20))
    with caplog.at_level(logging.WARNING, logger="torch_dedup.sources"):
        source_of(Wrapped(ds))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "Wrapped.inner (FashionMNIST)" in text and "image_fn=" in text


def test_random_reads_are_refused_not_hashed(tmp_path):
    ds = fashion_mnist(tmp_path, transform=transforms.RandomCrop(20))
    with pytest.raises(DedupError, match="read twice gave two different images.*image_fn="):
        hash_dataset(Wrapped(ds), cache_dir=False, progress=False)
    rng = np.random.default_rng(0)
    noisy = lambda i: rng.integers(0, 256, (16, 16), dtype=np.uint8)  # noqa: E731
    with pytest.raises(DedupError, match="random image_fn"):
        hash_dataset(Subset(ds, [0, 1, 2]), image_fn=noisy, cache_dir=False, progress=False)
    # a deterministic wrapper passes the check
    plain = hash_dataset(Wrapped(fashion_mnist(tmp_path)), cache_dir=False, progress=False)
    assert f"{int(plain.hashes[7]):016x}" == _phash_hex(ds.data[7].numpy())


class Normalised(Dataset):
    """Images as normalised tensors, and no raw-image fast path (a deterministic transform)."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.25,))])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), 0


def test_normalised_float_tensors_are_refused_with_the_fix(tmp_path):
    images = fashion_mnist(tmp_path).data[:8].numpy()
    with pytest.raises(ValueError, match=r"values in \[-2, 2\], outside \[0, 1\].*image_fn="):
        hash_images([transforms.Normalize((0.5,), (0.25,))(torch.from_numpy(images[0])[None] / 255.0)])
    with pytest.raises(ValueError, match="NaN"):
        hash_images([torch.full((1, 8, 8), float("nan"))])
    with pytest.raises(ImageDecodeError, match="un-normalised image"):
        hash_dataset(Normalised(images), cache_dir=False, progress=False)
    # the fix the message names: image_fn returning the raw image
    h = hash_dataset(Normalised(images), image_fn=lambda i: images[i], cache_dir=False, progress=False)
    assert f"{int(h.hashes[3]):016x}" == _phash_hex(images[3])


def test_float_tensors_in_unit_range_keep_hashing_like_to_pil_image():
    rng = np.random.default_rng(1)
    t = torch.from_numpy(rng.random((3, 20, 20), dtype=np.float32))
    t[0, 0, 0], t[1, 0, 0] = 1.0, 0.0
    expected = str(imagehash.phash(transforms.functional.to_pil_image(t)))
    got = f"{int(np.asarray(hash_images([t]).hashes)[0]):016x}"
    assert got == expected
    # rounding of an un-normalisation (1 + 1e-6, -1e-6) still converts to 255 and 0
    nudged = t.clone()
    nudged[0, 0, 0], nudged[1, 0, 0] = 1 + 1e-6, -1e-6
    assert f"{int(np.asarray(hash_images([nudged]).hashes)[0]):016x}" == expected


@pytest.mark.parametrize("shape, fix", [((28, 28, 3), r"permute\(2, 0, 1\)"), ((28, 28, 1), r"permute\(2, 0, 1\)"),
                                        ((4, 28, 28, 3), r"permute\(0, 3, 1, 2\)")])
def test_channels_last_tensors_are_told_which_permute(shape, fix):
    t = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(ValueError, match=f"channels-last.*{fix}"):
        hash_images(t if len(shape) == 4 else [t])
    # the permute it names works
    fixed = t.permute(0, 3, 1, 2) if len(shape) == 4 else t.permute(2, 0, 1)
    assert len(hash_images(fixed if len(shape) == 4 else [fixed]).valid) == (shape[0] if len(shape) == 4 else 1)


def test_content_fingerprint_needs_files(tmp_path):
    with pytest.raises(ValueError, match="fingerprint='content'.*ds\\[i\\].*version tag"):
        source_of(Wrapped(fashion_mnist(tmp_path)), fingerprint="content")
    with pytest.raises(ValueError, match="fingerprint='content'.*image_fn"):
        source_of(fashion_mnist(tmp_path), image_fn=lambda i: None, fingerprint="content")
    # arrays are fingerprinted by their bytes already: "content" keeps that fingerprint
    ds = fashion_mnist(tmp_path)
    assert source_of(ds, fingerprint="content").fingerprint == source_of(ds).fingerprint
