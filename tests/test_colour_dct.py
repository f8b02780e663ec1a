"""Whitened colour DCT codes: deterministic features from every input kind, a fit that stores
and reloads bit for bit, one space for train and test, exact search, and near-duplicate sanity."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
from naive import brute_pairs
from PIL import Image, ImageEnhance

from torch_dedup.embedded import load_sample
from torch_dedup.errors import ImageDecodeError
from torch_dedup.hamming import hamming_pairs
from torch_dedup.hashing import (
    COLOUR_DCT_DIMS,
    ColourDctFit,
    colour_dct_features,
    cosine_for_threshold,
    fit_colour_dct,
    fit_colour_dct_images,
    threshold_for_cosine,
)
from torch_dedup.hashing._pack import unpack_bits

ROOT = Path(__file__).resolve().parents[1]


def _colour_images(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth random colour pictures (low-frequency colour fields plus a few blobs), uint8 (n, s, s, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), dtype=np.float64)
    for i in range(n):
        img = np.zeros((size, size, 3))
        for _ in range(6):
            fy, fx = rng.uniform(0.5, 4, 2)
            phase = rng.uniform(0, 2 * np.pi, 2)
            wave = np.cos(2 * np.pi * fy * yy + phase[0]) * np.cos(2 * np.pi * fx * xx + phase[1])
            img += wave[..., None] * rng.normal(0, 40, 3)
        for _ in range(3):
            cy, cx, r = rng.uniform(0.1, 0.9, 2).tolist() + [rng.uniform(0.05, 0.25)]
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            img[mask] += rng.normal(0, 60, 3)
        out[i] = img + rng.uniform(60, 190, 3)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _reference(img: np.ndarray) -> np.ndarray:
    """Naive float64 features of a 32x32 RGB image: YCbCr, scipy's orthonormal DCT-II, low blocks without DC."""
    p = img.astype(np.float64)
    r, g, b = p[..., 0], p[..., 1], p[..., 2]
    ycc = [(19595 * r + 38470 * g + 7471 * b) / 65536, (-11059 * r - 21709 * g + 32768 * b) / 65536,
           (32768 * r - 27439 * g - 5329 * b) / 65536]
    out = []
    for plane, k in zip(ycc, (8, 6, 6)):
        out.append(scipy.fft.dctn(plane, type=2, norm="ortho")[:k, :k].ravel()[1:])
    return np.concatenate(out)


@pytest.fixture(scope="module")
def colour():
    return _colour_images(40, size=32)


# --------------------------------------------------------------------------- features


def test_features_match_a_naive_float64_reference(colour):
    f = colour_dct_features(colour)
    assert f.dtype == np.float32 and f.shape == (len(colour), COLOUR_DCT_DIMS) == (40, 133)
    ref = np.stack([_reference(a) for a in colour])
    np.testing.assert_allclose(f, ref, rtol=0, atol=2e-3 * np.abs(ref).max())


def test_array_pil_file_and_batch_give_identical_features(colour, tmp_path):
    big = np.stack([np.asarray(Image.fromarray(a).resize((77, 61), Image.Resampling.BICUBIC)) for a in colour[:10]])
    for stack in (colour, big):
        f = colour_dct_features(stack)
        paths = []
        for k, a in enumerate(stack):
            p = tmp_path / f"{stack.shape[1]}_{k}.png"
            Image.fromarray(a).save(p)
            paths.append(p if k % 2 else str(p))
        assert np.array_equal(colour_dct_features([Image.fromarray(a) for a in stack]), f)
        assert np.array_equal(colour_dct_features(paths), f)
        assert np.array_equal(colour_dct_features(list(stack)), f)
        parts = [colour_dct_features(stack[k:k + 3]) for k in range(0, len(stack), 3)]
        assert np.array_equal(np.concatenate(parts), f)
        assert np.array_equal(colour_dct_features(stack[::-1])[::-1], f)


