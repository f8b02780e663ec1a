"""Image views (shifted and cropped copies) and their colour DCT features, against references.

The references are written here independently of the module: the shifts as ``np.pad(mode="edge")``
plus slicing (and the benchmark's PIL path, which the definition copies), the crop as explicit
centre slicing, and the features as ``colour_dct_features`` of each view computed alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing.colour_dct import colour_dct_features
from torch_dedup.hashing.views import (
    VIEW_SETS,
    VIEWS_VERSION,
    colour_dct_view_features,
    image_views,
    stack_views,
    view_count,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# the "shift" set's order, pinned: (dx, dy) with dx then dy ascending, then the centre crop
SHIFTS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _naive_shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Content moved right by dx and down by dy pixels, edge pixels repeated into the gap."""
    h, w = a.shape[:2]
    p = max(abs(dx), abs(dy), 1)
    b = np.pad(a, ((p, p), (p, p), (0, 0)), mode="edge")
    return b[p - dy:p - dy + h, p - dx:p - dx + w]


def _naive_views(a: np.ndarray) -> list[np.ndarray]:
    h, w = a.shape[:2]
    sx, sy = max(1, round(w * 2 / 32)), max(1, round(h * 2 / 32))
    out = [_naive_shift(a, dx * sx, dy * sy) for dx, dy in SHIFTS]
    ch, cw = round(0.9 * h), round(0.9 * w)
    top, left = (h - ch) // 2, (w - cw) // 2
    out.append(a[top:top + ch, left:left + cw])
    return out


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def _reference_features(arrays: list[np.ndarray]) -> np.ndarray:
    """(N, K, 133): colour_dct_features of each view of each image, one view at a time."""
    return np.stack([np.stack([colour_dct_features([v])[0] for v in _naive_views(a)]) for a in arrays])


def test_view_sets_and_count():
    assert VIEWS_VERSION == "views/1"
    assert list(VIEW_SETS) == ["shift", "shift+rotate"]
    assert view_count("shift") == 9 and view_count("shift+rotate") == 13
    assert [v[0] for v in VIEW_SETS["shift+rotate"]] == ["shift"] * 8 + ["crop"] + ["rotate"] * 4
    assert [v[1] for v in VIEW_SETS["shift+rotate"][9:]] == [4.0, -4.0, 8.0, -8.0]
    assert [d[1:3] for d in VIEW_SETS["shift"][:8]] == SHIFTS
    assert VIEW_SETS["shift"][8][0] == "crop"
    with pytest.raises(ValueError, match="'shift'"):
        view_count("nope")
    with pytest.raises(ValueError, match="'shift'"):
        image_views(np.zeros((4, 4, 3), np.uint8), "nope")


@pytest.mark.parametrize("shape", [(32, 32, 3), (30, 41, 1), (1, 1, 3), (7, 5, 1)])
def test_image_views_match_the_naive_reference(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    got = image_views(a)
    want = _naive_views(a)
    assert len(got) == len(want) == 9
    for g, w in zip(got, want):
        assert g.dtype == np.uint8 and g.flags.c_contiguous
        np.testing.assert_array_equal(g, w)
    assert all(g.shape == shape for g in got[:8])


def test_shift_amounts_on_known_sizes():
    # 30x41: sy = round(60/32) = 2, sx = round(82/32) = 3; the crop keeps round(27.0) x round(36.9)
    a = np.arange(30 * 41, dtype=np.uint32).reshape(30, 41, 1).astype(np.uint8)
    right = image_views(a)[SHIFTS.index((1, 0))]
    np.testing.assert_array_equal(right[:, 3:], a[:, :-3])
    np.testing.assert_array_equal(right[:, :3], np.repeat(a[:, :1], 3, axis=1))
    down = image_views(a)[SHIFTS.index((0, 1))]
    np.testing.assert_array_equal(down[2:], a[:-2])
    assert image_views(a)[8].shape == (27, 37, 1)
    np.testing.assert_array_equal(image_views(a)[8], a[1:28, 2:39])


def test_shift_matches_the_benchmark_edit():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_neardup
    finally:
        sys.path.remove(str(BENCHMARKS))
    a = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    views = image_views(a)
    for dx, dy in SHIFTS:
        ref = np.asarray(bench_neardup._shift(Image.fromarray(a), 2 * dx, 2 * dy))
        np.testing.assert_array_equal(views[SHIFTS.index((dx, dy))], ref)


@pytest.mark.parametrize("shape", [(5, 32, 32, 3), (3, 30, 41, 1)])
def test_stack_views_equal_image_views(shape):
    stack = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    got = stack_views(stack)
    assert len(got) == 9
    for k, v in enumerate(got):
        assert v.dtype == np.uint8 and v.flags.c_contiguous and len(v) == shape[0]
        for i in range(shape[0]):
            np.testing.assert_array_equal(v[i], image_views(stack[i])[k])


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8), [[1]]])
def test_image_views_refuse_bad_pixels(bad):
    with pytest.raises(ValueError):
        image_views(bad)


