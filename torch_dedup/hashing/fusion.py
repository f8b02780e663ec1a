"""Fused codes: two codes of one item side by side, each repeated so that both count on one scale (layer 1).

A fused code is the words of every part placed side by side, part ``k`` written
``repeats[k]`` times, so its Hamming distance is exactly

    D = repeats[0] * d_0 + repeats[1] * d_1 + ...

and the existing exact engine searches it like any other code. The repeats put each part's
distances on one scale: each part's *scale* is the 1 % quantile of its Hamming distances
between random pairs of the dataset (:data:`FUSION_QUANTILE`, over :data:`FUSION_PAIRS`
seeded pairs), and the repeats (1..:data:`MAX_REPEAT` each) are the small integers that make
``repeats[k] * scale[k]`` most nearly equal. ``D`` is then proportional, within the ratio
error the fusion records, to ``d_0 / scale_0 + d_1 / scale_1``: each distance divided by its
own quantile, so neither part drowns the other because it is longer or more spread out.

The scales are measured once, on the dataset being planned, and reused unchanged for its
``against=`` sets (:meth:`Fusion.fuse`), so train and test are fused in one space. Pure numpy:
codes in, codes out; no model, no files.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CHANCE_SHARE", "FUSION_PAIRS", "FUSION_QUANTILE", "FUSION_SEED", "MAX_REPEAT", "Fusion", "fit_fusion", "pair_quantile"]

#: The quantile of random-pair distances that stands for a part's scale.
FUSION_QUANTILE = 0.01
#: Random pairs the scale is measured on (seeded), at most.
FUSION_PAIRS = 100_000
#: The seed of those pairs.
FUSION_SEED = 0
#: The largest number of times one part is written.
MAX_REPEAT = 4
#: The share of random pairs within a threshold from which the threshold is reported as too large.
CHANCE_SHARE = 1e-3

_POP8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint16)


def _rows(codes, name: str) -> np.ndarray:
    """``(N, W)`` uint64 rows of ``(N,)`` or ``(N, W)`` packed codes."""
    arr = np.asarray(codes)
    if arr.dtype != np.uint64 or arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be packed uint64 codes of shape (N,) or (N, W), got {arr.dtype} {arr.shape}")
    return arr.reshape(len(arr), -1)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances of two ``(P, W)`` uint64 arrays (a byte table: no numpy >= 2 popcount)."""
    x = np.ascontiguousarray(a ^ b)
    return _POP8[x.view(np.uint8)].reshape(len(x), -1).sum(axis=1, dtype=np.int64)


