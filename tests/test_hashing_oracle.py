"""Every input kind, method and hash size against imagehash itself (the oracle)."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from torch_dedup.hashing.api import METHODS, hash_array, hash_images, to_hex
from torch_dedup.embedded import load_sample

ORACLE = {
    "ahash": imagehash.average_hash,
    "dhash": imagehash.dhash,
    "phash": imagehash.phash,
    "whash": imagehash.whash,
}
CASES = [(m, s) for m in METHODS for s in (8, 16)]


def oracle(images, method, size) -> list[str]:
    return [str(ORACLE[method](im, size)) for im in images]


@pytest.mark.parametrize("method, size", CASES)
def test_embedded_sample_stacked_and_pil(method, size):
    images = load_sample(300)[0]
    expected = oracle([Image.fromarray(a) for a in images], method, size)
    assert to_hex(hash_array(images, method, size)) == expected
    assert to_hex(hash_images([Image.fromarray(a) for a in images[:60]], method, size)) == expected[:60]


def _random_stack(rng, n, h, w, c):
    base = rng.integers(0, 256, (n, h, w) + ((c,) if c else ()), dtype=np.uint8)
    # add structure (smooth gradients, flat areas) so it is not only noise
    ramp = (np.add.outer(np.arange(h), np.arange(w)) * (255 // max(1, h + w - 2))).astype(np.uint8)
    if c:
        ramp = ramp[..., None]
    base[: n // 2] = ramp
    base[: n // 4] //= 64
    return base


@pytest.mark.parametrize("method, size", CASES)
@pytest.mark.parametrize("channels", [0, 1, 3, 4])
def test_random_stacks_rgb_rgba(method, size, channels):
    rng = np.random.default_rng(hash((method, size, channels)) % 2**32)
    for h, w in [(32, 32), (13, 47), (1, 9), (9, 1), (64, 64), (1, 1)]:
        stack = _random_stack(rng, 6, h, w, channels)
        pil = [Image.fromarray(a[..., 0] if channels == 1 else a) for a in stack]
        assert to_hex(hash_array(stack, method, size)) == oracle(pil, method, size), (h, w)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(METHODS),
    size=st.sampled_from([8, 16]),
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
    levels=st.sampled_from([2, 4, 256]),
)
def test_hypothesis_random_sizes(method, size, h, w, seed, levels):
    rng = np.random.default_rng(seed)
    stack = (rng.integers(0, levels, (3, h, w)) * (255 // (levels - 1))).astype(np.uint8)
    pil = [Image.fromarray(a) for a in stack]
    assert to_hex(hash_array(stack, method, size)) == oracle(pil, method, size)


@pytest.mark.parametrize("method, size", CASES)
def test_flat_images(method, size):
    stack = np.stack([np.full((20, 30), v, np.uint8) for v in (0, 1, 127, 254, 255)])
    pil = [Image.fromarray(a) for a in stack]
    assert to_hex(hash_array(stack, method, size)) == oracle(pil, method, size)


def _mode_images():
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 41, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (37, 41, 4), dtype=np.uint8))
    p_t = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p_t.info["transparency"] = 3
    i16 = Image.fromarray((rng.integers(0, 65536, (33, 35))).astype(np.uint16))
    return {
        "L": rgb.convert("L"),
        "RGB": rgb,
        "RGBA": rgba,
        "P": rgb.convert("P"),
        "P+transparency": p_t,
        "CMYK": rgb.convert("CMYK"),
        "I;16": i16,
        "1": rgb.convert("1"),
        "LA": rgba.convert("LA"),
        "I": rgb.convert("I"),
        "F": rgb.convert("F"),
        "YCbCr": rgb.convert("YCbCr"),
    }


@pytest.mark.parametrize("method, size", CASES)
def test_every_pil_mode(method, size):
    images = _mode_images()
    got = to_hex(hash_images(list(images.values()), method, size))
    assert dict(zip(images, got)) == dict(zip(images, oracle(images.values(), method, size)))


@pytest.mark.parametrize("method, size", CASES)
def test_files_png_jpeg(tmp_path, method, size):
    images = load_sample(12)[0]
    paths = []
    for i, a in enumerate(images):
        rgb = np.stack([a, a[::-1], a.T], -1)
        im = Image.fromarray(rgb).resize((50 + i, 40 + 2 * i))
        p = tmp_path / (f"{i}.png" if i % 2 else f"{i}.jpg")
        im.save(p)
        paths.append(p if i % 3 else str(p))
    expected = []
    for p in paths:
        with Image.open(p) as im:
            expected.append(str(ORACLE[method](im, size)))
    assert to_hex(hash_images(paths, method, size)) == expected


def test_files_with_workers(tmp_path):
    images = load_sample(30)[0]
    paths = []
    for i, a in enumerate(images):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(a).resize((90, 70)).save(p)
        paths.append(p)
    for method in ("phash", "whash"):
        serial = hash_images(paths, method, 8)
        pooled = hash_images(paths, method, 8, workers=2, batch_size=7)
        np.testing.assert_array_equal(serial.hashes, pooled.hashes)
        with Image.open(paths[5]) as im:
            assert to_hex(pooled)[5] == str(ORACLE[method](im, 8))


def test_exif_orientation_is_ignored(tmp_path):
    a = load_sample(1)[0][0]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    p = tmp_path / "rotated.jpg"
    Image.fromarray(a).save(p, exif=exif)
    with Image.open(p) as im:
        expected = str(imagehash.phash(im))
    assert to_hex(hash_images([p]))[0] == expected


@pytest.mark.parametrize("method, size", [("phash", 8), ("dhash", 16), ("whash", 8), ("ahash", 8)])
def test_torch_tensors(method, size):
    torch = pytest.importorskip("torch")
    from torchvision.transforms.functional import to_pil_image

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (5, 3, 30, 26), dtype=torch.uint8, generator=g)
    fl = torch.rand((5, 3, 30, 26), generator=g)
    gray = torch.rand((5, 1, 30, 26), generator=g)
    for stack in (u8, fl, gray):
        expected = oracle([to_pil_image(t) for t in stack], method, size)
        assert to_hex(hash_images(stack, method, size)) == expected  # stacked (N, C, H, W)
        assert to_hex(hash_images(list(stack), method, size)) == expected  # one by one
    two_d = fl[:, 0]
    assert to_hex(hash_images(list(two_d), method, size)) == oracle([to_pil_image(t) for t in two_d], method, size)


def test_mixed_sequence_keeps_order(tmp_path):
    images = load_sample(8)[0]
    p = tmp_path / "x.png"
    Image.fromarray(images[3]).save(p)
    items = [images[0], Image.fromarray(images[1]), images[2][:, :, None], p, images[4][:20], Image.fromarray(images[5])]
    expected = oracle(
        [Image.fromarray(images[0]), Image.fromarray(images[1]), Image.fromarray(images[2]),
         Image.fromarray(images[3]), Image.fromarray(images[4][:20]), Image.fromarray(images[5])],
        "phash", 8,
    )
    assert to_hex(hash_images(items, "phash", 8, batch_size=4)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("method, size", CASES)
def test_cifar10_jpegs(cifar10_jpg, method, size):
    paths = sorted((cifar10_jpg / "train").rglob("*.jpg"))[::20][:2500]
    assert paths, "no CIFAR-10 JPEGs found"
    expected = []
    for p in paths:
        with Image.open(p) as im:
            expected.append(str(ORACLE[method](im, size)))
    assert to_hex(hash_images(paths, method, size)) == expected
