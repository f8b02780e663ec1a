"""Whitened colour DCT codes: speed against phash and decode, and planted near-duplicate recall on CIFAR-10.

    python benchmarks/bench_colour_dct.py --speed     # in-memory and file throughput (~1 min)
    python benchmarks/bench_colour_dct.py --quality   # planted-copy recall on CIFAR-10 (~3-5 min on 2 cores)
    python benchmarks/bench_colour_dct.py             # both

Speed (best of 3, figures printed next to the anchors measured in the same run):

1. stacked in-memory 32x32 RGB (CIFAR-10 train decoded to an array when the shared tarball
   exists, else random pixels): ``hash_array(x, "phash")`` against ``colour_dct_features``,
   ``ColourDctFit.codes`` (256 bits) and both; one numba thread and all of them;
2. generated 500x375 JPEGs (the resampling runs) and CIFAR-10 JPEG files: decode only
   (``Image.open`` + ``np.asarray(im)``, the RGB files as decoded) against
   ``colour_dct_features(paths)`` (+ codes) and ``hash_images(paths, "phash")``.

Quality: 500 training images chosen with a fixed seed get one realistic edit each (JPEG
q30-95, rescale, 5-15 % crop resized back, 1-3 px shift, brightness/contrast/saturation
jitter, greyscale, small rotation, blur), and the edited copies are planted into the
training set. For each signal, the threshold is the largest at which at most 1 % (4 %) of
the CIFAR-10 *test* images have a training image within it (test images are not planted;
many of these flags are real CIFAR near-duplicates), and recall is the share of planted
copies within that threshold of their original. Signals: phash 64, phash 256 (hash size
16), colour_dct 256-bit codes (fit on the training set), and the exact cosine of the
whitened features (the float re-check), at the same flagged shares.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from torch_dedup.hamming import hamming_pairs
from torch_dedup.hashing import (
    colour_dct_features,
    fit_colour_dct,
    hash_array,
    hash_images,
)

CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
EDITS = ("jpeg", "rescale", "crop", "shift", "jitter", "grey", "rotate", "blur")


def _best(fn, n: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def _unpack(tmp: str) -> Path | None:
    if not CIFAR_TAR.exists():
        return None
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(tmp, filter="data")
    return next(p for p in Path(tmp).rglob("train") if p.is_dir()).parent


def _decode(paths) -> np.ndarray:
    """Decode only (the anchor): open, decode, to an array; Pillow's convert only for non-RGB files."""
    out = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            out[k] = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    return out


# --------------------------------------------------------------------------- speed


def speed(root: Path | None) -> None:
    threads = numba.get_num_threads()
    if root is not None:
        paths = sorted((root / "train").rglob("*.jpg"))
        x = _decode(paths[:50000])
        what = f"CIFAR-10 train decoded, {len(x)} images"
    else:
        paths = []
        x = np.random.default_rng(0).integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
        what = "random pixels, 50000 images (CIFAR tarball absent)"
    fit = fit_colour_dct(colour_dct_features(x[:20000]))
    f = colour_dct_features(x)
    hash_array(x[:4096], "phash")
    print(f"\n## in-memory stacked 32x32 RGB ({what})\n")
    print("| threads | phash img/s | features img/s | codes img/s | features+codes img/s | ratio to phash |")
    print("|---:|---:|---:|---:|---:|---:|")
    for t in sorted({1, threads}):
        numba.set_num_threads(t)
        ph = _best(lambda: hash_array(x, "phash"), len(x))
        fe = _best(lambda: colour_dct_features(x), len(x))
        co = _best(lambda: fit.codes(f), len(x))
        both = _best(lambda: fit.codes(colour_dct_features(x)), len(x))
        print(f"| {t} | {ph:,.0f} | {fe:,.0f} | {co:,.0f} | {both:,.0f} | {both / ph:.2f} |")
    numba.set_num_threads(threads)
    _speed_big()
    if not paths:
        print("\n(no CIFAR-10 JPEGs: file section skipped)")
        return
    files = [str(p) for p in paths[:10000]]
    colour_dct_features(files[:500])
    print(f"\n## CIFAR-10 JPEG files ({len(files)} files, in this process, {threads} numba threads)\n")
    dec = _best(lambda: _decode(files), len(files))
    fe = _best(lambda: colour_dct_features(files), len(files))
    both = _best(lambda: fit.codes(colour_dct_features(files)), len(files))
    ph = _best(lambda: hash_images(files, "phash"), len(files))
    print("| decode only img/s | features img/s | features+codes img/s | phash img/s | (features+codes) / decode |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {dec:,.0f} | {fe:,.0f} | {both:,.0f} | {ph:,.0f} | {both / dec:.2f} |")


