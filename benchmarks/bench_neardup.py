"""Which method finds near-duplicates: planted edited copies in CIFAR-10, at equal flagged share.

Issue 16, "Done when" 1. From the CIFAR-10 JPEGs in ``../shared/data/cifar10-jpg.tar.gz``:
``K`` training images are chosen with a fixed seed and each gets one realistic edited copy
(JPEG re-encode q 30-95, rescale, a 5-15 % crop resized back, a 1-3 px shift,
brightness/contrast/saturation jitter, greyscale, a small rotation, blur, a small overlay;
one edit or a combination of two or three, seeded and recorded in ``edits.csv``). The copies
are written to files (PNG, or JPEG when the edit list has a re-encode) and planted into the
training set, so they go through the same decode path as the originals.

``phash 256 views`` is phash 256 with ``views="shift"``: the views' gain measured on
another method.

For each method everything is hashed once, in this process, and then:

* **flagged share**: the share of CIFAR-10 *test* images (which nobody planted) that have a
  training image within ``t``. The threshold ``t`` at which 1 % and 4 % of them are flagged
  is the largest ``t`` whose share does not exceed the target; it puts every method at the
  same false-alarm budget (the test set's real copies of training images are part of that
  share, as they are in any real use).
* **recall** of the planted pairs at that ``t``: a copy counts as found when its original is
  within ``t`` and no other training item (nor another copy) is closer; ties count as found,
  as a dedup would group them. ``@1% interp`` interpolates linearly between ``t`` and ``t+1``
  (a randomised threshold) so that every method is read at exactly 1 % / 4 %.
* the flagged share and the recall at the threshold the method would be used at: 6 bits
  per 64-bit part (6, 12, 18, 24), the library's default ``threshold=6`` scaled with the
  code length (``colour_dct``: its module's ``DEFAULT_THRESHOLD`` scaled from 256 bits).

colour_dct is fitted the way the library fits it: ``fit_colour_dct_images`` on a seeded
sample of at most 20,000 images of the planted training set (train + copies); its rows are
the 256-, 512- and 1024-bit codes, ``colour_dct 256 views`` (the 256-bit codes with
``views="shift"``: each training item also coded from 9 views of it, 8 shifts by 1/16 of the
side and a 10 % centre crop, the item distance of ``torch_dedup.hamming.views``; the test set
has no views, as ``against=`` in the library), ``colour_dct 256 views+rotate`` (the set
``"shift+rotate"``: 8 shifts by 3/32 of the side, the crop, rotations by +-4 and +-8 degrees),
and ``colour_dct cosine``, the exact float cosine of the whitened
features (what re-checking Hamming candidates with ``ColourDctFit.cosine`` can reach at
best), read as the distance ``arccos(cos) / pi * 4096``.

Distances are exact: each query's nearest neighbour over the whole index by a numba
popcount scan (10,000 x 50,000 at 256 bits takes seconds). A gallery of what each method
flags on the real test set at its 1 % threshold is written to ``--out`` (PNG contact
sheets and an ``index.html``), with a sheet of the planted copies phash 64 misses.

Usage:
    python benchmarks/bench_neardup.py --out /tmp/neardup          # K=500, all 50,000 train
    python benchmarks/bench_neardup.py --k 200 --train-n 10000 --out /tmp/nd   # quicker
    python benchmarks/bench_neardup.py --data DIR ...   # an unpacked tree (train/, test/)
"""

from __future__ import annotations

import argparse
import csv
import html
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "cifar10-jpg.tar.gz"

EDITS = ("jpeg", "rescale", "crop", "shift", "jitter", "grey", "rotate", "blur", "overlay")
#: (label, method, hash_size); colour_dct is added when torch_dedup.hashing.colour_dct exists.
METHODS = (
    ("phash 64", "phash", 8),
    ("dhash 64", "dhash", 8),
    ("phash 256", "phash", 16),
    ("phash+dhash", "phash+dhash", 8),
    ("phash+dhash+ahash", "phash+dhash+ahash", 8),
)
COLOUR_DCT = "colour_dct 256"
COLOUR_DCT_512 = "colour_dct 512"
COLOUR_DCT_1024 = "colour_dct 1024"
#: colour_dct 256 with ``views="shift"``: every training item also coded from its 9 views
#: (torch_dedup.hashing.views), the item distance of torch_dedup.hamming.views.
COLOUR_DCT_VIEWS = "colour_dct 256 views"
#: The same with the view set ``"shift+rotate"`` (8 shifts by 3/32, the crop, rotations of +-4 and +-8 degrees).
COLOUR_DCT_VIEWS_ROT = "colour_dct 256 views+rotate"
#: phash 256 with ``views="shift"``: how much of the gain is the views', not colour_dct's.
PHASH_VIEWS = "phash 256 views"
#: The exact float cosine of the whitened features (what a re-check of Hamming candidates
#: reads), as a distance ``arccos(cos) / pi * COSINE_LEVELS`` (so ``t / levels`` reads like ``hamming / bits``).
COLOUR_DCT_COSINE = "colour_dct cosine"
COSINE_LEVELS = 4096
#: Images the colour_dct fit sees at most: the library fits on a seeded sample of this size.
FIT_SAMPLE = 20_000
TARGETS = (0.01, 0.04)