def test_other_modes_and_tensors_read_like_their_pil_conversion(colour):
    import torch

    rgba = np.concatenate([colour[:5], np.full((5, 32, 32, 1), 7, np.uint8)], axis=3)
    f = colour_dct_features(colour[:5])
    assert np.array_equal(colour_dct_features(rgba), f)
    assert np.array_equal(colour_dct_features([Image.fromarray(a, "RGBA") for a in rgba]), f)
    assert np.array_equal(colour_dct_features(torch.from_numpy(colour[:5]).permute(0, 3, 1, 2)), f)
    pal = [Image.fromarray(a).quantize(64) for a in colour[:5]]
    assert np.array_equal(colour_dct_features(pal), colour_dct_features([p.convert("RGB") for p in pal]))


def test_grey_images_have_zero_chroma_whichever_way_they_come(colour):
    grey, _ = load_sample(12)
    f = colour_dct_features(grey)
    assert not f[:, 63:].any() and f[:, :63].any()
    assert np.array_equal(colour_dct_features(np.repeat(grey[..., None], 3, axis=3)), f)
    assert np.array_equal(colour_dct_features([Image.fromarray(a) for a in grey]), f)
    # a greyscale copy of a colour image: chroma gone, luma kept
    g = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in colour[:4]])
    assert not colour_dct_features(g)[:, 63:].any()


def test_bad_inputs_are_refused_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="single"):
        colour_dct_features(Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="dtype"):
        colour_dct_features(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="unsupported type"):
        colour_dct_features([3])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        colour_dct_features([str(bad)])
    assert colour_dct_features(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 133)


# --------------------------------------------------------------------------- fit and codes


def _fit_and_codes(n: int = 300):
    x, _ = load_sample(n)
    f = colour_dct_features(x)
    fit = fit_colour_dct(f, bits=256, seed=3)
    return f, fit, fit.codes(f)


def test_whiten_is_the_signed_square_root_the_codes_kernel_projects():
    f, fit, codes = _fit_and_codes(300)
    w = fit.whiten(f)
    assert w.dtype == np.float32
    d = f - fit.centre  # float32, as in the kernel
    assert np.array_equal(w, np.copysign(np.sqrt(np.abs(d)), d) * fit.scale)
    # a float32 projection of whiten() in the kernel's order gives the kernel's bits, wherever
    # the sum is not within rounding of zero
    proj = w.astype(np.float64) @ fit.planes.astype(np.float64)
    clear = np.abs(proj) > 1e-4 * np.abs(proj).max()
    assert np.array_equal(unpack_bits(codes, 256)[clear], proj[clear] > 0)


def test_codes_are_sign_bits_of_the_whitened_projection():
    f, fit, codes = _fit_and_codes(200)
    assert codes.dtype == np.uint64 and codes.shape == (200, 4)
    d = f.astype(np.float64) - fit.centre
    proj = (np.sign(d) * np.sqrt(np.abs(d)) * fit.scale) @ fit.planes.astype(np.float64)
    bits = unpack_bits(codes, 256)
    clear = np.abs(proj) > 1e-3 * np.abs(proj).max()  # float32 and float64 agree away from zero
    assert np.array_equal(bits[clear], proj[clear] > 0)
    # bit j of the code is column j: the first bit is the MSB of word 0
    assert np.array_equal(bits, (codes[:, :, None] >> np.arange(63, -1, -1, dtype=np.uint64) & 1).reshape(200, 256) == 1)


def test_64_bit_codes_are_one_word_like_every_64_bit_hash():
    x, _ = load_sample(50)
    f = colour_dct_features(x)
    codes = fit_colour_dct(f, bits=64).codes(f)
    assert codes.shape == (50,) and codes.dtype == np.uint64