def _speed_big(n: int = 300) -> None:
    """Generated 500x375 JPEGs (q90): here the resampling to 32x32 runs, and decode costs more."""
    rng = np.random.default_rng(0)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize(
        (500, 375), Image.Resampling.BICUBIC))
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k in range(n):
            p = str(Path(tmp) / f"{k}.jpg")
            Image.fromarray(np.roll(base, 3 * k, axis=1)).save(p, quality=90)
            files.append(p)
        colour_dct_features(files[:5])

        def decode():
            for p in files:
                with Image.open(p) as im:
                    np.asarray(im)

        dec = _best(decode, n)
        fe = _best(lambda: colour_dct_features(files), n)
        ph = _best(lambda: hash_images(files, "phash"), n)
    print(f"\n## {n} generated 500x375 JPEG files (in this process)\n")
    print("| decode only img/s | features img/s | phash img/s | features / decode |")
    print("|---:|---:|---:|---:|")
    print(f"| {dec:,.0f} | {fe:,.0f} | {ph:,.0f} | {fe / dec:.2f} |")


# --------------------------------------------------------------------------- quality


def _edit(a: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    im = Image.fromarray(a)
    w, h = im.size
    if kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(30, 96)))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if kind == "rescale":
        s = int(rng.choice([20, 24, 28, 40, 48, 64]))
        return np.asarray(im.resize((s, s), Image.Resampling.BICUBIC))
    if kind == "crop":
        frac = rng.uniform(0.05, 0.15)
        cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return np.asarray(im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC))
    if kind == "shift":
        dx, dy = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(0, 4, 2))
        if dx == 0 and dy == 0:
            dx = 1
        p = np.pad(a, ((3, 3), (3, 3), (0, 0)), mode="edge")
        return np.ascontiguousarray(p[3 + dy:3 + dy + h, 3 + dx:3 + dx + w])
    if kind == "jitter":
        for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            im = enh(im).enhance(float(rng.uniform(0.75, 1.25)))
        return np.asarray(im)
    if kind == "grey":
        return np.asarray(im.convert("L"))
    if kind == "rotate":
        angle = float(rng.uniform(3, 10)) * float(rng.choice([-1, 1]))
        return np.asarray(im.rotate(angle, Image.Resampling.BICUBIC, fillcolor=tuple(int(v) for v in a.mean((0, 1)))))
    if kind == "blur":
        return np.asarray(im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.2)))))
    raise ValueError(kind)