# --------------------------------------------------------------------------- data


def open_tree(data: Path, tmp: Path) -> Path:
    """The folder holding ``train/`` and ``test/``: ``data`` itself, or the tarball unpacked into ``tmp``."""
    if data.is_dir():
        root = data
    elif data.is_file():
        with tarfile.open(data) as tf:
            tf.extractall(tmp, filter="data")
        root = tmp
    else:
        sys.exit(f"bench_neardup: no CIFAR-10 data at {data}; pass --data with the cifar10-jpg.tar.gz "
                 "tarball or a folder holding train/<class>/*.jpg and test/<class>/*.jpg")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            sys.exit(f"bench_neardup: {root} has no {split}/ folder (expected train/<class>/NNNN.jpg, "
                     "test/<class>/NNNN.jpg)")
    return root


def list_split(root: Path, split: str) -> list[str]:
    """Image paths of one split in a fixed order (class folder, then file name)."""
    return [str(p) for p in sorted((root / split).glob("*/*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]


# --------------------------------------------------------------------------- edits


def _shift(im: Image.Image, dx: int, dy: int) -> Image.Image:
    """Translate by (dx, dy) pixels, repeating the edge pixels into the uncovered strip."""
    a = np.asarray(im)
    p = max(abs(dx), abs(dy))
    pad = ((p, p), (p, p)) + ((0, 0),) * (a.ndim - 2)
    b = np.pad(a, pad, mode="edge")
    h, w = a.shape[:2]
    return Image.fromarray(b[p - dy:p - dy + h, p - dx:p - dx + w])


def apply_edit(im: Image.Image, name: str, rng: np.random.Generator) -> tuple[Image.Image, str, int | None]:
    """One edit of an RGB image: (edited image, description, JPEG quality if it is a re-encode)."""
    w, h = im.size
    if name == "jpeg":
        q = int(rng.integers(30, 96))
        return im, f"jpeg q{q}", q
    if name == "rescale":
        f = float(rng.choice([rng.uniform(0.6, 0.85), rng.uniform(1.2, 2.0)]))
        size = (max(8, round(w * f)), max(8, round(h * f)))
        resample = [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS][int(rng.integers(3))]
        return im.resize(size, resample), f"rescale {size[0]}x{size[1]}", None
    if name == "crop":
        frac = float(rng.uniform(0.05, 0.15))  # share of each side cut away
        cw, ch = max(1, round(w * (1 - frac))), max(1, round(h * (1 - frac)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC), f"crop {frac:.0%}", None
    if name == "shift":
        while True:
            dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
            if dx or dy:
                return _shift(im, dx, dy), f"shift {dx:+d},{dy:+d}", None
    if name == "jitter":
        b, c, s = (float(v) for v in rng.uniform(0.7, 1.3, size=3))
        im = ImageEnhance.Brightness(im).enhance(b)
        im = ImageEnhance.Contrast(im).enhance(c)
        return ImageEnhance.Color(im).enhance(s), f"jitter b{b:.2f} c{c:.2f} s{s:.2f}", None
    if name == "grey":
        return im.convert("L").convert("RGB"), "grey", None
    if name == "rotate":
        angle = float(rng.uniform(2, 10) * rng.choice([-1, 1]))
        fill = tuple(int(v) for v in np.asarray(im).reshape(-1, 3).mean(0))
        return im.rotate(angle, Image.Resampling.BICUBIC, fillcolor=fill), f"rotate {angle:+.1f}", None
    if name == "blur":
        r = float(rng.uniform(0.5, 1.3))
        return im.filter(ImageFilter.GaussianBlur(r)), f"blur {r:.1f}", None
    if name == "overlay":
        im = im.copy()
        d = ImageDraw.Draw(im)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        s = int(rng.integers(3, 8))
        x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        if rng.random() < 0.5:
            d.rectangle((x0, y0, x0 + s, y0 + s), fill=colour)
            return im, f"overlay box {s}px", None
        d.text((x0, max(0, y0 - 3)), "(c)", fill=colour)
        return im, "overlay text", None
    raise ValueError(f"edit {name!r}: expected one of {EDITS}")


@dataclass
class Copy:
    original: int        # index into the training list
    path: str            # the written copy
    kind: str            # the edit name, or "combination"
    description: str     # every edit applied, with its parameters


def make_copies(train: list[str], k: int, out: Path, seed: int = 0, combo_share: float = 0.35) -> list[Copy]:
    """``k`` training images chosen with ``seed``, one edited copy each, written under ``out``.

    One edit, or with probability ``combo_share`` two or three different ones (a re-encode,
    when drawn, comes last). Copies are saved as PNG, or as JPEG at the drawn quality.
    """
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(train), size=min(k, len(train)), replace=False))
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for n, i in enumerate(chosen):
        names = ([str(rng.choice(EDITS))] if rng.random() >= combo_share
                 else [str(e) for e in rng.choice(EDITS, size=int(rng.integers(2, 4)), replace=False)])
        names.sort(key=lambda e: e == "jpeg")
        with Image.open(train[i]) as f:
            im = f.convert("RGB")
        quality, descs = None, []
        for name in names:
            im, desc, q = apply_edit(im, name, rng)
            descs.append(desc)
            quality = q if q is not None else quality
        path = out / (f"copy{n:05d}.jpg" if quality else f"copy{n:05d}.png")
        if quality:
            im.save(path, quality=quality)
        else:
            im.save(path)
        copies.append(Copy(int(i), str(path), names[0] if len(names) == 1 else "combination", " + ".join(descs)))
    return copies


# --------------------------------------------------------------------------- codes


def _as_words(codes) -> np.ndarray:
    """Packed ``uint64`` rows ``(N, W)`` from a HashResult, packed words, or ``(N, bits)`` booleans."""
    a = np.asarray(getattr(codes, "hashes", codes))
    if a.dtype == np.uint64:
        return np.ascontiguousarray(a.reshape(len(a), -1))
    if a.dtype == np.bool_ or (a.ndim == 2 and a.dtype == np.uint8 and a.max(initial=0) <= 1):
        packed = np.packbits(a.astype(bool), axis=1)
        pad = (-packed.shape[1]) % 8
        packed = np.pad(packed, ((0, 0), (pad, 0)))
        return np.ascontiguousarray(packed.view(">u8").astype(np.uint64))
    raise TypeError(f"codes of dtype {a.dtype} and shape {a.shape}: expected packed uint64 words or booleans")


def colour_dct_module():
    """The colour_dct API this benchmark uses (``colour_dct_features``, ``fit_colour_dct_images``,
    ``DEFAULT_THRESHOLD``) when this checkout has it, else None."""
    try:
        from torch_dedup.hashing.colour_dct import colour_dct_features
        from torch_dedup.hashing.colour_dct_fit import DEFAULT_THRESHOLD, fit_colour_dct_images
    except ImportError:
        return None
    return SimpleNamespace(colour_dct_features=colour_dct_features, fit_colour_dct_images=fit_colour_dct_images,
                           DEFAULT_THRESHOLD=DEFAULT_THRESHOLD)


@dataclass
class Codes:
    label: str
    train: np.ndarray   # (N_train, W) uint64
    test: np.ndarray
    copies: np.ndarray
    bits: int
    default_t: int
    seconds: float


def hash_method(label: str, method: str, hash_size: int, train, test, copies) -> Codes:
    """Hash the three lists with one method (in this process, no sidecar)."""
    from torch_dedup.hashing import hash_images

    t0 = time.perf_counter()
    parts = [_as_words(hash_images(p, method, hash_size, workers=0)) for p in (train, test, copies)]
    bits = len(method.split("+")) * hash_size * hash_size
    return Codes(label, *parts, bits=bits, default_t=round(6 * bits / 64), seconds=time.perf_counter() - t0)


def fit_sample(n: int, seed: int, limit: int | None = None) -> np.ndarray:
    """Sorted indices of the seeded sample (at most ``limit``, default :data:`FIT_SAMPLE`, of ``n``)
    the colour_dct fit sees."""
    limit = FIT_SAMPLE if limit is None else limit
    rng = np.random.default_rng(seed + 2)
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, limit, replace=False))