def test_codes_do_not_depend_on_the_batch_or_threads():
    x, _ = load_sample(3000)
    f = colour_dct_features(x)  # long enough for the parallel kernels
    fit = fit_colour_dct(f)
    codes = fit.codes(f)
    parts = np.concatenate([fit.codes(f[k:k + 7]) for k in range(0, 3000, 7)])
    assert np.array_equal(parts, codes)
    assert np.array_equal(colour_dct_features(x[:7]), f[:7])


def test_fit_round_trips_through_plain_arrays_and_json_bit_for_bit(tmp_path):
    f, fit, codes = _fit_and_codes()
    arrays, meta = fit.to_arrays()
    assert set(arrays) == {"centre", "scale", "planes"} and all(isinstance(a, np.ndarray) for a in arrays.values())
    path = tmp_path / "fit.npz"
    np.savez(path, **arrays)
    text = json.dumps(meta)
    with np.load(path, allow_pickle=False) as z:
        again = ColourDctFit.from_arrays({k: z[k] for k in z.files}, json.loads(text))
    assert again.fingerprint == fit.fingerprint
    assert np.array_equal(again.codes(f), codes)


def test_an_edited_or_foreign_fit_is_refused():
    _, fit, _ = _fit_and_codes(100)
    arrays, meta = fit.to_arrays()
    arrays["scale"][5] *= 1.0001
    with pytest.raises(ValueError, match="fingerprint"):
        ColourDctFit.from_arrays(arrays, meta)
    arrays, meta = fit.to_arrays()
    with pytest.raises(ValueError, match="version"):
        ColourDctFit.from_arrays(arrays, dict(meta, version="colour_dct/0"))
    with pytest.raises(ValueError, match="lacks"):
        ColourDctFit.from_arrays({"centre": arrays["centre"]}, meta)
    assert fit.centre.flags.writeable is False


@pytest.mark.parametrize("kwargs,match", [({"bits": 100}, "multiple of 64"), ({"bits": 2048}, "bits"),
                                          ({"power": -1}, "power"), ({"seed": -1}, "seed"),
                                          ({"chroma_weight": -0.5}, "chroma_weight")])
def test_fit_arguments_are_checked(kwargs, match):
    f = colour_dct_features(load_sample(10)[0])
    with pytest.raises(ValueError, match=match):
        fit_colour_dct(f, **kwargs)
    with pytest.raises(ValueError, match=r"\(N, 133\)"):
        fit_colour_dct(f[:, :100])


def test_fit_is_deterministic_and_guards_constant_coefficients():
    grey, _ = load_sample(500)
    f = colour_dct_features(grey)
    a, b = fit_colour_dct(f), fit_colour_dct(f.copy())
    assert a.fingerprint == b.fingerprint
    # chroma never varies in a grey dataset: it gets the typical weight, finite and not enormous
    assert np.isfinite(a.scale).all() and a.scale[63:].max() <= a.scale[:63].max()
    assert fit_colour_dct(f, seed=1).fingerprint != a.fingerprint


def test_chroma_weight_scales_only_the_chroma_and_zero_means_luma_only(colour):
    f = colour_dct_features(colour)
    one, half, zero = (fit_colour_dct(f, chroma_weight=w) for w in (1.0, 0.5, 0.0))
    assert np.array_equal(half.scale[:63], one.scale[:63])
    assert np.allclose(half.scale[63:], 0.5 * one.scale[63:])
    assert half.fingerprint != one.fingerprint and half.to_arrays()[1]["chroma_weight"] == 0.5
    g = f.copy()
    g[:, 63:] = 0  # the chroma of a greyscale copy
    assert np.array_equal(zero.codes(g), zero.codes(f))