def test_stack_views_refuse_bad_stacks():
    with pytest.raises(ValueError, match="uint8"):
        stack_views(np.zeros((2, 4, 4, 3), np.int16))
    with pytest.raises(ValueError, match="shape"):
        stack_views(np.zeros((4, 4, 3), np.uint8))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    # smooth-ish colour images (a noise field resized up), so the features are not all alike
    return [np.asarray(Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((40, 30)))
            for _ in range(5)]


def test_features_equal_each_view_alone_from_every_input_kind(images, tmp_path):
    want = _reference_features(images)
    paths = []
    for i, a in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    inputs = {
        "stack": np.stack(images),
        "arrays": images,
        "files": paths,
        "str paths": [str(p) for p in paths],
        "pil": [Image.fromarray(a) for a in images],
    }
    for kind, x in inputs.items():
        for batch_size in (1, 2, 1024):
            feats, valid, failures = colour_dct_view_features(x, batch_size=batch_size)
            assert valid.all() and failures == (), kind
            _same_bits(feats, want)
    assert np.abs(want).sum(axis=2).min() > 0  # the rows are real features, not zeros


def test_features_mixed_sizes_and_grey(images):
    grey = np.random.default_rng(4).integers(0, 256, (3, 29, 33), dtype=np.uint8)
    mixed = [images[0], grey[0], images[1][:20, :25], grey[1][..., None]]
    want = _reference_features([m if m.ndim == 3 else m[..., None] for m in mixed])
    _same_bits(colour_dct_view_features(mixed, batch_size=3)[0], want)
    feats, valid, _ = colour_dct_view_features(grey)  # a grey (N, H, W) stack
    assert valid.all()
    _same_bits(feats, _reference_features(list(grey[..., None])))
    assert not feats[:, :, 63:].any()  # grey: zero chroma in every view


def test_features_of_a_tensor_stack(images):
    torch = pytest.importorskip("torch")
    stack = np.stack(images)
    t = torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()
    feats, valid, _ = colour_dct_view_features(t, batch_size=2)
    assert valid.all()
    _same_bits(feats, _reference_features(images))


