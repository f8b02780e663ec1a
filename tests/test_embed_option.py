"""``embed=``: a user's model as the signal of every consumer (plan_dataset, the sampler), against= in one space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from torchvision.datasets import ImageFolder

from torch_dedup import DedupOptions, DedupSampler, plan_dataset
from torch_dedup.embedding import embed_dataset
from torch_dedup.planning import plan_from_hashes


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(4),
                               torch.nn.Flatten())


def _smooth(rng) -> Image.Image:
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize((32, 32), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in "ab":
            (root / split / c).mkdir(parents=True)
            for i in range(25):
                _smooth(rng).save(root / split / c / f"{i:02d}.png")
    src = Image.open(root / "train" / "a" / "05.png")
    ImageEnhance.Brightness(src).enhance(1.05).save(root / "train" / "a" / "05_copy.png")
    src.save(root / "test" / "b" / "zz_leak.png")  # train's a/05 in the test set
    return root


def test_plan_with_embed_is_plan_of_embed_dataset(folders, tmp_path):
    net = _net()
    train, test = ImageFolder(folders / "train"), ImageFolder(folders / "test")
    plan = plan_dataset(train, embed=net, hash_size=16, threshold=24, against=test, cache_dir=tmp_path,
                        progress=False, distributed=False)
    dh = embed_dataset(train, net, bits=256, cache_dir=tmp_path, progress=False)
    other = embed_dataset(test, net, bits=256, cache_dir=tmp_path, progress=False, fit=dh.fit)
    want = plan_from_hashes(dh, 24, against=other.hashes[other.valid])
    np.testing.assert_array_equal(plan.keep, want.keep)
    np.testing.assert_array_equal(plan.leaked, want.leaked)
    names = [p.rsplit("/", 1)[-1] for p, _ in train.samples]
    assert plan.leaked[names.index("05.png")]  # the exact copy in the test set, found in train's space
    assert plan.settings["method"] == "embed" and plan.provenance["fit_fingerprint"] == dh.fit.fingerprint
    sampler = DedupSampler(train, options=DedupOptions(embed=net, hash_size=16, threshold=24, against=test,
                                                       cache_dir=tmp_path, progress=False))
    assert sorted(sampler.kept_indices.tolist()) == np.flatnonzero(plan.keep).tolist()


def test_against_hashes_of_another_fit_are_refused(folders, tmp_path):
    net = _net()
    train, test = ImageFolder(folders / "train"), ImageFolder(folders / "test")
    own = embed_dataset(test, net, bits=256, cache_dir=tmp_path, progress=False)  # the test set's own fit
    with pytest.raises(ValueError, match="codes of another method or fit are not comparable"):
        plan_dataset(train, embed=net, hash_size=16, against=own, cache_dir=tmp_path, progress=False,
                     distributed=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(embed=_net(), method="dhash"), r"embed= gives the codes itself"),
    (dict(embed=_net(), hash_size=12), r"hash_size=12 gives 144-bit embedding codes"),
    (dict(embed="resnet"), r"embed='resnet' must be a torch module or a callable"),
    (dict(embed_device="cuda"), r"apply to embed= only"),
])
def test_embed_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DedupOptions(**kwargs)