def test_a_subprocess_gives_identical_features_and_codes(colour, tmp_path):
    np.save(tmp_path / "x.npy", colour)
    f = colour_dct_features(colour)
    fit = fit_colour_dct(f, bits=128, seed=7)
    script = (
        "import sys, numpy as np\n"
        "from torch_dedup.hashing import colour_dct_features, fit_colour_dct\n"
        "x = np.load(sys.argv[1]); f = colour_dct_features(x)\n"
        "fit = fit_colour_dct(f, bits=128, seed=7)\n"
        "np.save(sys.argv[2], f); np.save(sys.argv[3], fit.codes(f)); print(fit.fingerprint)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy"), str(tmp_path / "f.npy"),
                          str(tmp_path / "c.npy")], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"NUMBA_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert np.array_equal(np.load(tmp_path / "f.npy"), f)
    assert np.array_equal(np.load(tmp_path / "c.npy"), fit.codes(f))
    assert out.stdout.strip() == fit.fingerprint


# --------------------------------------------------------------------------- one space, exact search


def test_a_fit_on_train_puts_test_in_the_same_space():
    x, _ = load_sample(2000)
    train, test = x[:1500].copy(), x[1500:]
    train[[10, 20, 30]] = test[[0, 1, 2]]  # test images copied into train
    fit = fit_colour_dct(colour_dct_features(train))
    ctrain, ctest = fit.codes(colour_dct_features(train)), fit.codes(colour_dct_features(test))
    res = hamming_pairs(ctrain, 0, other=ctest)
    found = {(int(i), int(j)) for i, j in res.pairs}
    assert {(10, 0), (20, 1), (30, 2)} <= found


def test_hamming_search_on_codes_equals_brute_force_popcount():
    f, fit, codes = _fit_and_codes(400)
    for t in (0, 20, 60):
        res = hamming_pairs(codes, t)
        pairs, dist = brute_pairs(codes, t)
        assert np.array_equal(res.pairs, pairs) and np.array_equal(res.distances, dist)
    res = hamming_pairs(codes[:150], 40, other=codes[150:])
    pairs, dist = brute_pairs(codes[:150], 40, codes[150:])
    assert np.array_equal(res.pairs, pairs) and np.array_equal(res.distances, dist)


def test_threshold_and_cosine_helpers_agree_with_the_codes():
    assert threshold_for_cosine(1.0, 256) == 0 and threshold_for_cosine(-1.0, 256) == 256
    assert threshold_for_cosine(0.0, 256) == 128
    for t in range(0, 257, 16):
        assert threshold_for_cosine(cosine_for_threshold(t, 256), 256) == t
    assert threshold_for_cosine(0.9, 256, z=3) > threshold_for_cosine(0.9, 256)
    with pytest.raises(ValueError, match="cos"):
        threshold_for_cosine(1.5, 256)
    # Hamming / bits estimates angle / pi: on 1024 bits, within a few standard deviations
    f, _, _ = _fit_and_codes(300)
    fit = fit_colour_dct(f, bits=1024)
    codes = fit.codes(f)
    i, j = np.arange(0, 150), np.arange(150, 300)
    ham = np.unpackbits((codes[i] ^ codes[j]).view(np.uint8), axis=1).sum(axis=1)
    p = np.arccos(fit.cosine(f[i], f[j])) / np.pi
    z = (ham.astype(np.float64) - 1024 * p) / np.sqrt(1024 * p * (1 - p))  # Binomial(1024, p) standardised
    assert abs(z.mean()) < 0.5 and 0.5 < z.std() < 1.6, (z.mean(), z.std())


def test_cosine_rechecks_pairs_and_is_one_for_identical_rows():
    f, fit, _ = _fit_and_codes(50)
    assert np.allclose(fit.cosine(f, f), 1.0)
    c = fit.cosine(f[:-1], f[1:])
    assert c.shape == (49,) and (c < 1).all() and (c >= -1).all()
    assert fit.cosine(f[0], f).shape == (50,)


# --------------------------------------------------------------------------- near-duplicate sanity


def _jpeg(a: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(Image.fromarray(a).mode))


def _shift(a: np.ndarray, px: int) -> np.ndarray:
    return np.concatenate([a[:, px:], a[:, -px:][:, ::-1]], axis=1)