@dataclass
class ColourDctRun:
    """colour_dct codes at each code length, the whitened features, and the fit's cost."""
    codes: list           # Codes, one per code length
    whitened: tuple       # (train, test, copies) float32 whitened features, for the cosine row
    fit_seconds: float    # one fit_colour_dct_images call (decoding its sample included)
    n_fit: int
    fit256: object = None   # the 256-bit fit (the views rows code with it)
    feature_seconds: float = 0.0


def hash_colour_dct(mod, train, test, copies, seed: int = 0, bits=(256,)) -> ColourDctRun:
    """colour_dct codes the way the library makes them: ``fit_colour_dct_images`` on a seeded
    sample (at most :data:`FIT_SAMPLE`) of the planted training set (train + copies), the same
    fit applied to train, test and copies. One fit per code length (same seed)."""
    t0 = time.perf_counter()
    feats = [mod.colour_dct_features(p) for p in (train, test, copies)]
    t_feat = time.perf_counter() - t0
    planted = list(train) + list(copies)
    pick = fit_sample(len(planted), seed)
    default = getattr(mod, "DEFAULT_THRESHOLD", None)
    out, whitened, fit_s, fit256 = [], None, [], None
    for b in bits:
        t1 = time.perf_counter()
        fit = mod.fit_colour_dct_images([planted[i] for i in pick], bits=b)
        fit_s.append(time.perf_counter() - t1)
        parts = [_as_words(fit.codes(f)) for f in feats]
        default_t = round(6 * b / 64) if default is None else round(int(default) * b / 256)
        out.append(Codes(f"colour_dct {b}", *parts, bits=b, default_t=default_t,
                         seconds=t_feat + time.perf_counter() - t1))
        if whitened is None and hasattr(fit, "whiten"):
            whitened = tuple(np.asarray(fit.whiten(f), dtype=np.float32) for f in feats)
        if b == 256:
            fit256 = fit
    return ColourDctRun(out, whitened, min(fit_s), len(pick), fit256 if 256 in bits else None, t_feat)


