"""Fuzzing with hypothesis: random and mutated image bytes fed to the decoders raise only
``ImageDecodeError`` (never another exception, never a crash); random arrays, shapes, dtypes and
thresholds fed to the kernels raise only ``ValueError`` for bad ones and are exact for good ones.
(A coverage-guided atheris harness lives in tests/fuzz/, not run by pytest.)
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from badimages import BAD, ODD, good_image_bytes
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from naive import brute_pairs
from PIL import Image

from torch_dedup.errors import ImageDecodeError
from torch_dedup.hamming.cluster import find_duplicates, sweep_thresholds
from torch_dedup.hamming.search import hamming_pairs
from torch_dedup.hashing.api import METHODS, hash_array, hash_images


def _seeds() -> list[bytes]:
    seeds = [make() for _, make in list(ODD.values()) + list(BAD.values())]
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO"):
        seeds.append(good_image_bytes(3, fmt) if fmt != "ICO" else
                     _encode(Image.open(io.BytesIO(good_image_bytes(3))), "ICO"))
    return seeds


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


SEEDS = _seeds()


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif op == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def _only_decode_errors(tmp_path, data: bytes, suffix: str) -> str:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        res = hash_images([path], "phash", on_error="raise", workers=0)
    except ImageDecodeError as exc:
        assert exc.source == str(path) and exc.reason
        skipped = hash_images([path], "phash", on_error="skip", workers=0)  # skip agrees with raise
        assert not skipped.valid[0] and skipped.failures[0][2] == exc.reason
        return "error"
    assert res.valid.all() and res.hashes.shape == (1,)
    assert np.array_equal(hash_images([path], "phash", workers=0).hashes, res.hashes)  # deterministic
    return "hashed"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_mutated(), suffix=st.sampled_from([".jpg", ".png", ".gif", ".webp", ".bin"]))
def test_mutated_images_raise_only_image_decode_error(tmp_path, data, suffix):
    _only_decode_errors(tmp_path, data, suffix)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes_raise_only_image_decode_error(tmp_path, data):
    _only_decode_errors(tmp_path, data, ".jpg")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_mutated())
def test_mutated_bytes_in_shards_never_break_the_shard(tmp_path, data):
    """The same bytes as a webdataset member: a failure is recorded, the other samples still hash."""
    import tarfile

    from torch_dedup.wds import hash_shard

    url = tmp_path / "s.tar"
    with tarfile.open(url, "w") as tar:
        for key, blob in (("a", good_image_bytes(1)), ("b", data), ("c", good_image_bytes(2))):
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    sc = hash_shard(str(url), on_error="skip")
    assert sc.keys == ("a", "b", "c") and sc.valid[0] and sc.valid[2]
    assert sc.valid[1] != bool(sc.failures)


# ------------------------------------------------------------------ kernels

_DTYPES = [np.uint64, np.uint64, np.uint64, np.uint64, np.int64, np.uint32, np.uint8, np.int8, np.float64, np.float32, np.bool_, np.complex64,
           np.uint16]


@st.composite
def _arrays(draw):
    dtype = draw(st.sampled_from(_DTYPES))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, 5)) for _ in range(ndim))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if dtype == np.bool_:
        arr = rng.random(shape) < 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        arr = (rng.standard_normal(shape) * 1e3).astype(dtype)
    if dtype == np.uint64 and draw(st.booleans()):
        arr &= np.uint64(0xFF)                            # few distinct bits: many pairs to check
    if draw(st.booleans()) and arr.ndim >= 1 and arr.shape[-1] > 1:
        arr = arr[..., ::2]                               # non-contiguous
    return arr


_THRESHOLDS = st.one_of(st.integers(-3, 140), st.sampled_from([1.5, True, None, "3", np.int64(4), 2**70]))


@settings(max_examples=300, deadline=None)
@given(arr=_arrays(), threshold=_THRESHOLDS)
def test_search_and_cluster_raise_only_value_error(arr, threshold):
    for call in (lambda: hamming_pairs(arr, threshold), lambda: find_duplicates(arr, threshold),
                 lambda: sweep_thresholds(arr, threshold)):
        try:
            out = call()
        except ValueError:
            continue
        # accepted: it must have been a valid input, and the answer exact
        assert arr.dtype == np.uint64 and arr.ndim in (1, 2)
        if isinstance(out, type(find_duplicates(np.zeros(1, np.uint64), 0))):
            assert out.n == arr.shape[0]
        elif not isinstance(out, np.ndarray):
            want, _ = brute_pairs(arr, int(threshold))
            assert sorted(map(tuple, np.asarray(out.pairs).tolist())) == sorted(map(tuple, want.tolist()))
            event(f"exact pairs checked ({'some' if len(want) else 'none'})")


@st.composite
def _image_arrays(draw):
    dtype = draw(st.sampled_from([np.uint8, np.uint8, np.uint8, np.int16, np.float32, np.bool_, np.uint16]))
    ndim = draw(st.integers(0, 5))
    shape = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return (rng.integers(0, 255, size=shape) if dtype != np.bool_ else rng.random(shape) < 0.5).astype(dtype)


@settings(max_examples=200, deadline=None)
@given(arr=_image_arrays(), method=st.sampled_from(list(METHODS) + ["md5"]),
       hash_size=st.one_of(st.integers(-2, 20), st.sampled_from([2.0, True, None])))
def test_hash_array_raises_only_value_error(arr, method, hash_size):
    assume(not (isinstance(hash_size, int) and hash_size > 16 and arr.size > 2000))
    try:
        out = hash_array(arr, method, hash_size)
    except ValueError:
        return
    assert arr.dtype == np.uint8 and arr.ndim in (3, 4) and method in METHODS
    assert np.asarray(out).shape[0] == arr.shape[0]


@pytest.mark.parametrize("method", list(METHODS))
def test_hash_images_of_arrays_with_odd_shapes_is_pinned_to_the_item(method):
    """hash_images on a list of odd arrays: a bad one is an ImageDecodeError or ValueError naming its index."""
    good = np.zeros((8, 8), np.uint8)
    for bad in (np.zeros((0, 5), np.uint8), np.zeros((3, 3, 7), np.uint8), np.zeros((4, 4), np.float32)):
        with pytest.raises(ValueError, match=r"\[1\]|item 1"):
            hash_images([good, bad], method)
