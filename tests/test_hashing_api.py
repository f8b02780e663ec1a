"""Public hashing API: pinned values, hex round trip, errors, on_error handling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing.api import (
    METHODS,
    HashResult,
    from_hex,
    hash_array,
    hash_bits,
    hash_images,
    to_hex,
)
from torch_dedup.embedded import load_sample

# Hex strings of imagehash 4.3.2 (Pillow 13) for embedded sample items 0..4 and a synthetic
# gradient; a change here means stored sidecars would silently stop matching.
PINNED = {
    ('ahash', 8): (
        '0000040f1fff3200',
        '3c7e667e7e7e7e42',
        '1c1c3c3c3c3c1c1c',
        '3c3c1818181c3c1c',
        '1c3e7e7e7e7e3c3c',
        '0307070f0f1f1f3f',
    ),
    ('dhash', 8): (
        '08108a1efefee600',
        'e8d4c4d4f0f8e896',
        'b17169696969a9b9',
        '71717178b2a9a9a8',
        '70d4dcdcdebaec78',
        'ffffffffffffffff',
    ),
    ('phash', 8): (
        '957b6a841bb5e24a',
        '855e6a9a388b6d6c',
        '9a9938666366636d',
        '9a998e8665b66665',
        '95955a684b5e685e',
        '802a552a552b5f7f',
    ),
    ('whash', 8): (
        '00000f1f7fffff00',
        '183c227e7e7e7e00',
        '3c3c3c3c3c3c3c3c',
        '3c3c3c3c3c3c3c3c',
        '182e3e6e5e5e1c1c',
        '0307070f0f1f1f3f',
    ),
    ('ahash', 16): (
        '00000000000000000000007600fe00fe01ff0fff7fffffff3f9f000000000000',
        '02400ff01ff81b781a1c1c5c1ddc1ffc3ffc3ffc3ffc3ffc3ffc3ffc10041004',
        '03e007e007f007f007e007e007e0076006600660076007600360036003600360',
        '07e007e007e007e007e007e007e007c003c003c0076007600760076003600360',
        '03e00ff81ff81ffc1ffc1ffc1ffc3ffc3bfc3ffe37fe37fe07f00ff00ff807e0',
        '000f001f001f003f003f007f007f00ff00ff01ff01ff03ff03ff07ff07ff0fff',
    ),
    ('dhash', 16): (
        '0000000000420030014202c605f053e8075a7fe2faf2a7d8fe180000a8180000',
        '4cc4bf02f3a17259729970b97b5964a965496d686d286da86eac6cac652c600c',
        '164806442e442d042cc42cc42cc42cc42cc42cc42cc42cc406c4164416441640',
        '2c402d442e482f882d882c882c880e880e880e880ec804c804c804c816c816c0',
        '4e84bb22b13935b9727972f872b07768756865ace4ace6ac79301ab259b21f40',
        'fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffefffe',
    ),
    ('phash', 16): (
        '95557b6a6aaa84951bdbb550e3444aefcc85f31b06bb94447a4cc59db8316ea2',
        '85e85e877a529a5938599f1a6d336c6b6c67386e39e43178933965b1cc3165a4',
        '9a65999938cf6631638e6e66638e6d8c619998ce639330c6673636e665b466cc',
        '9a6699998e6d8e656592b6636692619b31996665619e3a6564e764e663196766',
        '95fb95a15a9468594b475e9668687ea66868a1337b3aa13979e1579961e5469c',
        '80002aaa55552aad556a2ad554aa295556ab2b5655ad2b5a57bd2b5e56af2b5f',
    ),
    ('whash', 16): (
        '000000000062001c006301ff02fe0dffc3ff7fffffffffff7fff00007fff0000',
        '00000ff01ff81b781a181c1c1ddc1ffc1ffc3ffc37ec3ffc1ffc3ff410041004',
        '07f017f417f407f407f407f407f407f407f4077407741774177407740bf40bf4',
        '1ff41ff41ff01ff017f017f017e017e017e017e817e8176817e8176817681f68',
        '03c007f00df81afc193c1bfc1cfc19fc1bec13ac33fe33fe07f007f00ff003e0',
        '000f001f001f003f003f007f007f00ff00ff01ff01ff03ff03ff07ff07ff0fff',
    ),
}


def _gradient() -> np.ndarray:
    return np.clip(np.add.outer(np.arange(48) * 2, np.arange(64) * 3), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("key", sorted(PINNED))
def test_pinned_values(key):
    method, size = key
    images = list(load_sample(5)[0]) + [_gradient()]
    assert to_hex(hash_images(images, method, size)) == list(PINNED[key])
    # the stacked fast path and the PIL path agree with the table too
    assert to_hex(hash_array(load_sample(5)[0], method, size)) == list(PINNED[key][:5])
    pil = [Image.fromarray(a) for a in images]
    assert to_hex(hash_images(pil, method, size)) == list(PINNED[key])


@pytest.mark.parametrize("size", [8, 16, 4, 5])
def test_hex_round_trip(size):
    rng = np.random.default_rng(size)
    result = hash_images(list(rng.integers(0, 256, (20, 17, 23), dtype=np.uint8)), "dhash", size)
    hexes = to_hex(result)
    assert all(len(h) == -(-size * size // 4) for h in hexes)
    back = from_hex(hexes, size)
    np.testing.assert_array_equal(back, result.hashes)
    assert to_hex(back, hash_size=size) == hexes


def test_result_shape_and_array_protocol():
    images = load_sample(7)[0]
    r8 = hash_images(images, "phash", 8)
    assert isinstance(r8, HashResult) and len(r8) == 7
    assert r8.hashes.shape == (7,) and r8.hashes.dtype == np.uint64
    assert r8.valid.all() and r8.failures == ()
    np.testing.assert_array_equal(np.asarray(r8), r8.hashes)
    r16 = hash_images(images, "phash", 16)
    assert r16.hashes.shape == (7, 4)
    assert hash_bits("phash", 8) == 64 and hash_bits("whash", 16) == 256


def test_empty_inputs():
    assert len(hash_images([], "phash")) == 0
    assert hash_images(np.zeros((0, 28, 28), np.uint8), "phash", 16).hashes.shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="md5"), "method='md5'.*ahash"),
        (dict(hash_size=1), "hash_size=1.*>= 2"),
        (dict(method="whash", hash_size=12), "hash_size=12.*power of 2"),
        (dict(on_error="ignore"), "on_error='ignore'.*raise.*skip"),
        (dict(workers=-1), "workers=-1"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hash_images(load_sample(2)[0], **kwargs)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((2, 8, 8), np.float32), "dtype float32.*uint8"),
        (np.zeros((8, 8), np.uint8), r"shape \(8, 8\).*stack"),
        (np.zeros((2, 8, 8, 5), np.uint8), r"shape \(2, 8, 8, 5\)"),
        ([np.zeros((8, 8), np.float64)], r"images\[0\] has dtype float64"),
        ([np.zeros((8, 8, 7), np.uint8)], r"images\[0\] has shape"),
        ([42], r"images\[0\] has unsupported type int"),
        ("a.jpg", "single str.*hash_images\\(\\[image\\]\\)"),
    ],
)
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        hash_images(images)


def test_hash_array_rejects_lists():
    with pytest.raises(ValueError, match="numpy ndarray"):
        hash_array([np.zeros((8, 8), np.uint8)])


def test_from_hex_errors():
    with pytest.raises(ValueError, match="3 hex digits; a 64-bit hash has 16"):
        from_hex(["abc"], 8)
    with pytest.raises(ValueError, match="not a hexadecimal"):
        from_hex(["zzzzzzzzzzzzzzzz"], 8)
    with pytest.raises(ValueError, match="one str"):
        from_hex("00000000000000ff")


@pytest.fixture()
def bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(load_sample(1)[0][0]).save(good)
    jpg = tmp_path / "full.jpg"
    Image.fromarray(np.stack([load_sample(1)[0][0]] * 3, -1)).resize((64, 64)).save(jpg, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    return good, truncated, text


@pytest.mark.parametrize("workers", [0, 1])
def test_on_error_skip(bad_files, workers):
    good, truncated, text = bad_files
    r = hash_images([good, truncated, str(text), good], "phash", on_error="skip", workers=workers)
    assert r.valid.tolist() == [True, False, False, True]
    assert [f[0] for f in r.failures] == [1, 2]
    assert r.failures[0][1] == str(truncated) and r.failures[1][1] == str(text)
    assert "truncated" in r.failures[0][2].lower() or "OSError" in r.failures[0][2]
    assert "UnidentifiedImageError" in r.failures[1][2]
    assert r.hashes[1] == 0 and r.hashes[2] == 0
    assert r.hashes[0] == r.hashes[3] != 0


def test_on_error_raise_names_file(bad_files):
    good, truncated, text = bad_files
    with pytest.raises(ImageDecodeError, match="notes.jpg") as info:
        hash_images([good, text, truncated], "dhash")
    assert info.value.index == 1 and info.value.source == str(text)
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        hash_images([good, truncated], "dhash")


def test_methods_constant():
    assert METHODS == ("ahash", "dhash", "phash", "whash")


def test_process_pool_path_is_exact(tmp_path, monkeypatch):
    import imagehash
    from PIL import Image

    from torch_dedup.hashing import api
    from torch_dedup.embedded import load_sample

    monkeypatch.setattr(api, "POOL_MIN_FILES", 1)  # exercise the pool on a small list
    images = load_sample(40)[0]
    paths = []
    for i, a in enumerate(images):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(np.stack([a, a.T, a[::-1]], -1)).resize((40 + i, 36)).save(p)
        paths.append(p)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.insert(7, tmp_path / "bad.jpg")
    for method in ("dhash", "phash"):
        got = api.hash_images(paths, method, 8, workers=2, on_error="skip", batch_size=16)
        assert got.failures[0][0] == 7 and not got.valid[7]
        for i, p in enumerate(paths):
            if i != 7:
                with Image.open(p) as im:
                    assert api.to_hex(got)[i] == str(getattr(imagehash, method)(im))