# --------------------------------------------------------------------------- exact nearest neighbours

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1, _S2, _S4, _S56 = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


@numba.njit(nogil=True, fastmath=False)
def _popcount(x):
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return (x * _H01) >> _S56


@numba.njit(parallel=True, nogil=True, fastmath=False)
def _nearest(q, idx, item, skip_a, skip_b, out_d, out_j):
    for i in numba.prange(q.shape[0]):
        best = 1 << 30
        bj = -1
        for j in range(idx.shape[0]):
            if item[j] == skip_a[i] or item[j] == skip_b[i]:
                continue
            d = 0
            for w in range(q.shape[1]):
                d += _popcount(q[i, w] ^ idx[j, w])
            if d < best:
                best = d
                bj = j
        out_d[i] = best
        out_j[i] = bj


def nearest(query: np.ndarray, index: np.ndarray, skip_a=None, skip_b=None) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's smallest Hamming distance over ``index`` (rows ``skip_a[i]``,
    ``skip_b[i]`` left out; -1 leaves none out) and the first index row at that distance."""
    n = len(query)
    none = np.full(n, -1, dtype=np.int64)
    skip_a = none if skip_a is None else np.asarray(skip_a, dtype=np.int64)
    skip_b = none if skip_b is None else np.asarray(skip_b, dtype=np.int64)
    d = np.empty(n, dtype=np.int64)
    j = np.empty(n, dtype=np.int64)
    _nearest(np.ascontiguousarray(query), np.ascontiguousarray(index), np.arange(len(index), dtype=np.int64),
             skip_a, skip_b, d, j)
    return d, j


def nearest_item(query, index, item, skip_a, skip_b) -> np.ndarray:
    """Each query row's smallest Hamming distance over the ``index`` rows whose ``item`` is neither
    ``skip_a[i]`` nor ``skip_b[i]``."""
    d = np.empty(len(query), dtype=np.int64)
    j = np.empty(len(query), dtype=np.int64)
    _nearest(np.ascontiguousarray(query), np.ascontiguousarray(index), np.asarray(item, np.int64),
             np.asarray(skip_a, np.int64), np.asarray(skip_b, np.int64), d, j)
    return d


def hamming_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance of two ``(N, W)`` uint64 arrays."""
    return np.bitwise_count(a ^ b).sum(axis=1).astype(np.int64)


