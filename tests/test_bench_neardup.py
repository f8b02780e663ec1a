"""Smoke test of benchmarks/bench_neardup.py at a tiny size, so that the benchmark cannot rot.

It builds a CIFAR-like tree (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg) from the embedded
Fashion-MNIST sample, so it needs no real data; the figures themselves are not asserted.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torch_dedup.embedded import load_sample

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_neardup.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_neardup", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_neardup"] = mod  # dataclasses look their module up here
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("bench_neardup", None)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    x, y = load_sample(160)
    root = tmp_path_factory.mktemp("cifar_like")
    for k, (a, label) in enumerate(zip(x, y)):
        split = "test" if k % 4 == 0 else "train"
        d = root / split / f"c{int(label)}"
        d.mkdir(parents=True, exist_ok=True)
        rgb = np.stack([a, np.roll(a, 1, axis=1), 255 - a], axis=-1)  # some colour
        Image.fromarray(rgb).resize((32, 32)).save(d / f"{k:04d}.jpg", quality=75)
    return root


def test_every_edit_gives_an_rgb_image(bench):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    rng = np.random.default_rng(1)
    for name in bench.EDITS:
        out, desc, q = bench.apply_edit(im, name, rng)
        assert out.mode == "RGB" and desc and (q is None) == (name != "jpeg")
        if name not in ("rescale",):
            assert out.size == im.size
    with pytest.raises(ValueError, match="edit 'nope'"):
        bench.apply_edit(im, "nope", rng)


def test_nearest_matches_a_numpy_reference(bench):
    rng = np.random.default_rng(2)
    q = rng.integers(0, 2**63, (30, 2), dtype=np.uint64)
    idx = rng.integers(0, 2**63, (50, 2), dtype=np.uint64)
    idx[7] = q[3] ^ np.uint64(1)
    full = np.bitwise_count(q[:, None, :] ^ idx[None, :, :]).sum(-1)
    d, j = bench.nearest(q, idx)
    np.testing.assert_array_equal(d, full.min(1))
    np.testing.assert_array_equal(j, full.argmin(1))
    skip = np.full(30, 7)
    d2, _ = bench.nearest(q, idx, skip_a=skip)
    np.testing.assert_array_equal(d2, np.delete(full, 7, axis=1).min(1))
    assert d[3] == 2 and d2[3] > 2  # one bit in each word


def test_packs_boolean_codes_like_the_library(bench):
    bits = np.zeros((2, 128), dtype=bool)
    bits[0, 0] = bits[1, 127] = True
    w = bench._as_words(bits)
    assert w.shape == (2, 2) and w[0, 0] == np.uint64(1 << 63) and w[1, 1] == 1


def test_runs_end_to_end_on_a_tiny_tree(bench, tree, tmp_path, capsys):
    out = tmp_path / "out"
    results = bench.main(["--data", str(tree), "--k", "12", "--out", str(out),
                          "--methods", "phash 64,phash+dhash"])
    assert [r.label for r in results] == ["phash 64", "phash+dhash"]
    for r in results:
        assert len(r.share) == r.bits + 1 and np.all(np.diff(r.share) >= 0) and r.share[-1] == 1.0
        assert len(r.found_at) == 12 and 0.0 <= r.recall_at_share(0.04) <= 1.0
    text = capsys.readouterr().out
    assert "| phash 64 | 64 |" in text and "| phash+dhash | 128 |" in text
    assert (out / "index.html").is_file() and (out / "results.md").is_file()
    assert len((out / "edits.csv").read_text().splitlines()) == 13
    assert (out / "flagged_phash_64.png").is_file() and (out / "missed_phash_64.png").is_file()


def test_colour_dct_is_fitted_on_a_sample_of_the_planted_train_and_applied_to_the_rest(bench, tree, tmp_path,
                                                                                         monkeypatch):
    """The guarded colour_dct path, through a stand-in module with the promised API."""
    calls = []

    def features(paths):
        return np.stack([np.asarray(Image.open(p).convert("L").resize((8, 8)), dtype=np.float32).ravel() - 128
                         for p in paths]).repeat(4, axis=1)

    class Fit:
        def codes(self, f):
            return f[:, :self.bits] > 0

        def whiten(self, f):
            return f

    def fit_images(images, bits=256, seed=0):
        calls.append((len(images), bits, seed))
        fit = Fit()
        fit.bits = bits
        return fit

    fake = types.SimpleNamespace(colour_dct_features=features, fit_colour_dct_images=fit_images, DEFAULT_THRESHOLD=24)
    monkeypatch.setattr(bench, "colour_dct_module", lambda: fake)
    monkeypatch.setattr(bench, "FIT_SAMPLE", 100)
    labels = [bench.COLOUR_DCT, bench.COLOUR_DCT_COSINE]
    results = bench.main(["--data", str(tree), "--k", "6", "--out", str(tmp_path / "o"), "--methods", ",".join(labels)])
    assert [r.label for r in results] == labels and results[0].bits == 256
    assert results[0].default_t == 24 and results[1].bits == bench.COSINE_LEVELS
    # fitted once, on at most FIT_SAMPLE of the 120 training images plus the 6 copies
    assert calls == [(100, 256, 0)]
    cos = results[1]
    assert np.all(np.diff(cos.share) >= 0) and cos.share[-1] == 1.0 and 0 <= cos.recall_at_share(0.01) <= 1
    assert np.array_equal(bench.fit_sample(126, 0, 100), bench.fit_sample(126, 0, 100))
    assert len(bench.fit_sample(126, 0, 100)) == 100 and len(bench.fit_sample(50, 0, 100)) == 50


def test_missing_data_exits_with_the_fix(bench, tmp_path):
    with pytest.raises(SystemExit, match="no CIFAR-10 data at .*pass --data"):
        bench.main(["--data", str(tmp_path / "absent.tar.gz"), "--out", str(tmp_path / "o")])


def _pc(x) -> int:
    return sum(bin(int(v)).count("1") for v in np.ravel(x))


def test_evaluate_views_matches_a_brute_force_item_distance(bench):
    rng = np.random.default_rng(4)
    n, m, k, w = 25, 4, 3, 1
    train = rng.integers(0, 2**63, (n, w), dtype=np.uint64)
    copies = train[:m] ^ np.uint64(0b11)
    tv = rng.integers(0, 2**63, (n, k, w), dtype=np.uint64)
    cv = rng.integers(0, 2**63, (m, k, w), dtype=np.uint64)
    cv[1, 2] = train[9] ^ np.uint64(1)               # a copy's view near another item: found elsewhere
    test = rng.integers(0, 2**63, (6, w), dtype=np.uint64)
    test[0] = tv[5, 1]                                # a test image equal to a view of train item 5
    originals = np.arange(m)
    codes = bench.Codes("x", train, test, copies, bits=64 * w, default_t=6, seconds=0)
    r = bench.evaluate_views(codes, tv, cv, originals, "x views", 0.0)
    own = np.concatenate([train, copies])
    allv = np.concatenate([tv, cv])

    def item_d(i, j):
        return min([_pc(own[i] ^ own[j])] + [_pc(allv[i, q] ^ own[j]) for q in range(k)]
                   + [_pc(own[i] ^ allv[j, q]) for q in range(k)])

    want_test = [min(min(_pc(t ^ train[j]), *[_pc(t ^ tv[j, q]) for q in range(k)]) for j in range(n)) for t in test]
    assert r.test_d.tolist() == want_test and r.test_d[0] == 0 and r.test_j[0] == 5
    for c in range(m):
        me, o = n + c, originals[c]
        other = min(item_d(me, j) for j in range(n + m) if j not in (me, o))
        d = item_d(me, o)
        assert r.found_at[c] == (d if d <= other else 64 * w + 1)
    assert r.found_at[1] == 65                        # the view next to item 9 beats the original


def test_views_row_runs_through_the_library(bench, tree, tmp_path):
    results = bench.main(["--data", str(tree), "--k", "6", "--out", str(tmp_path / "o"),
                          "--methods", f"{bench.COLOUR_DCT},{bench.COLOUR_DCT_VIEWS}"])
    assert [r.label for r in results] == [bench.COLOUR_DCT, bench.COLOUR_DCT_VIEWS]
    plain, views = results
    # every code of the plain row is one of the views row's, so nothing is farther with views
    assert np.all(views.test_d <= plain.test_d) and views.bits == 256 and len(views.found_at) == 6
