"""Bring-your-own embedding codes (torch_dedup.embedding): small models built here, nothing downloaded."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from torch_dedup import embedding
from torch_dedup.embedded import load_sample
from torch_dedup.embedding import (
    EMBED_VERSION,
    EmbeddingFit,
    EmbeddingHashes,
    embed_dataset,
    embed_images,
    fit_embeddings,
    model_fingerprint,
)
from torch_dedup.errors import EmptyDedupError, ImageDecodeError
from torch_dedup.hamming import hamming_pairs
from torch_dedup.hashing import (
    cosine_for_threshold,
    hyperplanes,
    threshold_for_cosine,
    to_hex,
)
from torch_dedup.planning import plan_from_hashes


class TinyNet(torch.nn.Module):
    """A 3-layer conv net with a batch norm, global pooling and a call counter."""

    def __init__(self, seed: int = 0, dims: int = 32):
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, dims, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.calls = 0
        self.seen_training: list[bool] = []
        self.seen_inference: list[bool] = []

    def forward(self, x):
        self.calls += 1
        self.seen_training.append(self.training)
        self.seen_inference.append(torch.is_inference_mode_enabled())
        return self.features(x)


class Toy(torch.utils.data.Dataset):
    """An array dataset (``.data`` uint8), read by torch_dedup without ``__getitem__``."""

    def __init__(self, data: np.ndarray, targets=None):
        self.data = data
        self.targets = list(range(len(data))) if targets is None else targets

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], self.targets[i]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_sample(300)[0]


def _naive_codes(emb: np.ndarray, fit: EmbeddingFit) -> np.ndarray:
    """sign(centred @ planes) packed with numpy: bit 0 is the MSB of word 0."""
    e = emb.astype(np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    bits = (e - fit.centre.astype(np.float64)) @ fit.planes.astype(np.float64) > 0
    words = np.packbits(bits, axis=1).view(">u8").astype(np.uint64)
    return words[:, 0] if words.shape[1] == 1 else words


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = np.bitwise_xor(np.atleast_2d(a), np.atleast_2d(b))
    return np.unpackbits(x.astype(">u8").view(np.uint8), axis=-1).sum(axis=-1)


def test_public_names_sorted():
    assert embedding.__all__ == sorted(embedding.__all__)
    assert all(hasattr(embedding, name) for name in embedding.__all__)


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_changes_with_weights_buffers_and_layers():
    net = TinyNet()
    base = model_fingerprint(net)
    assert base == model_fingerprint(TinyNet()) and len(base) == 32  # same seed, same weights
    with torch.no_grad():
        net.features[0].weight[0, 0, 0, 0] += 1e-3
    assert model_fingerprint(net) != base
    other = TinyNet()
    other.features[1].running_mean += 1  # a buffer, not a parameter
    assert model_fingerprint(other) != base
    gelu = TinyNet()
    gelu.features[2] = torch.nn.GELU()  # same weights, another layer
    assert model_fingerprint(gelu) != base
    extra = TinyNet()
    extra.register_buffer("scale", torch.ones(1), persistent=False)  # not in the state dict
    changed = TinyNet()
    changed.register_buffer("scale", torch.full((1,), 2.0), persistent=False)
    assert model_fingerprint(extra) != model_fingerprint(changed)
    assert model_fingerprint(net, "v2") != model_fingerprint(net)


def test_fingerprint_of_a_plain_callable_needs_a_string():
    def encode(x):
        return x.mean(dim=(2, 3))

    with pytest.raises(ValueError, match=r"embed=.*encode is a plain callable.*pass fingerprint="):
        model_fingerprint(encode)
    assert model_fingerprint(encode, "clip-vit-b32@abc") != model_fingerprint(encode, "clip-vit-b32@abd")
    with pytest.raises(ValueError, match=r"fingerprint='' must be a non-empty string"):
        model_fingerprint(encode, "")
    with pytest.raises(TypeError, match="embed=.*is not callable"):
        model_fingerprint(42)


def test_bound_method_of_a_module_is_fingerprinted_by_its_weights():
    class Clip(TinyNet):
        def encode_image(self, x):
            return self.features(x) * 2

    clip = Clip()
    assert model_fingerprint(clip.encode_image) != model_fingerprint(clip)
    with torch.no_grad():
        clip.features[0].bias += 1
    before = model_fingerprint(Clip().encode_image)
    assert model_fingerprint(clip.encode_image) != before


# --------------------------------------------------------------------------- embed_images


def test_modes_and_inference_mode_restored():
    net = TinyNet()
    net.train()
    net.features[1].eval()  # a frozen batch norm inside a training model: a mixed state
    embed_images(np.zeros((3, 16, 16), np.uint8), net, batch_size=2)
    assert net.calls == 2 and net.seen_training == [False, False] and all(net.seen_inference)
    assert net.training and net.features[0].training and not net.features[1].training
    net.eval()
    embed_images(np.zeros((1, 16, 16), np.uint8), net)
    assert not net.training

    class Boom(TinyNet):
        def forward(self, x):
            raise RuntimeError("boom")

    boom = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        embed_images(np.zeros((1, 8, 8), np.uint8), boom)
    assert all(m.training for m in boom.modules())


def test_bound_method_runs_its_module_in_eval_mode():
    class Clip(TinyNet):
        def encode_image(self, x):
            self.seen_training.append(self.training)
            return self.features(x)

    clip = Clip().train()
    out = embed_images(np.zeros((2, 8, 8), np.uint8), clip.encode_image)
    assert out.shape == (2, 32) and clip.seen_training == [False] and clip.training


def test_default_transform_is_to_tensor_of_rgb(tmp_path, images):
    flat = torch.nn.Flatten()
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((12, 10, 1), 7, np.uint8)], axis=2)
    grey = images[0][:12, :10]
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    inputs = [Image.fromarray(rgb), Image.fromarray(grey), Image.fromarray(rgba), str(path), rgb, grey, rgba,
              torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(rgb).permute(2, 0, 1).float() / 255]
    out = embed_images(inputs, flat)
    tv = torchvision.transforms.functional.to_tensor
    want = [tv(Image.fromarray(a).convert("RGB")).reshape(-1).numpy() for a in (rgb, grey, rgba) * 2]
    want = [want[0], want[1], want[2], want[0], *want[3:], want[0], want[0]]
    for k, (got, expect) in enumerate(zip(out, want)):
        np.testing.assert_array_equal(got, expect, err_msg=f"input {k}")
    net = TinyNet()  # a stack, a list of arrays and the same pixels as files embed bit for bit alike
    np.testing.assert_array_equal(embed_images(images[:8], net), embed_images(list(images[:8]), net))
    stack = embed_images(images[:4], flat, batch_size=3)
    np.testing.assert_array_equal(stack, [tv(Image.fromarray(a).convert("RGB")).reshape(-1).numpy()
                                          for a in images[:4]])


def test_user_transform_and_batches(images):
    net = TinyNet()
    t = torchvision.transforms.Compose([torchvision.transforms.Resize((20, 20)), torchvision.transforms.ToTensor(),
                                        torchvision.transforms.Normalize([0.5] * 3, [0.25] * 3)])
    a = embed_images(list(images[:10]), net, transform=t, batch_size=4)
    b = embed_images(images[:10], net, transform=t, batch_size=10)
    assert a.shape == (10, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_embed_images_errors_name_the_fix(images):
    net = TinyNet()
    mixed = [images[0], np.zeros((20, 20), np.uint8)]
    with pytest.raises(ValueError, match=r"different sizes.*pass transform= with a Resize"):
        embed_images(mixed, net)

    class Flat(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ValueError, match=r"returned 1200 numbers per image.*but 2352 before.*Resize"):
        embed_images(mixed, Flat(), batch_size=1)
    with pytest.raises(ValueError, match=r"NaN or infinite values for images\[1\].*transform="):
        embed_images(images[:2], lambda x: torch.where(torch.arange(2)[:, None] == 1, torch.nan, x.flatten(1)))
    with pytest.raises(TypeError, match=r"embed returned tuple.*must return a tensor"):
        embed_images(images[:2], lambda x: (x, x))
    with pytest.raises(ValueError, match=r"returned shape \(3,\) for a batch of 2 images"):
        embed_images(images[:2], lambda x: torch.zeros(3))
    with pytest.raises(TypeError, match=r"transform= returned Image.*ToTensor"):
        embed_images(images[:1], net, transform=lambda im: im)
    with pytest.raises(ValueError, match=r"device='nonsense' is not a torch device"):
        embed_images(images[:1], net, device="nonsense")
    with pytest.raises(ValueError, match=r"weights are on meta .*but device='cpu'.*model.to\('cpu'\)"):
        embed_images(images[:1], TinyNet().to("meta"))
    with pytest.raises(ValueError, match=r"batch_size=0 must be an int >= 1"):
        embed_images(images[:1], net, batch_size=0)
    with pytest.raises(ValueError, match=r"single ndarray|single Image"):
        embed_images(Image.fromarray(images[0]), net)
    with pytest.raises(ValueError, match=r"dtype float64; expected uint8"):
        embed_images(images[:2].astype(np.float64), net)
    with pytest.raises(ValueError, match=r"float tensor with values in \[2, 2\], outside \[0, 1\].*normalised"):
        embed_images([torch.full((3, 8, 8), 2.0)], net)
    bad = [images[0], "/nonexistent/x.png"]
    with pytest.raises(ImageDecodeError, match=r"/nonexistent/x.png \(item 1\)") as info:
        embed_images(bad, net)
    assert info.value.index == 1


# --------------------------------------------------------------------------- fit and codes


def test_codes_match_naive_reference_and_packing(images):
    emb = embed_images(images, TinyNet())
    for bits in (64, 128, 256):
        fit = fit_embeddings(emb, bits=bits, seed=3)
        codes = fit.codes(emb)
        assert codes.dtype == np.uint64 and codes.shape == ((300,) if bits == 64 else (300, bits // 64))
        np.testing.assert_array_equal(codes, _naive_codes(emb, fit))
        # the library's hex form reads bit 0 as the first, most significant hex digit's top bit
        centred = emb / np.linalg.norm(emb, axis=1, keepdims=True) - fit.centre
        first = (centred[0].astype(np.float64) @ fit.planes.astype(np.float64) > 0).astype(int)
        assert to_hex(codes[:1])[0] == f"{int(''.join(map(str, first)), 2):0{bits // 4}x}"
    fit = fit_embeddings(emb, seed=1)
    again = fit_embeddings(emb.copy(), seed=1)
    assert fit.fingerprint == again.fingerprint and np.array_equal(fit.planes, again.planes)
    whole = fit.codes(emb)
    parts = np.concatenate([fit.codes(emb[i:i + 7]) for i in range(0, 300, 7)])
    np.testing.assert_array_equal(whole, parts)  # no dependence on the batch
    assert fit_embeddings(emb, seed=2).fingerprint != fit.fingerprint


def test_codes_are_pinned():
    """Codes and fit fingerprints that sidecars keep never drift (values from before the fit moved to hashing)."""
    emb = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    fit = fit_embeddings(emb, bits=64, seed=7)
    assert fit.fingerprint == "f3157cba4a1e37a5556467399b8cad19"
    assert to_hex(fit.codes(emb)) == ["8f5c9fac5ff4d74d", "48f83b45fb56706d", "3803401990a8b2b2", "83f22273c40f09d0"]
    fit = fit_embeddings(emb, bits=128, seed=7)
    assert fit.fingerprint == "621cbf359ca525119398ba507e0d0846"
    assert to_hex(fit.codes(emb)) == ["0483dc543af5f46e235dce95fd8bcd0d", "5fc38c449ef8670ca679fa2026ed04b2",
                                      "f7347931c50b90a3d18a46ae90179b12", "807c939bfd5e1f58cd3631fb42f0f2e0"]


def test_fit_lives_in_hashing_and_is_re_exported():
    assert hyperplanes.__all__ == sorted(hyperplanes.__all__)
    for name in ("DEFAULT_BITS", "EMBED_VERSION", "EmbeddingFit", "fit_embeddings"):
        assert getattr(embedding, name) is getattr(hyperplanes, name)


def test_centring_decorrelates_bits(images):
    """Post-ReLU features are all positive: without the centre most bits of all images agree."""
    emb = embed_images(images, TinyNet())
    assert (emb >= 0).all()
    fit = fit_embeddings(emb, bits=256)
    raw = EmbeddingFit(centre=np.zeros(32, np.float32), planes=fit.planes, bits=256, seed=0, n_fit=0)
    share = lambda f: np.unpackbits(f.codes(emb).astype(">u8").view(np.uint8), axis=1).mean(axis=0)
    assert np.abs(share(fit) - 0.5).mean() < np.abs(share(raw) - 0.5).mean() / 2


def test_near_copy_is_close_and_a_random_image_is_not(images):
    net = TinyNet()
    fit = fit_embeddings(embed_images(images, net), bits=256)
    original = images[5]
    brighter = np.clip(original.astype(np.int16) + 4, 0, 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, original.shape, dtype=np.uint8)
    emb = embed_images(np.stack([original, brighter, noise]), net)
    codes = fit.codes(emb)
    t = threshold_for_cosine(0.9, 256)  # 37 bits; measured: the copy 7-14 bits away, noise 128-199 (6 seeds)
    assert _hamming(codes[0], codes[1])[0] <= t < _hamming(codes[0], codes[2])[0]
    cos = fit.cosine(emb[:1], emb[1:])
    assert cos[0] > 0.95 and cos[1] < 0.5


def test_hamming_estimates_the_cosine(images):
    emb = embed_images(images, TinyNet())
    fit = fit_embeddings(emb, bits=1024)
    codes = fit.codes(emb)
    i, j = np.triu_indices(len(emb), 1)
    est = _hamming(codes[i], codes[j]) / 1024
    angle = np.arccos(fit.cosine(emb[i], emb[j])) / math.pi
    assert np.abs(est - angle).mean() < 0.02  # Binomial(1024, p) noise: sd <= 0.016
    assert threshold_for_cosine(0.9, 256) == 37 and abs(cosine_for_threshold(37, 256) - 0.9) < 0.01
    for t in (0, 10, 40):
        assert threshold_for_cosine(cosine_for_threshold(t, 512), 512) == t


def test_fit_round_trip_and_refusals(images):
    emb = embed_images(images[:50], TinyNet())
    fit = fit_embeddings(emb, bits=128, seed=4, model_fingerprint="m")
    arrays, meta = fit.to_arrays()
    back = EmbeddingFit.from_arrays(arrays, meta)
    assert back.fingerprint == fit.fingerprint and back.model_fingerprint == "m"
    np.testing.assert_array_equal(back.codes(emb), fit.codes(emb))
    tampered = dict(arrays, centre=arrays["centre"] + 1e-3)
    with pytest.raises(ValueError, match="does not match its arrays.*fit it again"):
        EmbeddingFit.from_arrays(tampered, meta)
    with pytest.raises(ValueError, match="does not match"):
        EmbeddingFit.from_arrays(arrays, dict(meta, model_fingerprint="other"))
    with pytest.raises(ValueError, match=r"version 'embed/0'.*fit it again"):
        EmbeddingFit.from_arrays(arrays, dict(meta, version="embed/0"))
    with pytest.raises(ValueError, match=r"lacks \['planes'\]"):
        EmbeddingFit.from_arrays({"centre": arrays["centre"]}, meta)
    with pytest.raises(ValueError, match=r"bits=100 must be a multiple of 64"):
        fit_embeddings(emb, bits=100)
    with pytest.raises(ValueError, match=r"bits=2048 must be an int in \[64, 1024\]"):
        fit_embeddings(emb, bits=2048)
    with pytest.raises(ValueError, match=r"embeddings must have shape \(N, 32\)"):
        fit.codes(np.zeros((2, 31)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit.codes(np.full((1, 32), np.nan))


# --------------------------------------------------------------------------- embed_dataset and its sidecar


def test_sidecar_reuse_and_invalidation(tmp_path, images, caplog):
    ds = Toy(images[:120])
    net = TinyNet()
    first = embed_dataset(ds, net, cache_dir=tmp_path, progress=False)
    assert isinstance(first, EmbeddingHashes) and not first.from_cache and net.calls == 2
    assert first.hashes.shape == (120, 4) and first.valid.all() and first.sidecar_path.parent == tmp_path
    assert first.sidecar_path.name.startswith("embed-") and first.labels.tolist() == list(range(120))
    meta = first.meta
    assert (meta["method"], meta["bits"], meta["hash_size"], meta["embed_version"]) == ("embed", 256, 16,
                                                                                         EMBED_VERSION)
    assert meta["model_fingerprint"] == model_fingerprint(net) and meta["fit_fingerprint"] == first.fit.fingerprint
    np.testing.assert_array_equal(first.embeddings, embed_images(images[:120], TinyNet()))

    second = embed_dataset(ds, net, cache_dir=tmp_path, progress=False)
    assert second.from_cache and net.calls == 2  # no model call
    np.testing.assert_array_equal(second.hashes, first.hashes)
    assert second.fit.fingerprint == first.fit.fingerprint

    other_bits = embed_dataset(ds, net, cache_dir=tmp_path, bits=64, seed=1, progress=False)
    assert other_bits.from_cache and net.calls == 2 and other_bits.hashes.shape == (120,)
    assert embed_dataset(ds, net, cache_dir=tmp_path, bits=64, seed=1, progress=False).fit.fingerprint == \
        other_bits.fit.fingerprint  # the refit was stored

    assert not embed_dataset(ds, net, cache_dir=tmp_path, refresh=True, progress=False).from_cache
    weights = net.features[0].weight.detach().clone()
    with torch.no_grad():
        net.features[0].weight[0, 0, 0, 0] += 0.5
    changed = embed_dataset(ds, net, cache_dir=tmp_path, progress=False)
    assert not changed.from_cache and changed.sidecar_path != first.sidecar_path

    raw = bytearray(first.sidecar_path.read_bytes())
    raw[-5] ^= 0xFF
    first.sidecar_path.write_bytes(bytes(raw))
    calls = net.calls
    with torch.no_grad():
        net.features[0].weight.copy_(weights)
    with caplog.at_level(logging.WARNING, logger="torch_dedup.embedding"):
        again = embed_dataset(ds, net, cache_dir=tmp_path, progress=False)
    assert not again.from_cache and net.calls > calls
    assert any("ignoring embedding sidecar" in r.getMessage() and "checksum" in r.getMessage()
               for r in caplog.records)
    assert embed_dataset(ds, net, cache_dir=tmp_path, progress=False).from_cache  # rewritten
    assert embed_dataset(ds, net, cache_dir=False, progress=False).sidecar_path is None


def test_transform_and_callables_are_cached_only_when_named(tmp_path, images, caplog):
    ds = Toy(images[:20])
    net = TinyNet()
    t = torchvision.transforms.ToTensor()
    with caplog.at_level(logging.INFO, logger="torch_dedup.embedding"):
        res = embed_dataset(ds, net, transform=t, cache_dir=tmp_path, progress=False)
    assert res.sidecar_path is None and any("embed_fingerprint=" in r.getMessage() for r in caplog.records)
    named = embed_dataset(ds, net, transform=t, embed_fingerprint="to_tensor", cache_dir=tmp_path, progress=False)
    assert named.sidecar_path is not None
    assert embed_dataset(ds, net, transform=t, embed_fingerprint="to_tensor", cache_dir=tmp_path,
                         progress=False).from_cache

    def encode(x):
        return net(x) + 1

    with pytest.raises(ValueError, match=r"plain callable.*embed_fingerprint="):
        embed_dataset(ds, encode, cache_dir=tmp_path, progress=False)
    res = embed_dataset(ds, encode, embed_fingerprint="encode-v1", cache_dir=tmp_path, progress=False)
    assert not res.from_cache
    assert embed_dataset(ds, encode, embed_fingerprint="encode-v1", cache_dir=tmp_path, progress=False).from_cache


def test_against_set_is_coded_with_the_train_fit(tmp_path, images):
    net = TinyNet()
    train = embed_dataset(Toy(images[:200]), net, cache_dir=tmp_path, progress=False)
    test_images = images[200:260].copy()
    test_images[0] = np.clip(images[3].astype(np.int16) + 4, 0, 255)  # a near-copy of train item 3
    test = embed_dataset(Toy(test_images), net, fit=train.fit, cache_dir=tmp_path, progress=False)
    assert test.fit is train.fit and test.meta["fit_fingerprint"] == train.meta["fit_fingerprint"]
    np.testing.assert_array_equal(test.hashes, train.fit.codes(test.embeddings))
    # the file of the test set keeps its own fit; coding with the given one needs no model call the next time
    calls = net.calls
    assert embed_dataset(Toy(test_images), net, fit=train.fit, cache_dir=tmp_path, progress=False).from_cache
    assert net.calls == calls
    found = hamming_pairs(test.hashes, threshold_for_cosine(0.9, 256), other=train.hashes)
    assert [0, 3] in found.pairs.tolist()

    other = TinyNet(seed=1)
    with pytest.raises(ValueError, match=r"fit= was made for model .* but embed= is .*same embed="):
        embed_dataset(Toy(test_images), other, fit=train.fit, cache_dir=False, progress=False)
    small = fit_embeddings(np.ones((3, 8)), model_fingerprint=model_fingerprint(net))
    with pytest.raises(ValueError, match=r"fit= is for 8-dimensional embeddings but embed= gives 32"):
        embed_dataset(Toy(test_images), net, fit=small, cache_dir=False, progress=False)
    with pytest.raises(TypeError, match=r"fit=.*must be an EmbeddingFit"):
        embed_dataset(Toy(test_images), net, fit="train", cache_dir=False, progress=False)


def test_plan_from_embedding_codes(images):
    """The planning code takes the result as it takes phash hashes (what the lead's embed= option does)."""
    twice = np.repeat(images[:30], 2, axis=0)
    dh = embed_dataset(Toy(twice), TinyNet(), cache_dir=False, progress=False)
    plan = plan_from_hashes(dh, threshold_for_cosine(0.99, 256))
    assert plan.n == 60 and set(plan.kept_indices.tolist()) <= set(range(0, 60, 2)) and plan.n_kept <= 30
    assert plan.settings["method"] == "embed"


def test_image_folder_from_files(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    base = load_sample(40)[0]
    for k in range(40):
        cls = root / ("a" if k < 20 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        rgb = np.stack([base[k], base[k][::-1], rng.integers(0, 256, (28, 28), dtype=np.uint8)], axis=2)
        Image.fromarray(rgb).save(cls / f"{k:03d}.png")
    Image.open(root / "a" / "004.png").save(root / "b" / "zz-copy.png")
    ds = torchvision.datasets.ImageFolder(str(root))
    net = TinyNet()
    res = embed_dataset(ds, net, progress=False, batch_size=16)
    assert res.meta["source"].startswith("ImageFolder.samples") and res.valid.all()
    assert res.sidecar_path.parent == root and res.sidecar_path.name.startswith(".torch_dedup-embed-")
    assert torchvision.datasets.ImageFolder(str(root)).classes == ["a", "b"]  # no new class folder
    assert res.labels.tolist() == [t for _, t in ds.samples]
    copy = [p for p, _ in ds.samples].index(str(root / "b" / "zz-copy.png"))
    orig = [p for p, _ in ds.samples].index(str(root / "a" / "004.png"))
    assert _hamming(res.hashes[copy], res.hashes[orig])[0] == 0
    expect = embed_images([p for p, _ in ds.samples], net)
    np.testing.assert_allclose(res.embeddings, expect, rtol=1e-5, atol=1e-6)
    calls = net.calls
    assert embed_dataset(ds, net, progress=False).from_cache and net.calls == calls


def test_unreadable_items_skip_or_raise(tmp_path, images):
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            if i == 4:
                raise OSError("disk gone")
            return Image.fromarray(images[i]), 0

    with pytest.raises(ImageDecodeError, match=r"item 4.*disk gone") as info:
        embed_dataset(Items(), TinyNet(), cache_dir=False, progress=False)
    assert info.value.index == 4
    res = embed_dataset(Items(), TinyNet(), on_error="skip", fingerprint="items-v1", cache_dir=tmp_path,
                        progress=False)
    assert res.valid.tolist() == [True] * 4 + [False, True] and res.failures[0][0] == 4
    assert not res.hashes[4].any() and not res.embeddings[4].any()
    cached = embed_dataset(Items(), TinyNet(), on_error="skip", fingerprint="items-v1", cache_dir=tmp_path,
                           progress=False)
    assert cached.from_cache and cached.failures == res.failures
    with pytest.raises(ImageDecodeError, match="recorded in sidecar"):
        embed_dataset(Items(), TinyNet(), fingerprint="items-v1", cache_dir=tmp_path, progress=False)

    class Broken(Items):
        def __getitem__(self, i):
            raise OSError("gone")

    with pytest.raises(EmptyDedupError, match=r"no item was embedded.*nothing to fit"):
        embed_dataset(Broken(), TinyNet(), on_error="skip", cache_dir=False, progress=False)


def test_embed_dataset_option_errors(images):
    ds = Toy(images[:4])
    net = TinyNet()
    with pytest.raises(ValueError, match=r"on_error='ignore' must be one of 'raise', 'skip'"):
        embed_dataset(ds, net, on_error="ignore", cache_dir=False)
    with pytest.raises(ValueError, match=r"bits=96 must be a multiple of 64"):
        embed_dataset(ds, net, bits=96, cache_dir=False)
    with pytest.raises(ValueError, match=r"seed=-1 must be an int"):
        embed_dataset(ds, net, seed=-1, cache_dir=False)
    with pytest.raises(ValueError, match=r"cache_dir=3 must be a folder"):
        embed_dataset(ds, net, cache_dir=3)