# --------------------------------------------------------------------------- evaluation


@dataclass
class Result:
    label: str
    bits: int
    seconds: float
    default_t: int
    share: np.ndarray            # flagged share of test images at t = 0..bits
    found_at: np.ndarray         # per copy: smallest t at which it counts as found (bits + 1: never)
    test_d: np.ndarray           # per test image: distance to its nearest training image
    test_j: np.ndarray           # ... and that image's index
    rows: dict = field(default_factory=dict)

    def threshold_for(self, target: float) -> int:
        """Largest t whose flagged share is at most ``target`` (0 when even t=0 flags more)."""
        ok = np.nonzero(self.share <= target)[0]
        return int(ok[-1]) if len(ok) else 0

    def recall(self, t: int, mask=None) -> float:
        f = self.found_at if mask is None else self.found_at[mask]
        return float(np.mean(f <= t)) if len(f) else float("nan")

    def recall_at_share(self, target: float, mask=None) -> float:
        """Recall at exactly ``target`` flagged share, interpolating between t and t+1."""
        t = self.threshold_for(target)
        s0, r0 = self.share[t], self.recall(t, mask)
        if t + 1 >= len(self.share) or self.share[t] > target:
            return r0
        s1, r1 = self.share[t + 1], self.recall(t + 1, mask)
        return r0 if s1 == s0 else r0 + (r1 - r0) * (target - s0) / (s1 - s0)


def evaluate(codes: Codes, originals: np.ndarray) -> Result:
    """Flagged share of the test set against train, and when each planted copy is found."""
    test_d, test_j = nearest(codes.test, codes.train)
    share = np.array([np.mean(test_d <= t) for t in range(codes.bits + 1)])
    n_train = len(codes.train)
    index = np.concatenate([codes.train, codes.copies])       # the planted training set
    own = n_train + np.arange(len(codes.copies))
    d_other, _ = nearest(codes.copies, index, skip_a=own, skip_b=originals)
    d_orig = hamming_rows(codes.copies, codes.train[originals])
    found_at = np.where(d_orig <= d_other, d_orig, codes.bits + 1)
    return Result(codes.label, codes.bits, codes.seconds, codes.default_t, share, found_at, test_d, test_j)


def view_row(codes: Codes, label: str, name: str, method: str, hash_size: int, train, copies, originals,
             fit=None, seconds: float = 0.0) -> Result:
    """``codes`` (the own codes) with ``views=name``: the library's ``view_codes`` of the training
    files and the copies (the same method, size and fit), evaluated by :func:`evaluate_views`."""
    from torch_dedup.hashing import view_codes

    t0 = time.perf_counter()
    tv, _, _ = view_codes(list(train), name, method, hash_size, fit=fit)
    cv, _, _ = view_codes(list(copies), name, method, hash_size, fit=fit)
    return evaluate_views(codes, tv, cv, originals, label, seconds + time.perf_counter() - t0)


def evaluate_views(codes: Codes, train_views: np.ndarray, copy_views: np.ndarray, originals: np.ndarray,
                   label: str, seconds: float) -> Result:
    """:func:`evaluate` with K view codes per training item (train and copies): the item distance of
    ``torch_dedup.hamming.views`` (an item's own code against the other's own code or views, an
    item's views against the other's own code). A test image is compared with every code of a
    training item (``against=`` in the library: the test set has no views)."""
    from torch_dedup.hamming import view_distances

    n, m, k = len(codes.train), len(codes.copies), train_views.shape[1]
    w = codes.train.shape[1]
    rows_train = np.concatenate([codes.train, train_views.transpose(1, 0, 2).reshape(k * n, w)])
    test_d, test_j = nearest(codes.test, rows_train)
    share = np.array([np.mean(test_d <= t) for t in range(codes.bits + 1)])
    own = np.concatenate([codes.train, codes.copies])              # items: train, then the copies
    allv = np.concatenate([train_views, copy_views])
    rows = np.concatenate([own, allv.transpose(1, 0, 2).reshape(k * (n + m), w)])
    item = np.tile(np.arange(n + m), k + 1)
    me = n + np.arange(m)
    d_a = nearest_item(codes.copies, rows, item, me, originals)               # own code vs others' codes and views
    d_b = nearest_item(copy_views.reshape(m * k, w), own, np.arange(n + m),   # views vs others' own codes
                       np.repeat(me, k), np.repeat(originals, k)).reshape(m, k).min(axis=1)
    d_other = np.minimum(d_a, d_b)
    d_orig = view_distances(own, allv, me, originals)
    found_at = np.where(d_orig <= d_other, d_orig, codes.bits + 1)
    default = codes.default_t
    return Result(label, codes.bits, seconds, default, share, found_at, test_d, test_j % n)