def _pair_sample(n_valid: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` seeded random pairs ``(i, j)`` of distinct positions in ``range(n_valid)``."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n_valid, pairs)
    j = rng.integers(0, n_valid - 1, pairs)
    return i, j + (j >= i)                       # uniform over the other rows


def _pair_distances(parts, valid) -> list[np.ndarray] | None:
    """Each part's Hamming distances over the same seeded random pairs of valid rows (``None``: < 2 rows)."""
    rows = [_rows(p, f"part {k}") for k, p in enumerate(parts)]
    idx = np.arange(len(rows[0])) if valid is None else np.flatnonzero(np.asarray(valid, dtype=bool))
    if len(idx) < 2:
        return None
    i, j = _pair_sample(len(idx), FUSION_PAIRS, FUSION_SEED)
    return [_distances(r[idx[i]], r[idx[j]]) for r in rows]


def _scale(d: np.ndarray | None, quantile: float = FUSION_QUANTILE) -> float:
    return 1.0 if d is None else max(1.0, float(np.quantile(d, quantile)))


def pair_quantile(codes, valid=None, *, quantile: float = FUSION_QUANTILE) -> float:
    """The ``quantile`` of Hamming distances between random pairs of distinct valid rows, at least 1.

    :data:`FUSION_PAIRS` pairs are drawn with ``numpy.random.default_rng(FUSION_SEED)`` (with
    replacement, never a row with itself), so the same codes always give the same value. Fewer
    than two valid rows give 1.0. The floor of 1 keeps a set whose random pairs are mostly exact
    duplicates from weighting its part without bound.

    Example:
        >>> import numpy as np
        >>> pair_quantile(np.array([0, 1, 3, 7], dtype=np.uint64), quantile=0.5) >= 1.0
        True
    """
    got = _pair_distances([codes], valid)
    return _scale(None if got is None else got[0], quantile)


@dataclass(frozen=True)
class Fusion:
    """How the parts of a fused code are laid out: bits, scale and repeats of each part.

    Attributes:
        bits: the bit length of each part (words of ``ceil(bits / 64)`` each).
        scales: each part's 1 % random-pair Hamming distance on the dataset it was fitted on.
        repeats: how many times each part is written.
        chance: the smallest fused distance that at least 0.1 % of the random pairs reach
            (:data:`CHANCE_SHARE`): a threshold at or above it removes unrelated images.
            ``None`` when too few valid rows were seen to say.
    """

    bits: tuple[int, ...]
    scales: tuple[float, ...]
    repeats: tuple[int, ...]
    chance: int | None = None

    @property
    def words(self) -> int:
        """uint64 words of a fused code."""
        return sum(r * -(-b // 64) for b, r in zip(self.bits, self.repeats))

    @property
    def total_bits(self) -> int:
        """The largest fused distance: ``sum(repeats[k] * bits[k])``."""
        return sum(r * b for b, r in zip(self.bits, self.repeats))

    @property
    def ratio_error(self) -> float:
        """How far the repeated scales are from equal: ``max / min`` of ``repeats[k] * scales[k]``, minus 1."""
        w = [r * s for r, s in zip(self.repeats, self.scales)]
        return max(w) / min(w) - 1.0

    @property
    def key(self) -> str:
        """The layout in a few characters (``"2x64+1x256"``): part of the fused code space's identity."""
        return "+".join(f"{r}x{b}" for b, r in zip(self.bits, self.repeats))

    def fuse(self, *parts) -> np.ndarray:
        """The fused codes ``(N, words)`` of the parts' codes (each ``(N,)`` or ``(N, W_k)`` uint64).

        Raises:
            ValueError: another number of parts, rows that differ in number, or a part of
                other width than this fusion was fitted on.
        """
        if len(parts) != len(self.bits):
            raise ValueError(f"this fusion has {len(self.bits)} parts ({self.key}), got {len(parts)} code arrays")
        rows = [_rows(p, f"part {k}") for k, p in enumerate(parts)]
        if len({len(r) for r in rows}) > 1:
            raise ValueError(f"the parts have different numbers of rows {[len(r) for r in rows]}; fuse the codes of "
                             f"the same items")
        for k, (r, b) in enumerate(zip(rows, self.bits)):
            if r.shape[1] != -(-b // 64):
                raise ValueError(f"part {k} has {r.shape[1]} words per code, but this fusion's part {k} is {b} bits "
                                 f"({-(-b // 64)} words): code it with the same method and size")
        return np.ascontiguousarray(np.concatenate([r for r, n in zip(rows, self.repeats) for _ in range(n)], axis=1))

    def to_meta(self) -> dict:
        """JSON-able description (stored in plans and sidecar metadata)."""
        return {"bits": list(self.bits), "scales": list(self.scales), "repeats": list(self.repeats),
                "chance": self.chance, "quantile": FUSION_QUANTILE, "pairs": FUSION_PAIRS, "seed": FUSION_SEED}


def fit_fusion(parts, bits, valid=None) -> Fusion:
    """Measure each part's scale on these codes and choose the repeats that equalise them.

    Args:
        parts: the codes of each part for the same items (``(N,)`` or ``(N, W_k)`` uint64).
        bits: each part's bit length.
        valid: ``(N,)`` bool, the rows to measure on (default all).

    Returns:
        A :class:`Fusion`. Among repeats in ``1..MAX_REPEAT`` the one with the smallest
        ``ratio_error`` wins; ties go to the fewest words.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> short = rng.integers(0, 2**63, 500, dtype=np.uint64)        # 64 bits
        >>> long = rng.integers(0, 2**63, (500, 4), dtype=np.uint64)    # 256 bits
        >>> fit_fusion([short, long], [64, 256]).repeats                # 4 x 64 bits ~ 1 x 256
        (4, 1)
    """
    if len(parts) != len(bits) or len(parts) < 2:
        raise ValueError(f"fit_fusion needs two or more parts with a bit length each, got {len(parts)} parts and "
                         f"{len(bits)} lengths")
    dists = _pair_distances(parts, valid)          # one draw of pairs serves the scales and `chance`
    scales = tuple(_scale(None if dists is None else d) for d in dists or [None] * len(parts))
    best = None
    for reps in itertools.product(range(1, MAX_REPEAT + 1), repeat=len(parts)):
        if math.gcd(*reps) != 1:
            continue
        f = Fusion(tuple(int(b) for b in bits), scales, reps)
        rank = (round(f.ratio_error, 9), f.words)
        if best is None or rank < best[0]:
            best = (rank, f)
    fusion = best[1]
    if dists is None:
        return fusion
    d = sum(r * dk for r, dk in zip(fusion.repeats, dists))
    # the smallest distance with at least CHANCE_SHARE of the random pairs at or below it
    chance = int(np.sort(d)[max(0, math.ceil(CHANCE_SHARE * len(d)) - 1)])
    return Fusion(fusion.bits, fusion.scales, fusion.repeats, chance)
