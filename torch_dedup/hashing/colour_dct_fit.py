"""The colour DCT fit: a dataset's whitening and hyperplanes that turn features into codes.

:func:`fit_colour_dct` (or :func:`fit_colour_dct_images`, from images) learns, once, per
coefficient of :func:`~torch_dedup.hashing.colour_dct.colour_dct_features` a centre (median)
and a weight from a dataset's features, plus seeded Gaussian hyperplanes. The whitened vector
is ``scale * sign(f - centre) * sqrt(|f - centre|)``: the signed square root evens out the
coefficients' magnitudes within each image (a few large low frequencies no longer decide the
cosine), which on CIFAR-10 beats every per-coefficient scaling tried.
:meth:`ColourDctFit.codes` turns any features into ``bits``-bit sign codes, packed like every
hash of the library, which :func:`torch_dedup.hamming.hamming_pairs` searches exactly. A fit
is stored as plain arrays and a small JSON-able dict (:meth:`ColourDctFit.to_arrays`), with a
fingerprint. Apply one fit to a dataset and its ``against=`` sets, shards and ranks, so that
they are compared in one space.

For random hyperplanes, ``hamming / bits`` estimates ``angle / pi`` between the whitened
feature vectors, so a Hamming threshold means a cosine (:func:`threshold_for_cosine`,
:func:`cosine_for_threshold`, :data:`DEFAULT_THRESHOLD`); :meth:`ColourDctFit.cosine`
re-checks candidate pairs exactly. The per-image features are in
:mod:`torch_dedup.hashing.colour_dct`. See docs/hashing.md, "Whitened colour DCT codes
(colour_dct)".
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from torch_dedup._checks import check_int
from torch_dedup.hashing import _colour_dct_kernels as _k
from torch_dedup.hashing._pack import packed_words
from torch_dedup.hashing.colour_dct import (
    _C_KEEP,
    _PARALLEL_MIN,
    COLOUR_DCT_DIMS,
    COLOUR_DCT_VERSION,
    _num_threads,
    colour_dct_features,
)

__all__ = [
    "ColourDctFit", "DEFAULT_THRESHOLD", "cosine_for_threshold", "fit_colour_dct", "fit_colour_dct_images",
    "threshold_for_cosine",
]

#: A starting Hamming threshold for the default 256-bit codes: on CIFAR-10 (fit by
#: fit_colour_dct_images on 20,000 training images), 0.91 % of the test images have a training
#: image within it (cosine ~0.964; 24 flags 1.13 %). For other code lengths:
#: ``threshold_for_cosine(cosine_for_threshold(DEFAULT_THRESHOLD, 256), bits)``.
DEFAULT_THRESHOLD = 22
#: Robust standard deviation of a normal from its median absolute deviation.
_MAD_TO_STD = 1.482602218505602


# --------------------------------------------------------------------------- fit and codes


def _as_features(features, name: str = "features") -> np.ndarray:
    arr = np.asarray(features)
    if arr.ndim == 1 and arr.shape[0] == COLOUR_DCT_DIMS:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != COLOUR_DCT_DIMS:
        raise ValueError(f"{name} must have shape (N, {COLOUR_DCT_DIMS}) (from colour_dct_features), "
                         f"got shape {arr.shape}")
    if arr.dtype != np.float32:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must be float32 features from colour_dct_features, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; pass features from colour_dct_features")
    return np.ascontiguousarray(arr)


def _check_bits(bits) -> int:
    bits = check_int("bits", bits, 64, 1024, hint="a multiple of 64: 64, 128, 256, ...")
    if bits % 64:
        raise ValueError(f"bits={bits} must be a multiple of 64 in [64, 1024] (whole uint64 words), e.g. 256")
    return bits


def _check_power(power) -> float:
    if isinstance(power, bool) or not isinstance(power, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(power)) or not 0.0 <= float(power) <= 2.0:
        raise ValueError(f"power={power!r} must be a number in [0, 2] (0.5: square-rooted scale, the default; "
                         f"1: unit spread)")
    return float(power)


def _check_chroma_weight(chroma_weight) -> float:
    if isinstance(chroma_weight, bool) or not isinstance(chroma_weight, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(chroma_weight)) or not 0.0 <= float(chroma_weight) <= 4.0:
        raise ValueError(f"chroma_weight={chroma_weight!r} must be a number in [0, 4] (1: plain whitening, "
                         f"0: luma only; 0.1 is the default)")
    return float(chroma_weight)


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    arr.setflags(write=False)
    return arr


def _fingerprint(meta: dict, centre: np.ndarray, scale: np.ndarray, planes: np.ndarray) -> str:
    """BLAKE2b of the defining settings and the exact little-endian float32 bytes of the arrays."""
    h = hashlib.blake2b(digest_size=16)
    keys = ("version", "dims", "bits", "power", "seed", "chroma_weight", "centre", "spread", "transform")
    h.update(json.dumps({k: meta[k] for k in keys}, sort_keys=True, separators=(",", ":")).encode())
    for arr in (centre, scale, planes):
        h.update(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class ColourDctFit:
    """A whitening and hyperplane projection fitted once on a dataset's colour DCT features.

    Apply the *same* fit to everything compared with that dataset (its ``against=`` sets,
    shards, ranks): codes of different fits are not comparable. Build one with
    :func:`fit_colour_dct`; store it with :meth:`to_arrays`, restore it with
    :meth:`from_arrays`.

    Attributes:
        centre: float32 ``(133,)`` per-coefficient median of the fit's features.
        scale: float32 ``(133,)`` per-coefficient weight ``spread ** (0.5 - power)``,
            times ``chroma_weight`` for Cb and Cr.
        planes: float32 ``(133, bits)`` seeded Gaussian hyperplanes.
        bits: code length, a multiple of 64 in [64, 1024].
        power: the whitening power the scale was made with.
        seed: the seed of the hyperplanes.
        n_fit: number of feature rows the fit was made from (informational).
        chroma_weight: the factor the Cb and Cr scales were multiplied by (already in ``scale``).
        fingerprint: BLAKE2b (32 hex digits) of the settings and the three arrays' bytes.
    """

    centre: np.ndarray
    scale: np.ndarray
    planes: np.ndarray
    bits: int
    power: float
    seed: int
    n_fit: int
    chroma_weight: float = 0.1
    fingerprint: str = ""

    def __post_init__(self):
        bits = _check_bits(self.bits)
        d = COLOUR_DCT_DIMS
        for name, shape in (("centre", (d,)), ("scale", (d,)), ("planes", (d, bits))):
            arr = np.asarray(getattr(self, name))
            if arr.shape != shape or not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
                raise ValueError(f"ColourDctFit.{name} must be finite float32 of shape {shape}, "
                                 f"got {arr.dtype} {arr.shape}")
            object.__setattr__(self, name, _frozen(arr))
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "power", _check_power(self.power))
        object.__setattr__(self, "chroma_weight", _check_chroma_weight(self.chroma_weight))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "n_fit", int(self.n_fit))
        expected = _fingerprint(self._meta_core(), self.centre, self.scale, self.planes)
        if self.fingerprint and self.fingerprint != expected:
            raise ValueError(f"ColourDctFit fingerprint {self.fingerprint!r} does not match its arrays and "
                             f"settings ({expected!r}): the stored fit is corrupt or was edited; refit it")
        object.__setattr__(self, "fingerprint", expected)

    def _meta_core(self) -> dict:
        return {"version": COLOUR_DCT_VERSION, "dims": COLOUR_DCT_DIMS, "bits": self.bits, "power": self.power,
                "seed": self.seed, "chroma_weight": self.chroma_weight, "centre": "median", "spread": "mad",
                "transform": "signed_sqrt"}

    @property
    def words(self) -> int:
        """``uint64`` words per code (``bits // 64``)."""
        return packed_words(self.bits)

    def whiten(self, features) -> np.ndarray:
        """``scale * sign(d) * sqrt(|d|)``, ``d = features - centre``, as float32 ``(N, 133)``.

        The space codes and cosines live in; float32 throughout, so these are the exact
        values the codes kernel projects.
        """
        d = _as_features(features) - self.centre
        v = np.sqrt(np.abs(d)) * self.scale
        return np.where(d < 0, -v, v)

    def codes(self, features) -> np.ndarray:
        """Sign codes of whitened features on the hyperplanes, packed for :mod:`torch_dedup.hamming`.

        Bit ``j`` is ``whiten(f) @ planes[:, j] > 0`` (summed in float32 in a fixed order); bit 0 is the most significant bit of
        word 0 (the library's packing). Deterministic: the same features and fit give the
        same bits in any batch, thread count or process.

        Args:
            features: float32 ``(N, 133)`` from :func:`colour_dct_features`.

        Returns:
            ``uint64`` ``(N,)`` for 64 bits, else ``(N, bits // 64)``.

        Example:
            >>> from torch_dedup.embedded import load_sample
            >>> f = colour_dct_features(load_sample(100)[0])
            >>> fit_colour_dct(f, bits=128).codes(f).shape
            (100, 2)
        """
        f = _as_features(features)
        words = np.zeros((f.shape[0], self.words), dtype=np.uint64)
        if f.shape[0]:
            parallel = f.shape[0] >= _PARALLEL_MIN and _num_threads() > 1
            kernel = _k.codes_kernel_parallel if parallel else _k.codes_kernel
            kernel(f, self.centre, self.scale, self.planes, words)
        return words[:, 0].copy() if self.words == 1 else words

    def cosine(self, features_a, features_b) -> np.ndarray:
        """Cosine similarity of whitened features, row by row (float64 ``(N,)``).

        The exact re-check of candidate pairs from a Hamming search:
        ``fit.cosine(f[pairs[:, 0]], f[pairs[:, 1]])``. A row that is all zero after
        whitening has cosine 0 with everything (1 with itself only if both are zero).

        Args:
            features_a: ``(N, 133)`` (or one ``(133,)`` row, broadcast).
            features_b: ``(N, 133)`` (or one ``(133,)`` row, broadcast).
        """
        a = self.whiten(features_a).astype(np.float64)
        b = self.whiten(features_b).astype(np.float64)
        if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
            raise ValueError(f"features_a has {a.shape[0]} rows and features_b {b.shape[0]}; pass equal counts "
                             f"(or one row to compare with all)")
        dot = np.einsum("ij,ij->i", *np.broadcast_arrays(a, b))
        na = np.sqrt(np.einsum("ij,ij->i", a, a))
        nb = np.sqrt(np.einsum("ij,ij->i", b, b))
        den = np.broadcast_to(na, dot.shape) * np.broadcast_to(nb, dot.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(den > 0, dot / np.where(den > 0, den, 1.0), np.where((na == 0) & (nb == 0), 1.0, 0.0))
        return np.clip(cos, -1.0, 1.0)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The fit as plain arrays and a small JSON-able dict, for a sidecar or plan file (no pickle).

        Returns:
            ``(arrays, meta)``: ``arrays`` has float32 ``centre``, ``scale``, ``planes``;
            ``meta`` has ``version``, ``dims``, ``bits``, ``power``, ``seed``,
            ``chroma_weight``, ``centre`` and ``spread`` (the statistics used),
            ``transform`` (``"signed_sqrt"``), ``n_fit`` and ``fingerprint``.
        """
        arrays = {"centre": self.centre.copy(), "scale": self.scale.copy(), "planes": self.planes.copy()}
        meta = dict(self._meta_core(), n_fit=self.n_fit, fingerprint=self.fingerprint)
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> ColourDctFit:
        """Rebuild a fit from :meth:`to_arrays`' output, checking its fingerprint.

        Raises:
            ValueError: a missing key, another feature version, or a fingerprint that does
                not match the arrays (a corrupt or edited file: refit).
        """
        missing = [k for k in ("centre", "scale", "planes") if k not in arrays]
        missing += [k for k in ("version", "bits", "power", "seed", "fingerprint") if k not in meta]
        if missing:
            raise ValueError(f"a stored colour_dct fit lacks {missing}; store what ColourDctFit.to_arrays returns")
        if meta["version"] != COLOUR_DCT_VERSION or int(meta.get("dims", COLOUR_DCT_DIMS)) != COLOUR_DCT_DIMS:
            raise ValueError(f"a stored colour_dct fit has version {meta['version']!r}; this library makes "
                             f"{COLOUR_DCT_VERSION!r} features: recompute the features and refit")
        return cls(centre=np.asarray(arrays["centre"]), scale=np.asarray(arrays["scale"]),
                   planes=np.asarray(arrays["planes"]), bits=int(meta["bits"]), power=float(meta["power"]),
                   seed=int(meta["seed"]), n_fit=int(meta.get("n_fit", 0)),
                   chroma_weight=float(meta.get("chroma_weight", 0.1)), fingerprint=str(meta["fingerprint"]))


def fit_colour_dct(features, *, bits: int = 256, power: float = 0.5, seed: int = 0,
                   chroma_weight: float = 0.1) -> ColourDctFit:
    """Fit the whitening and hyperplanes of colour DCT codes on a dataset's features.

    Per coefficient: centre = median, spread = 1.4826 x median absolute deviation (a
    robust standard deviation); a spread at or below 1 % of the median spread (a
    coefficient that hardly varies in this data, e.g. the chroma of a grey dataset) is
    replaced by the median spread, so it gets typical weight, not an enormous one. A
    feature ``f`` is whitened to ``scale * sign(f - centre) * sqrt(|f - centre|)`` with
    ``scale = spread ** (0.5 - power)``: at the default ``power=0.5`` every coefficient
    keeps its natural (square-rooted) size, at ``power=1`` each has unit robust spread.
    The Cb and Cr scales are then multiplied by ``chroma_weight``: chroma is what JPEG
    re-encoding (4:2:0, coarse chroma tables) and greyscale copies change most, so
    full-weight chroma loses those copies (measured in docs/hashing.md). Hyperplanes:
    ``np.random.default_rng(seed)`` standard normal ``(133, bits)``, float32.
    Deterministic for the same features.

    Args:
        features: float32 ``(N, 133)`` from :func:`colour_dct_features`, N >= 1 (use a
            few thousand images or more of the dataset; a seeded subsample is fine).
        bits: code length, a multiple of 64 in [64, 1024].
        power: whitening power in [0, 2]; 0.5 keeps the square-rooted scale, 1 gives
            every coefficient unit robust spread.
        seed: seed of the hyperplanes.
        chroma_weight: factor in [0, 4] on the whitened Cb and Cr coefficients (1: the
            plain whitening, 0: luma only).

    Returns:
        A :class:`ColourDctFit`.

    Raises:
        ValueError: bad features, bits, power, seed or chroma_weight.

    Example:
        >>> from torch_dedup.embedded import load_sample
        >>> fit = fit_colour_dct(colour_dct_features(load_sample(200)[0]))
        >>> fit.bits, len(fit.fingerprint)
        (256, 32)
    """
    f = _as_features(features)
    if f.shape[0] < 1:
        raise ValueError("features has no rows; fit on the features of at least one image (thousands is better)")
    bits = _check_bits(bits)
    power = _check_power(power)
    chroma_weight = _check_chroma_weight(chroma_weight)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    f64 = f.astype(np.float64)
    centre = np.median(f64, axis=0)
    spread = np.median(np.abs(f64 - centre), axis=0) * _MAD_TO_STD
    positive = spread[spread > 0]
    typical = float(np.median(positive)) if positive.size else 1.0
    spread = np.where(spread > 0.01 * typical, spread, typical)
    scale = spread ** (0.5 - power)
    scale[COLOUR_DCT_DIMS - 2 * (_C_KEEP * _C_KEEP - 1):] *= chroma_weight
    planes = np.random.default_rng(seed).standard_normal((COLOUR_DCT_DIMS, bits), dtype=np.float32)
    return ColourDctFit(centre=centre.astype(np.float32), scale=scale.astype(np.float32), planes=planes,
                        bits=bits, power=power, seed=seed, n_fit=f.shape[0], chroma_weight=chroma_weight)


def fit_colour_dct_images(images, *, bits: int = 256, seed: int = 0) -> ColourDctFit:
    """Fit colour DCT codes on a sample of a dataset's images: features, then :func:`fit_colour_dct`.

    The entry point the library uses: it passes a seeded sample of the dataset (at most
    20,000 images; 20,000 CIFAR-10 JPEGs take about 5 s on two cores, nearly all of it
    decoding). The defaults (``power=0.5``, ``chroma_weight=0.1``) are the ones measured
    best in ``benchmarks/bench_neardup.py``; call :func:`fit_colour_dct` on features to
    choose others. The same images in the same order give the same fit, bit for bit.

    Args:
        images: what :func:`colour_dct_features` accepts: a stacked ``uint8`` array or
            tensor, or a sequence of PIL images, file paths, arrays or tensors; at least
            one image (a few thousand or more for a stable fit).
        bits: code length, a multiple of 64 in [64, 1024].
        seed: seed of the hyperplanes, >= 0.

    Returns:
        A :class:`ColourDctFit`.

    Raises:
        ValueError: no images, an unsupported input, bad bits or seed.
        ImageDecodeError: a file or lazy PIL image could not be decoded.

    Example:
        >>> from torch_dedup.embedded import load_sample
        >>> fit = fit_colour_dct_images(load_sample(200)[0], bits=128)
        >>> fit.bits, fit.words, fit.n_fit
        (128, 2, 200)
    """
    bits = _check_bits(bits)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    features = colour_dct_features(images)
    if features.shape[0] < 1:
        raise ValueError("images is empty; fit_colour_dct_images needs at least one image of the dataset "
                         "(a seeded sample of a few thousand or more is better)")
    return fit_colour_dct(features, bits=bits, seed=seed)


# --------------------------------------------------------------------------- thresholds


def _check_cos(cos) -> float:
    if isinstance(cos, bool) or not isinstance(cos, (int, float, np.floating, np.integer)) \
            or not -1.0 <= float(cos) <= 1.0:
        raise ValueError(f"cos={cos!r} must be a cosine similarity in [-1, 1], e.g. 0.9")
    return float(cos)


def threshold_for_cosine(cos: float, bits: int, *, z: float = 0.0) -> int:
    """The Hamming threshold of ``bits``-bit hyperplane codes that corresponds to a cosine.

    Two vectors at angle ``theta`` differ in each random-hyperplane bit with probability
    ``theta / pi``, so their Hamming distance is Binomial(bits, theta / pi): expected
    ``bits * arccos(cos) / pi``, with standard deviation ``sqrt(bits * p * (1 - p))``
    (about 4.8 bits at 256 bits and cosine 0.95). ``z`` adds that many standard
    deviations, for a Hamming pre-filter whose candidates :meth:`ColourDctFit.cosine`
    re-checks (``z=3`` misses about 0.1 % of the pairs at exactly that cosine).

    Args:
        cos: cosine similarity in [-1, 1].
        bits: code length (64 * W).
        z: margin in standard deviations (>= 0); 0 gives the rounded expectation.

    Returns:
        An integer threshold in ``[0, bits]``.

    Example:
        >>> threshold_for_cosine(0.9, 256)
        37
    """
    c = _check_cos(cos)
    b = check_int("bits", bits, 1)
    if isinstance(z, bool) or not isinstance(z, (int, float, np.floating, np.integer)) or not 0 <= float(z) < 1e6:
        raise ValueError(f"z={z!r} must be a number >= 0 (standard deviations of margin)")
    p = math.acos(c) / math.pi
    t = b * p + float(z) * math.sqrt(b * p * (1 - p))
    return int(min(b, max(0, math.ceil(t - 1e-9) if z else round(t))))


def cosine_for_threshold(threshold: int, bits: int) -> float:
    """The cosine a Hamming threshold of ``bits``-bit hyperplane codes stands for: ``cos(pi t / bits)``.

    Example:
        >>> round(cosine_for_threshold(37, 256), 3)
        0.899
    """
    b = check_int("bits", bits, 1)
    t = check_int("threshold", threshold, 0, b, hint=f"Hamming distances of {b}-bit codes")
    return math.cos(math.pi * t / b)
