"""Hugging Face ``datasets``: the stored image column is hashed, never a transform; ClassLabel labels;
caching keyed on the dataset's own fingerprint; streaming datasets get a clear pointer.

Everything is built from local files (PNGs written here); nothing downloads.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
from PIL import Image  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from torch_dedup import DedupSampler, plan_dataset  # noqa: E402
from torch_dedup.embedded import load_sample  # noqa: E402
from torch_dedup.hf_datasets import hf_image_column  # noqa: E402

N, COPIES = 120, 15


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder of N sample digits plus COPIES exact copies (PNG), two classes."""
    root = tmp_path_factory.mktemp("hf") / "train"
    images, _ = load_sample(N)
    for i in range(N + COPIES):
        img = images[i if i < N else (i - N) * 3]
        cls = root / ("a" if i % 2 == 0 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(cls / f"{i:04d}.png")
    return root


def _hf(folder, *, as_bytes: bool):
    """The same files as ImageFolder(folder), in ImageFolder's order, as a datasets.Dataset."""
    samples = ImageFolder(str(folder)).samples
    images = [{"bytes": Path(p).read_bytes(), "path": None} if as_bytes else p for p, _ in samples]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": images, "label": [c for _, c in samples]}, features=features)


def _plan(ds, **kw):
    return plan_dataset(ds, threshold=4, cache_dir=kw.pop("cache_dir", False), progress=False, **kw)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_same_kept_indices_as_image_folder(folder, as_bytes):
    ref = _plan(ImageFolder(str(folder)))
    hf = _plan(_hf(folder, as_bytes=as_bytes))
    assert ref.n_kept < ref.n  # the copies are found
    assert hf.kept_indices.tolist() == ref.kept_indices.tolist()


def test_decode_false_column_is_read_as_stored(folder):
    ds = _hf(folder, as_bytes=True)
    raw = ds.cast_column("image", datasets.Image(decode=False))
    assert isinstance(raw[0]["image"], dict)  # what ds[i] hands out: a {bytes, path} dict
    assert _plan(raw).kept_indices.tolist() == _plan(ds).kept_indices.tolist()


def test_random_with_transform_does_not_change_the_plan(folder):
    ds = _hf(folder, as_bytes=True)
    ref = _plan(ds).kept_indices.tolist()
    rng = random.Random(0)

    def augment(batch):  # a random crop and flip: hashing it would make every hash random
        out = []
        for img in batch["image"]:
            w, h = img.size
            dx, dy = rng.randint(0, 6), rng.randint(0, 6)
            img = img.crop((dx, dy, w - 6 + dx, h - 6 + dy))
            out.append(img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img)
        return {"image": out, "label": batch["label"]}

    for transformed in (ds.with_transform(augment), ds.with_format("torch")):
        assert _plan(transformed).kept_indices.tolist() == ref


def test_class_label_column_gives_per_class_plans(folder):
    ds = _hf(folder, as_bytes=True)
    col = hf_image_column(ds)
    assert col.label_column == "label" and col.labels.tolist() == ds["label"]
    sampler = DedupSampler(ds, threshold=4, per_class=True, cache_dir=False, progress=False)
    plan = sampler.plan
    assert plan.per_class and plan.labels.tolist() == ds["label"]
    assert plan.kept_indices.tolist() == _plan(ImageFolder(str(folder)), per_class=True).kept_indices.tolist()


def test_sidecar_keyed_on_the_dataset_fingerprint(folder, tmp_path):
    first = _plan(_hf(folder, as_bytes=True), cache_dir=tmp_path)
    again = _plan(_hf(folder, as_bytes=True), cache_dir=tmp_path)  # rebuilt: same content, same fingerprint
    assert first.provenance["from_cache"] is False and again.provenance["from_cache"] is True
    assert again.kept_indices.tolist() == first.kept_indices.tolist()
    # any change to the dataset changes its fingerprint: the sidecar is not reused
    changed = _hf(folder, as_bytes=True).select(range(N + COPIES - 1))
    other = _plan(changed, cache_dir=tmp_path)
    assert other.provenance["from_cache"] is False and other.n == N + COPIES - 1
    flipped = _hf(folder, as_bytes=True).map(
        lambda row: {"image": row["image"].transpose(Image.FLIP_TOP_BOTTOM)})
    assert _plan(flipped, cache_dir=tmp_path).provenance["from_cache"] is False


def test_streaming_dataset_gets_a_pointer(folder):
    stream = _hf(folder, as_bytes=True).to_iterable_dataset()
    with pytest.raises(TypeError, match="streaming=True.*torch_dedup.wds"):
        DedupSampler(stream, threshold=4, cache_dir=False, progress=False)


def test_dataset_without_image_column_names_the_fix():
    ds = datasets.Dataset.from_dict({"pixels": [[0, 1], [2, 3]]})
    with pytest.raises(TypeError, match="image_fn"):
        _plan(ds)


def test_sampler_over_hf_dataset_in_a_loader(folder):
    import torch
    ds = _hf(folder, as_bytes=True)
    plan = _plan(ds)
    loader_ds = ds.with_transform(lambda b: {"x": [torch.tensor(np.asarray(i)).float() for i in b["image"]],
                                             "label": b["label"]})
    sampler = DedupSampler(loader_ds, plan=plan, seed=1)
    seen = sorted(sampler)
    assert seen == plan.kept_indices.tolist()


def test_hf_dataset_inside_a_subset_uses_the_stored_column_and_its_labels():
    """The fast path is found through torch wrappers too, and plan_dataset reads ClassLabel labels."""
    import torch

    from torch_dedup import plan_dataset
    from torch_dedup.sources import labels_of, source_of
    x, y = load_sample(60)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in x], "label": y.tolist()},
                                    features=features)
    ds.set_transform(lambda batch: {"image": [0 for _ in batch["image"]], "label": batch["label"]})
    sub = torch.utils.data.Subset(ds, list(range(10, 40)))
    assert source_of(sub).base.description == "datasets.Dataset['image'] (stored bytes)"  # not ds[i]
    np.testing.assert_array_equal(labels_of(sub), y[10:40])
    plan = plan_dataset(ds, 4, per_class=True, cache_dir=False, progress=False)
    np.testing.assert_array_equal(plan.labels, y)