def test_skip_and_raise_on_a_corrupt_file(images, tmp_path):
    paths = []
    for i, a in enumerate(images[:3]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a png at all")
    items = [paths[0], str(bad), paths[1], paths[2]]
    feats, valid, failures = colour_dct_view_features(items, on_error="skip", batch_size=2)
    assert valid.tolist() == [True, False, True, True]
    assert not feats[1].any()
    assert len(failures) == 1
    index, source, reason = failures[0]
    assert index == 1 and source == str(bad) and reason
    _same_bits(feats[[0, 2, 3]], _reference_features(images[:3]))
    with pytest.raises(ImageDecodeError) as info:
        colour_dct_view_features(items)
    assert info.value.index == 1 and info.value.source == str(bad)


def test_bad_inputs_and_arguments_raise_value_error(images):
    with pytest.raises(ValueError, match="dtype"):
        colour_dct_view_features(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        colour_dct_view_features([images[0], images[1].astype(np.int32)], on_error="skip")
    with pytest.raises(ValueError, match="unsupported type"):
        colour_dct_view_features([images[0], 3.5])
    with pytest.raises(ValueError, match="wrap it in a list"):
        colour_dct_view_features(Image.fromarray(images[0]))
    with pytest.raises(ValueError, match="on_error"):
        colour_dct_view_features(images, on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        colour_dct_view_features(images, batch_size=0)
    with pytest.raises(ValueError, match="'shift'"):
        colour_dct_view_features(images, "nope")
    feats, valid, failures = colour_dct_view_features([])
    assert feats.shape == (0, 9, 133) and valid.shape == (0,) and failures == ()


def test_shift_rotate_views_match_pil_and_the_bench_reference():
    import sys
    from pathlib import Path

    from PIL import Image
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_neardup

    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    views = image_views(a, "shift+rotate")
    shifts = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]
    for v, (dx, dy) in zip(views[:8], shifts):
        np.testing.assert_array_equal(v, np.asarray(bench_neardup._shift(Image.fromarray(a), 3 * dx, 3 * dy)))
    np.testing.assert_array_equal(views[8], a[1:30, 1:30])
    fill = tuple(int(x) for x in a.reshape(-1, 3).mean(0))
    for v, deg in zip(views[9:], (4.0, -4.0, 8.0, -8.0)):
        want = np.asarray(Image.fromarray(a).rotate(deg, Image.Resampling.BICUBIC, fillcolor=fill))
        np.testing.assert_array_equal(v, want)
    g = rng.integers(0, 256, (20, 24, 1), dtype=np.uint8)
    gv = image_views(g, "shift+rotate")[-1]
    want = np.asarray(Image.fromarray(g[:, :, 0]).rotate(-8.0, Image.Resampling.BICUBIC, fillcolor=int(g.mean())))
    np.testing.assert_array_equal(gv[:, :, 0], want)
    stack = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for k, sv in enumerate(stack_views(stack, "shift+rotate")):
        for i in range(3):
            np.testing.assert_array_equal(sv[i], image_views(stack[i], "shift+rotate")[k])


@pytest.mark.parametrize("method,hash_size", [("phash", 8), ("phash", 16), ("phash+dhash", 8), ("whash", 8)])
def test_view_codes_are_hash_array_of_each_view(method, hash_size, tmp_path):
    from PIL import Image

    from torch_dedup.hashing import hash_array, view_codes

    rng = np.random.default_rng(3)
    stack = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    paths = []
    for i, a in enumerate(stack):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    for images in (stack, paths):
        codes, valid, failures = view_codes(images, "shift", method, hash_size)
        assert valid.all() and failures == () and codes.shape[:2] == (5, 9)
        for k, v in enumerate(stack_views(stack, "shift")):
            want = hash_array(v, method, hash_size).reshape(5, -1)
            np.testing.assert_array_equal(codes[:, k], want)


def test_view_codes_of_colour_dct_are_its_fit_on_the_view_features():
    from torch_dedup.hashing import fit_colour_dct, view_codes

    rng = np.random.default_rng(4)
    stack = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    feats, _, _ = colour_dct_view_features(stack, "shift+rotate")
    fit = fit_colour_dct(feats[:, 0], bits=256)
    codes, _, _ = view_codes(stack, "shift+rotate", "colour_dct", 16, fit=fit)
    np.testing.assert_array_equal(codes, fit.codes(feats.reshape(-1, feats.shape[2])).reshape(40, 13, 4))
    with pytest.raises(ValueError, match="needs fit="):
        view_codes(stack, "shift", "colour_dct", 16)


def test_large_images_are_coded_one_by_one_with_the_same_bits(tmp_path):
    """Images of at least 64x64 pixels skip the batch (bounded memory): the same features and codes."""
    from PIL import Image

    from torch_dedup.hashing import hash_array, view_codes

    rng = np.random.default_rng(11)
    big = [rng.integers(0, 256, (70 + 3 * i, 90, 3), dtype=np.uint8) for i in range(3)]
    small = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    items = [big[0], small[0], big[1], small[1], big[2]]
    paths = []
    for i, a in enumerate(items):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    feats = colour_dct_features(paths)
    for i, a in enumerate(items):
        assert np.array_equal(feats[i].view(np.uint32), colour_dct_features(a[None])[0].view(np.uint32))
    vf, valid, _ = colour_dct_view_features(paths, "shift")
    codes, _, _ = view_codes(paths, "shift", "phash", 8)
    for i, a in enumerate(items):
        for k, v in enumerate(image_views(a, "shift")):
            assert np.array_equal(vf[i, k].view(np.uint32), colour_dct_features(v[None])[0].view(np.uint32))
            assert codes[i, k, 0] == hash_array(v[None], "phash", 8)[0]
    assert valid.all()