def _edits(a: np.ndarray) -> dict[str, np.ndarray]:
    im = Image.fromarray(a)
    out = {"jpeg30": _jpeg(a, 30), "shift2": _shift(a, 2),
           "bright": np.asarray(ImageEnhance.Brightness(im).enhance(1.2))}
    if a.ndim == 3:
        out["grey"] = np.repeat(np.asarray(im.convert("L"))[..., None], 3, axis=2)
    return out


def _rank_of_copies(base: np.ndarray, edited: np.ndarray, fit: ColourDctFit) -> np.ndarray:
    """For each base image, how many *other* base images are at least as close (Hamming) as its edited copy."""
    cb, ce = fit.codes(colour_dct_features(base)), fit.codes(colour_dct_features(edited))
    d_copy = np.unpackbits((cb ^ ce).view(np.uint8).reshape(len(cb), -1), axis=1).sum(axis=1)
    x = cb[:, None, :] ^ cb[None, :, :]
    d_all = np.unpackbits(x.view(np.uint8).reshape(len(cb), len(cb), -1), axis=2).sum(axis=2)
    np.fill_diagonal(d_all, 10**6)
    return (d_all <= d_copy[:, None]).sum(axis=1)


def test_edited_fashion_mnist_copies_are_closer_than_unrelated_images():
    x, _ = load_sample(600)
    fit = fit_colour_dct(colour_dct_features(x))
    base = x[:200]
    for name in ("jpeg30", "bright"):
        edited = np.stack([_edits(a)[name] for a in base])
        ranks = _rank_of_copies(base, edited, fit)
        assert (ranks == 0).mean() >= 0.95 and np.quantile(ranks, 0.95) <= 2, name
    # A shift moves a centred 28 px garment a lot (a 2 px one is 7 % of the image, and every
    # global signal loses most copies then: phash 64 and 256 too); 1 px must still stay near the top.
    ranks = _rank_of_copies(base, np.stack([_shift(a, 1) for a in base]), fit)
    assert np.median(ranks) <= 3 and (ranks == 0).mean() >= 0.35, (np.median(ranks), (ranks == 0).mean())


def test_edited_colour_copies_including_greyscale_are_closer_than_unrelated_images():
    imgs = _colour_images(300, size=48, seed=1)
    fit = fit_colour_dct(colour_dct_features(imgs))
    base = imgs[:150]
    for name in ("jpeg30", "shift2", "bright", "grey"):
        edited = np.stack([_edits(a)[name] for a in base])
        ranks = _rank_of_copies(base, edited, fit)
        assert (ranks == 0).mean() >= 0.8, (name, (ranks == 0).mean())
        assert np.quantile(ranks, 0.9) <= 5, (name, np.quantile(ranks, 0.9))


@pytest.mark.slow
def test_cifar10_jpeg_copies_are_found_across_train_and_test(cifar10_jpg):
    paths = sorted((cifar10_jpg / "train").rglob("*.jpg"))[::25][:2000]
    f = colour_dct_features(paths)
    fit = fit_colour_dct(f)
    base = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[:300]])
    for name in ("jpeg30", "shift2", "bright", "grey"):
        edited = np.stack([_edits(a)[name] for a in base])
        ranks = _rank_of_copies(base, edited, fit)
        assert np.median(ranks) == 0 and (ranks == 0).mean() >= 0.7, (name, (ranks == 0).mean())
    # the same files through Pillow images and a stacked array: the same features
    assert np.array_equal(colour_dct_features(base), f[:300])


# --------------------------------------------------------------------------- fit from images


def _augmented_copy(a: np.ndarray, k: int) -> np.ndarray:
    """One light edit of a colour image, by kind ``k``: a re-encode, a brightness change, greyscale."""
    im = Image.fromarray(a)
    if k % 3 == 0:
        return _jpeg(a, 50)
    if k % 3 == 1:
        return np.asarray(ImageEnhance.Brightness(im).enhance(1.15))
    return np.repeat(np.asarray(im.convert("L"))[..., None], 3, axis=2)