def _unit(z: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.where(n > 0, n, 1)).astype(np.float32)


def _cos_nearest(q: np.ndarray, idx: np.ndarray, skip_a=None, skip_b=None, chunk: int = 1024):
    """Each unit query row's largest cosine over unit ``idx`` rows (``skip_*`` rows left out) and its row."""
    best = np.empty(len(q))
    arg = np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), chunk):
        sims = q[s:s + chunk] @ idx.T
        rows = np.arange(sims.shape[0])
        for skip in (skip_a, skip_b):
            if skip is not None:
                sims[rows, skip[s:s + chunk]] = -np.inf
        arg[s:s + chunk] = sims.argmax(1)
        best[s:s + chunk] = sims[rows, arg[s:s + chunk]]
    return best, arg


def _cos_level(cos: np.ndarray) -> np.ndarray:
    return np.ceil(np.arccos(np.clip(cos, -1, 1)) / np.pi * COSINE_LEVELS - 1e-9).astype(np.int64)


def evaluate_cosine(whitened: tuple, originals: np.ndarray, seconds: float, default_t: int) -> Result:
    """:func:`evaluate` on the exact cosine of whitened features (brute force, float32 BLAS)."""
    tr, te, cp = (_unit(z) for z in whitened)
    test_c, test_j = _cos_nearest(te, tr)
    test_d = _cos_level(test_c)
    share = np.array([np.mean(test_d <= t) for t in range(COSINE_LEVELS + 1)])
    index = np.concatenate([tr, cp])
    own = len(tr) + np.arange(len(cp))
    c_other, _ = _cos_nearest(cp, index, own, originals)
    c_orig = np.einsum("ij,ij->i", cp, tr[originals])
    d_orig, d_other = _cos_level(c_orig), _cos_level(c_other)
    found_at = np.where(d_orig <= d_other, d_orig, COSINE_LEVELS + 1)
    return Result(COLOUR_DCT_COSINE, COSINE_LEVELS, seconds, default_t, share, found_at, test_d, test_j)


# --------------------------------------------------------------------------- gallery


def _thumb(path: str, side: int) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB").resize((side, side), Image.Resampling.NEAREST)