def _nn_hamming(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per test row, its smallest Hamming distance to any train row (exact brute force, in chunks)."""
    test, train = test.reshape(len(test), -1), train.reshape(len(train), -1)
    out = np.empty(len(test), dtype=np.int64)
    step = max(1, (1 << 25) // (len(train) * train.shape[1]))
    for k in range(0, len(test), step):
        x = test[k:k + step, None, :] ^ train[None, :, :]
        out[k:k + step] = np.bitwise_count(x).sum(axis=2, dtype=np.int64).min(axis=1)
    return out


def _check_search(test: np.ndarray, train: np.ndarray, nn: np.ndarray, t: int) -> None:
    """The library's exact search finds the same flagged test images at ``t`` as the brute force."""
    res = hamming_pairs(train, t, other=test)
    assert np.array_equal(np.unique(res.pairs[:, 1]), np.flatnonzero(nn <= t))


def _pair_hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.unpackbits((a ^ b).view(np.uint8), axis=1).sum(axis=1)


def _recall_at(nn_test: np.ndarray, d_planted: np.ndarray, share: float, higher_is_closer: bool = False):
    """Largest threshold flagging at most ``share`` of test images; (threshold, flagged share, recall mask)."""
    score = -nn_test if higher_is_closer else nn_test
    planted = -d_planted if higher_is_closer else d_planted
    values = np.unique(score)
    flagged = np.searchsorted(np.sort(score), values, side="right") / len(score)
    ok = values[flagged <= share]
    t = ok.max() if ok.size else values.min() - 1
    return (-t if higher_is_closer else t), float((score <= t).mean()), planted <= t


def quality(root: Path, n_planted: int = 500, seed: int = 0, chroma_weights=(1.0, 0.5, 0.3)) -> None:
    train_paths = sorted((root / "train").rglob("*.jpg"))
    test_paths = sorted((root / "test").rglob("*.jpg"))
    print(f"\n## planted near-duplicates on CIFAR-10 ({len(train_paths)} train + {n_planted} planted, "
          f"{len(test_paths)} unplanted test)\n")
    t0 = time.perf_counter()
    train = _decode(train_paths)
    test = _decode(test_paths)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train), n_planted, replace=False)
    kinds = [EDITS[k % len(EDITS)] for k in range(n_planted)]
    planted = [_edit(train[i], kind, rng) for i, kind in zip(chosen, kinds)]
    kinds = np.array(kinds)
    print(f"(decoded and edited in {time.perf_counter() - t0:.0f} s; edits: {', '.join(EDITS)}, "
          f"{n_planted // len(EDITS)}+ each)\n")

    rows = []
    for name, hs in (("phash 64", 8), ("phash 256", 16)):
        h_train = hash_array(train, "phash", hs)
        h_test = hash_array(test, "phash", hs)
        h_planted = hash_images(planted, "phash", hs).hashes
        nn = _nn_hamming(h_test, h_train)
        _check_search(h_test, h_train, nn, _recall_at(nn, nn, 0.01)[0])
        d = _pair_hamming(h_planted, h_train[chosen])
        rows.append((name, nn, d, False))
    f_train, f_test = colour_dct_features(train), colour_dct_features(test)
    f_planted = colour_dct_features(planted)
    for cw in chroma_weights:
        fit = fit_colour_dct(np.concatenate([f_train, f_planted]), bits=256, chroma_weight=cw)
        c_train, c_test, c_planted = fit.codes(f_train), fit.codes(f_test), fit.codes(f_planted)
        nn = _nn_hamming(c_test, c_train)
        _check_search(c_test, c_train, nn, _recall_at(nn, nn, 0.01)[0])
        rows.append((f"colour_dct 256-bit, chroma_weight {cw:g}", nn, _pair_hamming(c_planted, c_train[chosen]), False))
        # the exact float cosine of the whitened features (what a re-check of the candidates computes)
        z_train = fit.whiten(f_train)
        z_train /= np.linalg.norm(z_train, axis=1, keepdims=True)
        z_test = fit.whiten(f_test)
        z_test /= np.linalg.norm(z_test, axis=1, keepdims=True)
        best = np.concatenate([(z_test[k:k + 1000] @ z_train.T).max(axis=1) for k in range(0, len(z_test), 1000)])
        rows.append((f"colour_dct cosine, chroma_weight {cw:g}", best, fit.cosine(f_planted, f_train[chosen]), True))

    print("| signal | thr @1% | flagged | recall @1% | thr @4% | flagged | recall @4% |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    per_kind = {}
    for name, nn, d, hic in rows:
        cells = []
        for share in (0.01, 0.04):
            t, flagged, hit = _recall_at(nn, d, share, hic)
            cells += [f"{t:.3f}" if hic else f"{int(t)}", f"{flagged:.2%}", f"{hit.mean():.3f}"]
            per_kind[(share, name)] = {k: hit[kinds == k].mean() for k in EDITS}
        print(f"| {name} | " + " | ".join(cells) + " |")
    for share in (0.01, 0.04):
        print(f"\nrecall @{share:.0%} by edit:\n")
        print("| signal | " + " | ".join(EDITS) + " |")
        print("|---|" + "---:|" * len(EDITS))
        for (s, name), by in per_kind.items():
            if s == share:
                print(f"| {name} | " + " | ".join(f"{by[k]:.2f}" for k in EDITS) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--planted", type=int, default=500)
    args = ap.parse_args()
    both = not (args.speed or args.quality)
    with tempfile.TemporaryDirectory() as tmp:
        root = _unpack(tmp)
        if args.speed or both:
            speed(root)
        if args.quality or both:
            if root is None:
                print(f"\n{CIFAR_TAR} absent: quality section skipped")
            else:
                quality(root, args.planted)


if __name__ == "__main__":
    main()