def test_fit_from_images_equals_the_fit_on_their_features_for_every_input_kind(tmp_path):
    imgs = _colour_images(60, size=40, seed=2)
    fit = fit_colour_dct_images(imgs, bits=128, seed=5)
    assert fit.fingerprint == fit_colour_dct(colour_dct_features(imgs), bits=128, seed=5).fingerprint
    assert (fit.bits, fit.words, fit.seed, fit.n_fit) == (128, 2, 5, 60)
    paths = []
    for i, a in enumerate(imgs):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    assert fit_colour_dct_images(paths, bits=128, seed=5).fingerprint == fit.fingerprint
    assert fit_colour_dct_images([Image.fromarray(a) for a in imgs], bits=128, seed=5).fingerprint == fit.fingerprint
    assert fit_colour_dct_images(imgs, bits=128, seed=6).fingerprint != fit.fingerprint


def test_fit_from_images_is_the_same_in_another_process_and_round_trips(tmp_path):
    imgs = _colour_images(80, size=32, seed=3)
    np.save(tmp_path / "x.npy", imgs)
    fit = fit_colour_dct_images(imgs, bits=192, seed=11)
    script = (
        "import sys, numpy as np\n"
        "from torch_dedup.hashing import fit_colour_dct_images\n"
        "print(fit_colour_dct_images(np.load(sys.argv[1]), bits=192, seed=11).fingerprint)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy")], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={"NUMBA_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == fit.fingerprint
    arrays, meta = fit.to_arrays()
    assert meta["transform"] == "signed_sqrt" and meta["version"] == "colour_dct/2"
    again = ColourDctFit.from_arrays({k: v.copy() for k, v in arrays.items()}, json.loads(json.dumps(meta)))
    f = colour_dct_features(imgs)
    assert again.fingerprint == fit.fingerprint and np.array_equal(again.codes(f), fit.codes(f))
    assert np.array_equal(again.whiten(f), fit.whiten(f))
    for key in ("power", "chroma_weight", "seed"):
        with pytest.raises(ValueError, match="fingerprint .* does not match"):
            ColourDctFit.from_arrays(arrays, dict(meta, **{key: meta[key] + 1}))
    with pytest.raises(ValueError, match="version 'colour_dct/1'.*refit"):
        ColourDctFit.from_arrays(arrays, dict(meta, version="colour_dct/1"))


def test_an_augmented_copy_is_closer_than_a_random_image():
    imgs = _colour_images(400, size=32, seed=4)
    fit = fit_colour_dct_images(imgs)
    base = imgs[:120]
    copies = np.stack([_augmented_copy(a, k) for k, a in enumerate(base)])
    fb, fc = colour_dct_features(base), colour_dct_features(copies)
    own = fit.cosine(fb, fc)
    other = fit.cosine(fb, np.roll(fc, 1, axis=0))  # each image against another image's copy
    assert (own > other).mean() >= 0.95, (own > other).mean()
    ranks = _rank_of_copies(base, copies, fit)
    assert (ranks == 0).mean() >= 0.8, (ranks == 0).mean()


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 100}, r"bits=100 must be a multiple of 64 in \[64, 1024\]"),
    ({"bits": 2048}, "bits"),
    ({"bits": "256"}, "bits"),
    ({"seed": -1}, "seed"),
])
def test_fit_from_images_arguments_are_checked_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_colour_dct_images(_colour_images(3, size=32), **kwargs)


def test_fit_from_images_refuses_empty_or_single_inputs_with_the_fix():
    with pytest.raises(ValueError, match="images is empty.*at least one image"):
        fit_colour_dct_images([])
    with pytest.raises(ValueError, match=r"wrap it in a list"):
        fit_colour_dct_images(Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match=r"images\[1\] has unsupported type int"):
        fit_colour_dct_images([np.zeros((8, 8, 3), np.uint8), 3])
