"""The Pillow-exact grayscale conversion and Lanczos resize, against Pillow itself."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from torch_dedup.hashing._methods import (
    _phash_exact,
    phash_bits,
    phash_bits_blas,
    whash_bits,
)
from torch_dedup.hashing._resample import (
    fused_gray_resize,
    lanczos_matrix,
    pillow_pass_order,
    resize_stack,
    rgb_to_l,
)


def pil_resize(stack, width, height):
    return np.stack([np.asarray(Image.fromarray(a).resize((width, height), Image.Resampling.LANCZOS)) for a in stack])


def test_many_random_sizes():
    rng = np.random.default_rng(0)
    for trial in range(400):
        h, w = rng.integers(1, 201, 2)
        height, width = rng.integers(1, 201, 2)
        if trial % 4 == 0:  # one axis unchanged
            height = h
        elif trial % 4 == 1:
            width = w
        if trial % 9 == 0:  # elongated 1xN / Nx1
            h, height = 1, int(rng.integers(1, 4))
        stack = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
        if trial % 3 == 0:
            stack[1] = np.clip(np.add.outer(np.arange(h), np.arange(w)) * 2, 0, 255)
        np.testing.assert_array_equal(resize_stack(stack, width, height), pil_resize(stack, width, height),
                                      err_msg=f"{h}x{w} -> {height}x{width}")


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 120), w=st.integers(1, 120), height=st.integers(1, 70), width=st.integers(1, 70),
       seed=st.integers(0, 2**32 - 1))
def test_hypothesis_resize(h, w, height, width, seed):
    stack = np.random.default_rng(seed).integers(0, 256, (2, h, w), dtype=np.uint8)
    np.testing.assert_array_equal(resize_stack(stack, width, height), pil_resize(stack, width, height))


def test_extremes_saturate_like_pillow():
    # checkerboards of 0/255 drive Lanczos overshoot into the clip range
    board = (np.indices((40, 40)).sum(0) % 2 * 255).astype(np.uint8)
    stripes = np.tile(np.array([0, 255, 255, 0], np.uint8), (40, 10))
    stack = np.stack([board, stripes, 255 - board])
    for width, height in [(8, 8), (9, 8), (32, 32), (64, 64), (13, 71)]:
        np.testing.assert_array_equal(resize_stack(stack, width, height), pil_resize(stack, width, height))


def test_pass_order_is_probed():
    assert pillow_pass_order() in ("classic", "pillow13")  # "pil" means the emulation is off


def test_lanczos_rows_sum_to_one_in_fixed_point():
    for n_in, n_out in [(32, 8), (28, 9), (8, 32), (500, 32)]:
        mat = lanczos_matrix(n_in, n_out)
        assert np.all(np.abs(mat.sum(axis=1) - (1 << 22)) <= n_in)
        assert not mat.flags.writeable


def test_rgb_to_l_every_value_pair():
    rg = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1)
    for b in (0, 1, 77, 128, 254, 255):
        rgb = np.concatenate([rg, np.full(rg.shape[:2] + (1,), b)], -1).astype(np.uint8)
        np.testing.assert_array_equal(rgb_to_l(rgb), np.asarray(Image.fromarray(rgb).convert("L")))
    rgba = np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_l(rgba), np.asarray(Image.fromarray(rgba).convert("L")))


def test_phash_margin_fallback_is_exact_and_taken_on_ties():
    flat = np.full((3, 32, 32), 200, np.uint8)
    sym = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    sym = np.stack([sym, sym.T, np.minimum(sym, sym.T)])
    stack = np.concatenate([flat, sym])
    bits, fallbacks = phash_bits(stack, 8)
    assert fallbacks >= 3  # flat images tie at the median
    expected = np.stack([_phash_exact(a, 8) for a in stack])
    np.testing.assert_array_equal(bits, expected)


def test_whash_tie_fallback_counts():
    stack = np.zeros((2, 32, 32), np.uint8)
    stack[1, :16] = 255
    bits, fallbacks = whash_bits(stack, 8)
    assert fallbacks == 1  # the flat image ties; the half-white one does not
    assert bits[1].tolist() == [True] * 32 + [False] * 32


def test_phash_kernel_path_equals_blas_reference():
    from torch_dedup.embedded import load_sample

    images = load_sample(400)[0]
    for size, side in ((8, 32), (16, 64)):
        pixels = resize_stack(images, side, side)
        np.testing.assert_array_equal(phash_bits(pixels, size)[0], phash_bits_blas(pixels, size)[0])


# --------------------------------------------------------------------- fused numba kernels


def _as_pil_gray(stack4):
    c = stack4.shape[3]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    return [Image.fromarray(a[..., 0] if c == 1 else a, mode).convert("L") for a in stack4]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_fused_gray_resize_equals_numpy_emulation_and_pillow(channels):
    from torch_dedup.hashing._kernels import MODE_PIXELS

    rng = np.random.default_rng(channels)
    # square, elongated both ways (both pass orders), up and down, one axis unchanged
    for h, w, height, width in [(32, 32, 8, 8), (32, 32, 8, 9), (32, 32, 32, 32), (28, 28, 32, 32),
                                (60, 13, 7, 11), (13, 60, 11, 7), (46, 46, 26, 44), (1, 9, 8, 8),
                                (9, 1, 9, 8), (40, 17, 40, 5), (17, 40, 5, 40), (71, 3, 64, 64)]:
        stack = rng.integers(0, 256, (3, h, w, channels), dtype=np.uint8)
        stack[0] = (np.indices((h, w)).sum(0) % 2 * 255)[..., None]  # saturating checkerboard
        got = fused_gray_resize(stack, width, height, MODE_PIXELS)
        gray = np.stack([np.asarray(g) for g in _as_pil_gray(stack)])
        np.testing.assert_array_equal(got, resize_stack(gray, width, height), err_msg=f"{h}x{w}->{height}x{width}")
        np.testing.assert_array_equal(got, pil_resize(gray, width, height), err_msg=f"{h}x{w}->{height}x{width}")


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80), size=st.integers(2, 17), seed=st.integers(0, 2**32 - 1),
       channels=st.sampled_from([1, 3, 4]))
def test_fused_ahash_dhash_equal_numpy_methods(h, w, size, seed, channels):
    from torch_dedup.hashing._kernels import MODE_AHASH, MODE_DHASH
    from torch_dedup.hashing._methods import ahash_bits, dhash_bits
    from torch_dedup.hashing._pack import pack_bits, packed_words

    stack = np.random.default_rng(seed).integers(0, 256, (4, h, w, channels), dtype=np.uint8)
    stack[1] //= 64  # few levels: many ties in the comparisons
    gray = np.stack([np.asarray(g) for g in _as_pil_gray(stack)])
    for mode, (tw, th), ref in ((MODE_AHASH, (size, size), ahash_bits), (MODE_DHASH, (size + 1, size), dhash_bits)):
        words = np.full((4, packed_words(size * size)), 7, dtype=np.uint64)
        fused_gray_resize(stack, tw, th, mode, words)
        np.testing.assert_array_equal(words, pack_bits(ref(pil_resize(gray, tw, th))))


def test_parallel_kernels_equal_serial():
    from torch_dedup.hashing._kernels import MODE_AHASH, MODE_DHASH, MODE_PIXELS
    from torch_dedup.hashing._methods import phash_words
    from torch_dedup.embedded import load_sample

    images = load_sample(1500)[0]
    rgb = np.stack([images, images[:, ::-1], images[:, :, ::-1]], -1)
    for mode, tw, th in ((MODE_AHASH, 8, 8), (MODE_DHASH, 9, 8)):
        serial = np.empty((len(rgb), 1), np.uint64)
        parallel = np.empty((len(rgb), 1), np.uint64)
        fused_gray_resize(rgb, tw, th, mode, serial)
        fused_gray_resize(rgb, tw, th, mode, parallel, parallel=True)
        np.testing.assert_array_equal(serial, parallel)
    small = fused_gray_resize(rgb, 32, 32, MODE_PIXELS, parallel=True)
    np.testing.assert_array_equal(small, fused_gray_resize(rgb, 32, 32, MODE_PIXELS))
    np.testing.assert_array_equal(phash_words(small, 8, parallel=True)[0], phash_words(small, 8)[0])


def test_phash_low_kernel_matches_scipy_dct():
    import scipy.fftpack

    from torch_dedup.hashing._kernels import phash_low_kernel
    from torch_dedup.hashing._methods import PHASH_REL_TOL, _dct_rows

    rng = np.random.default_rng(3)
    for size in (2, 8, 16):
        pixels = rng.integers(0, 256, (20, 4 * size, 4 * size), dtype=np.uint8)
        low = np.empty((20, size * size))
        tol = np.empty(20)
        phash_low_kernel(pixels, _dct_rows(4 * size, size), PHASH_REL_TOL, low, tol)
        for i, x in enumerate(pixels):
            ref = scipy.fftpack.dct(scipy.fftpack.dct(x.astype(float), axis=0), axis=1)[:size, :size]
            # far inside the certified margin (the margin is 1e-9 of the bound 4 * sum)
            assert np.max(np.abs(low[i] - ref.ravel())) < 1e-12 * 4 * x.sum()
            assert tol[i] == PHASH_REL_TOL * (4.0 * int(x.sum()) + 1.0)