def contact_sheet(pairs: list[tuple[str, str, str]], path: Path, cols: int = 6, side: int = 64) -> None:
    """PNG of (left image, right image, caption) cells."""
    rows = max(1, -(-len(pairs) // cols))
    cell_w, cell_h = 2 * side + 12, side + 14
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (a, b, caption) in enumerate(pairs):
        x, y = (n % cols) * cell_w, (n // cols) * cell_h
        sheet.paste(_thumb(a, side), (x + 2, y + 2))
        sheet.paste(_thumb(b, side), (x + side + 4, y + 2))
        draw.text((x + 2, y + side + 2), caption, fill="black")
    sheet.save(path)


def write_gallery(out: Path, results: list[Result], train, test, copies: list[Copy], per_sheet: int = 48,
                  seed: int = 0) -> list[tuple[str, str]]:
    """Per method, sheets of test images flagged on the real test set (test | nearest train):
    those within its 1 % threshold, and those that its 4 % threshold adds (a random sample
    of each, ordered by distance); and a sheet of the planted copies phash 64 misses at 4 %."""
    rng = np.random.default_rng(seed)
    sheets = []
    for r in results:
        t1, t4 = r.threshold_for(0.01), r.threshold_for(0.04)
        slug = r.label.replace(" ", "_").replace("+", "-")
        for name, lo, hi, what in ((f"flagged_{slug}.png", -1, t1, f"t={t1}, {r.share[t1]:.2%} of test flagged"),
                                   (f"flagged4_{slug}.png", t1, t4,
                                    f"what t={t4} adds to t={t1} ({r.share[t4]:.2%} of test flagged)")):
            flagged = np.nonzero((r.test_d > lo) & (r.test_d <= hi))[0]
            pick = np.sort(rng.choice(flagged, size=min(per_sheet, len(flagged)), replace=False))
            pick = pick[np.argsort(r.test_d[pick], kind="stable")]
            contact_sheet([(test[i], train[r.test_j[i]], f"d={r.test_d[i]}") for i in pick], out / name)
            sheets.append((name, f"{r.label}: test | nearest train, {what}; {len(pick)} of {len(flagged)} shown"))
    base = next((r for r in results if r.label == "phash 64"), None)
    if base is not None:
        t = base.threshold_for(0.04)
        missed = np.nonzero(base.found_at > t)[0][:per_sheet]
        contact_sheet([(train[copies[i].original], copies[i].path, copies[i].description[:20]) for i in missed],
                      out / "missed_phash_64.png")
        sheets.append(("missed_phash_64.png", f"planted copies phash 64 misses at t={t}: original | copy"))
    body = "\n".join(f"<h2>{html.escape(cap)}</h2>\n<img src=\"{html.escape(name)}\">" for name, cap in sheets)
    (out / "index.html").write_text(f"<!doctype html><meta charset=utf-8><title>near-duplicate benchmark</title>\n"
                                    f"<h1>What each method flags</h1>\n{body}\n")
    return sheets


# --------------------------------------------------------------------------- report


def table(results: list[Result]) -> list[str]:
    """The main table, markdown."""
    lines = [("| method | bits | t @1% (share) | recall | recall @1% interp | t @4% (share) | recall | "
             "recall @4% interp | default t | share flagged | recall | hash s |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        t1, t4, td = r.threshold_for(0.01), r.threshold_for(0.04), r.default_t
        lines.append(f"| {r.label} | {r.bits} | {t1} ({r.share[t1]:.2%}) | {r.recall(t1):.3f} | "
                     f"{r.recall_at_share(0.01):.3f} | {t4} ({r.share[t4]:.2%}) | {r.recall(t4):.3f} | "
                     f"{r.recall_at_share(0.04):.3f} | {td} | {r.share[min(td, r.bits)]:.2%} | "
                     f"{r.recall(td):.3f} | {r.seconds:.1f} |")
    return lines


def edit_table(results: list[Result], copies: list[Copy]) -> list[str]:
    """Recall per edit type at exactly 1 % / 4 % flagged share (interpolated), markdown."""
    kinds = [k for k in (*EDITS, "combination") if any(c.kind == k for c in copies)]
    kind = np.array([c.kind for c in copies])
    lines = ["| edit (copies) | " + " | ".join(r.label for r in results) + " |",
             "|---|" + "---:|" * len(results)]
    for k in kinds:
        m = kind == k
        cells = [f"{r.recall_at_share(0.01, m):.2f} / {r.recall_at_share(0.04, m):.2f}" for r in results]
        lines.append(f"| {k} ({int(m.sum())}) | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> list[Result]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="cifar10-jpg.tar.gz, or a folder with train/<class>/* and test/<class>/* (default: %(default)s)")
    ap.add_argument("--k", type=int, default=500, help="planted copies (default 500)")
    ap.add_argument("--train-n", type=int, default=None, help="hash only this many training images (seeded; default all)")
    ap.add_argument("--test-n", type=int, default=None, help="hash only this many test images (seeded; default all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the choice and the edits (default 0)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated labels to run (default all: " + ", ".join(m[0] for m in METHODS)
                    + f", {PHASH_VIEWS}"
                    + f", and {COLOUR_DCT}, {COLOUR_DCT_512}, {COLOUR_DCT_1024}, {COLOUR_DCT_COSINE}, "
                    f"{COLOUR_DCT_VIEWS}, {COLOUR_DCT_VIEWS_ROT} when "
                    "torch_dedup.hashing.colour_dct exists)")
    ap.add_argument("--out", type=Path, required=True, help="folder for edits.csv, results.md and the gallery (created)")
    args = ap.parse_args(argv)
    if args.k < 1:
        ap.error(f"--k {args.k}: must be >= 1")

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_neardup_"))
    try:
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, tmp: Path) -> list[Result]:
    t_start = time.perf_counter()
    root = open_tree(args.data, tmp / "data")
    train, test = list_split(root, "train"), list_split(root, "test")
    rng = np.random.default_rng(args.seed + 1)
    if args.train_n is not None and args.train_n < len(train):
        train = [train[i] for i in np.sort(rng.choice(len(train), args.train_n, replace=False))]
    if args.test_n is not None and args.test_n < len(test):
        test = [test[i] for i in np.sort(rng.choice(len(test), args.test_n, replace=False))]
    if not train or not test:
        sys.exit(f"bench_neardup: {root} has {len(train)} training and {len(test)} test images; need some of each")
    copy_dir = args.out / "copies"
    shutil.rmtree(copy_dir, ignore_errors=True)
    copies = make_copies(train, args.k, copy_dir, seed=args.seed)
    with open(args.out / "edits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["copy", "original", "kind", "edits"])
        for c in copies:
            w.writerow([os.path.basename(c.path), os.path.relpath(train[c.original], root), c.kind, c.description])
    originals = np.array([c.original for c in copies], dtype=np.int64)
    copy_paths = [c.path for c in copies]
    print(f"{len(train)} train, {len(test)} test, {len(copies)} planted copies "
          f"({', '.join(f'{k} {sum(c.kind == k for c in copies)}' for k in (*EDITS, 'combination'))})", flush=True)

    wanted = None if args.methods is None else {m.strip() for m in args.methods.split(",")}
    mod = colour_dct_module()
    if mod is None:
        print("torch_dedup.hashing.colour_dct not found in this checkout: colour_dct skipped", flush=True)
    results = []
    for label, method, size in METHODS:
        with_views = label == "phash 256" and (wanted is None or PHASH_VIEWS in wanted)
        if wanted is None or label in wanted or with_views:
            codes = hash_method(label, method, size, train, test, copy_paths)
            if wanted is None or label in wanted:
                results.append(evaluate(codes, originals))
                print(f"  {label}: hashed in {results[-1].seconds:.1f} s", flush=True)
            if with_views:
                results.append(view_row(codes, PHASH_VIEWS, "shift", method, size, train, copy_paths, originals,
                                        seconds=codes.seconds))
                print(f"  {PHASH_VIEWS}: hashed with its views in {results[-1].seconds:.1f} s", flush=True)
    dct_labels = [lab for lab in (COLOUR_DCT, COLOUR_DCT_512, COLOUR_DCT_1024, COLOUR_DCT_COSINE, COLOUR_DCT_VIEWS,
                                  COLOUR_DCT_VIEWS_ROT) if wanted is None or lab in wanted]
    if mod is not None and dct_labels:
        bits = tuple(b for b, lab in ((256, COLOUR_DCT), (512, COLOUR_DCT_512), (1024, COLOUR_DCT_1024))
                     if lab in dct_labels) or (256,)
        view_sets = [(lab, name) for lab, name in ((COLOUR_DCT_VIEWS, "shift"), (COLOUR_DCT_VIEWS_ROT, "shift+rotate"))
                     if lab in dct_labels]
        if view_sets and 256 not in bits:
            bits = (256, *bits)
        run = hash_colour_dct(mod, train, test, copy_paths, seed=args.seed, bits=bits)
        print(f"  colour_dct: fit_colour_dct_images on {run.n_fit} images in {run.fit_seconds:.1f} s", flush=True)
        for codes in run.codes:
            if codes.label in dct_labels:
                results.append(evaluate(codes, originals))
                print(f"  {codes.label}: features, fit and codes in {codes.seconds:.1f} s", flush=True)
        for lab, name in view_sets:
            base = next(c for c in run.codes if c.bits == 256)
            results.append(view_row(base, lab, name, "colour_dct", 16, train, copy_paths, originals, fit=run.fit256,
                                    seconds=base.seconds))
            print(f"  {lab}: features, fit, codes and views in {results[-1].seconds:.1f} s", flush=True)
        if COLOUR_DCT_COSINE in dct_labels and run.whitened is not None:
            t = run.codes[0]
            results.append(evaluate_cosine(run.whitened, originals, t.seconds,
                                           round(t.default_t * COSINE_LEVELS / t.bits)))

    sheets = write_gallery(args.out, results, train, test, copies, seed=args.seed)
    lines = [(f"Planted {len(copies)} copies into {len(train)} training images; flagged share over "
             f"{len(test)} test images."), "", *table(results), "",
             "Recall per edit type at exactly 1 % / 4 % flagged share (interpolated):", "",
             *edit_table(results, copies)]
    print("\n" + "\n".join(lines))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"\ngallery: {args.out / 'index.html'} ({len(sheets)} sheets); edits: {args.out / 'edits.csv'}; "
          f"total {time.perf_counter() - t_start:.0f} s")
    return results


if __name__ == "__main__":
    main()
