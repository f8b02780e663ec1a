"""Seeded random-hyperplane codes of embedding vectors: the fit and the packed sign codes (layer 1).

:func:`fit_embeddings` learns, once per dataset, the centre of its unit-length embeddings and
draws seeded Gaussian hyperplanes; :meth:`EmbeddingFit.codes` turns embeddings into
``bits``-bit sign codes packed like every hash of the library
(:func:`torch_dedup.hashing._pack.pack_bits`). For random hyperplanes ``hamming / bits``
estimates ``angle / pi`` between the centred vectors, so a Hamming threshold is a cosine
(:func:`torch_dedup.hashing.threshold_for_cosine`).

Pure numpy: no model, no torch, no files. :mod:`torch_dedup.embedding` runs the model, caches
the embeddings and re-exports the names below.

Why centre: CNN features after a ReLU are all positive, so every pair of images has a large
cosine and random hyperplanes through the origin split them into correlated bits; subtracting
the dataset's mean direction spreads them around the origin. Why unit length first: a
brightness or contrast change scales many features together, which should not count as a
difference. See docs/embeddings.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import check_int
from ._pack import pack_bits

__all__ = ["DEFAULT_BITS", "EMBED_VERSION", "EmbeddingFit", "check_bits", "fit_embeddings"]

#: Names everything between the model's output and the bits: the default transform, unit length,
#: centring, the hyperplanes' generator, the packing. Stored with every fit and sidecar.
EMBED_VERSION = "embed/1"
#: Default code length.
DEFAULT_BITS = 256
_STEP = 4096  # rows per projection chunk (bounds the float64 copies)


def check_bits(bits) -> int:
    """``bits`` as an int, checked: a multiple of 64 in [64, 1024] (whole ``uint64`` words).

    Raises:
        ValueError: another value, with the valid ones.
    """
    bits = check_int("bits", bits, 64, 1024, hint="a multiple of 64: 64, 128, 256, ...")
    if bits % 64:
        raise ValueError(f"bits={bits} must be a multiple of 64 in [64, 1024] (whole uint64 words), e.g. 256")
    return bits


def _as_embeddings(embeddings, dims: int | None = None, name: str = "embeddings") -> np.ndarray:
    arr = np.asarray(embeddings)
    if arr.ndim == 1 and dims is not None and arr.shape[0] == dims:
        arr = arr[None, :]
    if arr.ndim != 2 or (dims is not None and arr.shape[1] != dims) or arr.shape[1] == 0:
        want = f"(N, {dims})" if dims is not None else "(N, D) with D >= 1"
        raise ValueError(f"{name} must have shape {want} (from embed_images with this fit's model), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be floating point embeddings, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; embed the images again (embed_images)")
    return arr


def _unit_rows(arr: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 in float64 (a zero row stays zero); einsum keeps each row's sum order fixed."""
    e = np.asarray(arr, dtype=np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", e, e))[:, None]
    return np.divide(e, norm, out=np.zeros_like(e), where=norm > 0)


def _fit_fingerprint(meta: dict, centre: np.ndarray, planes: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for arr in (centre, planes):
        h.update(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return h.hexdigest()


def _frozen(arr) -> np.ndarray:
    out = np.array(arr, dtype=np.float32, order="C", copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class EmbeddingFit:
    """The centre and hyperplanes that turn one model's embeddings into comparable codes.

    Apply the *same* fit to everything compared with a dataset (its ``against=`` sets):
    codes of different fits, or of another model, are not comparable. Build one with
    :func:`fit_embeddings` (or let :func:`torch_dedup.embedding.embed_dataset` fit it); store
    it with :meth:`to_arrays`, restore it with :meth:`from_arrays`.

    Attributes:
        centre: float32 ``(D,)``: mean of the fitted set's unit-length embeddings.
        planes: float32 ``(D, bits)``: seeded standard normal hyperplanes.
        bits: code length, a multiple of 64 in [64, 1024].
        seed: the hyperplanes' seed (``np.random.default_rng(seed)``).
        n_fit: rows the centre was computed from (informational).
        model_fingerprint: :func:`torch_dedup.embedding.model_fingerprint` of the model the fit
            is for ("" unknown).
        fingerprint: BLAKE2b (32 hex digits) of the settings, the model fingerprint and the arrays.
    """

    centre: np.ndarray
    planes: np.ndarray
    bits: int
    seed: int
    n_fit: int
    model_fingerprint: str = ""
    fingerprint: str = ""

    def __post_init__(self):
        bits = check_bits(self.bits)
        centre, planes = np.asarray(self.centre), np.asarray(self.planes)
        if centre.ndim != 1 or centre.shape[0] < 1 or planes.shape != (centre.shape[0], bits):
            raise ValueError(f"EmbeddingFit needs centre (D,) and planes (D, {bits}); got {centre.shape} and "
                             f"{planes.shape}")
        for name, arr in (("centre", centre), ("planes", planes)):
            if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
                raise ValueError(f"EmbeddingFit.{name} must be finite floats, got {arr.dtype}")
            object.__setattr__(self, name, _frozen(arr))
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "n_fit", int(self.n_fit))
        object.__setattr__(self, "model_fingerprint", str(self.model_fingerprint))
        expected = _fit_fingerprint(self._meta_core(), self.centre, self.planes)
        if self.fingerprint and self.fingerprint != expected:
            raise ValueError(f"EmbeddingFit fingerprint {self.fingerprint!r} does not match its arrays and settings "
                             f"({expected!r}): the stored fit is corrupt or was edited; fit it again")
        object.__setattr__(self, "fingerprint", expected)

    def _meta_core(self) -> dict:
        return {"version": EMBED_VERSION, "dims": self.dims, "bits": self.bits, "seed": self.seed,
                "model_fingerprint": self.model_fingerprint, "centre": "mean of unit rows"}

    @property
    def dims(self) -> int:
        """Embedding dimension D."""
        return int(self.centre.shape[0])

    @property
    def words(self) -> int:
        """``uint64`` words per code (``bits // 64``)."""
        return self.bits // 64

    def centred(self, embeddings) -> np.ndarray:
        """float64 ``(N, D)``: each embedding scaled to unit length, minus :attr:`centre` (the space of codes and cosines)."""
        return _unit_rows(_as_embeddings(embeddings, self.dims)) - self.centre.astype(np.float64)

    def codes(self, embeddings) -> np.ndarray:
        """Sign codes of the centred embeddings on the hyperplanes, packed for :mod:`torch_dedup.hamming`.

        Bit ``j`` is ``centred(e) @ planes[:, j] > 0``; bit 0 is the most significant bit of
        word 0 (the library's packing, :func:`torch_dedup.hashing._pack.pack_bits`; ``bits``
        is a multiple of 64, so no word is padded). The projections are float64 sums in a
        fixed order per row (``np.einsum``, not BLAS, whose order depends on the batch), so
        the same embeddings give the same bits in any batch or chunk.

        Args:
            embeddings: float ``(N, D)`` from :func:`torch_dedup.embedding.embed_images` with
                the fit's model.

        Returns:
            ``uint64`` ``(N,)`` for 64 bits, else ``(N, bits // 64)``.

        Example:
            >>> fit = fit_embeddings(np.eye(3), bits=64)
            >>> fit.codes(np.eye(3)).shape
            (3,)
        """
        e = _as_embeddings(embeddings, self.dims)
        planes = self.planes.astype(np.float64)
        words = np.zeros((e.shape[0], self.words), dtype=np.uint64)
        for s in range(0, e.shape[0], _STEP):
            proj = np.einsum("nd,db->nb", self.centred(e[s:s + _STEP]), planes, optimize=False)
            words[s:s + _STEP] = pack_bits(proj > 0)
        return words[:, 0].copy() if self.words == 1 else words

    def cosine(self, embeddings_a, embeddings_b) -> np.ndarray:
        """Exact cosine of centred embeddings, row by row (float64 ``(N,)``): the re-check of Hamming candidates.

        A row that is zero after centring has cosine 0 with everything (1 with another zero row).
        """
        a, b = self.centred(embeddings_a), self.centred(embeddings_b)
        if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
            raise ValueError(f"embeddings_a has {a.shape[0]} rows and embeddings_b {b.shape[0]}; pass equal counts "
                             f"(or one row to compare with all)")
        a, b = np.broadcast_arrays(a, b)
        dot = np.einsum("ij,ij->i", a, b)
        na, nb = np.sqrt(np.einsum("ij,ij->i", a, a)), np.sqrt(np.einsum("ij,ij->i", b, b))
        den = na * nb
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(den > 0, dot / np.where(den > 0, den, 1.0), np.where((na == 0) & (nb == 0), 1.0, 0.0))
        return np.clip(cos, -1.0, 1.0)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: float32 ``centre`` and ``planes``, and a JSON-able dict (no pickle)."""
        return ({"centre": self.centre.copy(), "planes": self.planes.copy()},
                dict(self._meta_core(), n_fit=self.n_fit, fingerprint=self.fingerprint))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> EmbeddingFit:
        """Rebuild a fit from :meth:`to_arrays`' output, checking its version and fingerprint.

        Raises:
            ValueError: a missing key, another version, or a fingerprint that does not match.
        """
        missing = [k for k in ("centre", "planes") if k not in arrays]
        missing += [k for k in ("version", "bits", "seed", "fingerprint") if k not in meta]
        if missing:
            raise ValueError(f"a stored embedding fit lacks {missing}; store what EmbeddingFit.to_arrays returns")
        if meta["version"] != EMBED_VERSION:
            raise ValueError(f"a stored embedding fit has version {meta['version']!r}; this library makes "
                             f"{EMBED_VERSION!r} codes: fit it again")
        return cls(centre=np.asarray(arrays["centre"]), planes=np.asarray(arrays["planes"]), bits=int(meta["bits"]),
                   seed=int(meta["seed"]), n_fit=int(meta.get("n_fit", 0)),
                   model_fingerprint=str(meta.get("model_fingerprint", "")), fingerprint=str(meta["fingerprint"]))


def fit_embeddings(embeddings, *, bits: int = DEFAULT_BITS, seed: int = 0,
                   model_fingerprint: str | None = None) -> EmbeddingFit:
    """Fit the centre and draw the hyperplanes of embedding codes on a dataset's embeddings.

    The centre is the float64 mean of the unit-length embeddings (stored as float32); the
    hyperplanes are ``np.random.default_rng(seed).standard_normal((D, bits), dtype=np.float32)``.
    Deterministic for the same embeddings and settings.

    Args:
        embeddings: float ``(N, D)``, N >= 1, from :func:`torch_dedup.embedding.embed_images`.
        bits: code length, a multiple of 64 in [64, 1024].
        seed: the hyperplanes' seed.
        model_fingerprint: :func:`torch_dedup.embedding.model_fingerprint` of the model,
            recorded so that a fit is never applied to another model's embeddings by
            :func:`torch_dedup.embedding.embed_dataset`.

    Returns:
        An :class:`EmbeddingFit`.

    Raises:
        ValueError: no rows, non-finite or non-float embeddings, a bad ``bits`` or ``seed``.

    Example:
        >>> import numpy as np
        >>> fit = fit_embeddings(np.random.default_rng(0).random((10, 32)), bits=128)
        >>> fit.codes(np.ones((3, 32))).shape
        (3, 2)
    """
    e = _as_embeddings(embeddings)
    if e.shape[0] < 1:
        raise ValueError("embeddings has no rows; fit on the embeddings of at least one image (thousands is better)")
    bits = check_bits(bits)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    if model_fingerprint is not None and not isinstance(model_fingerprint, str):
        raise ValueError(f"model_fingerprint={model_fingerprint!r} must be a string from model_fingerprint() or None")
    centre = _unit_rows(e).mean(axis=0)
    planes = np.random.default_rng(seed).standard_normal((e.shape[1], bits), dtype=np.float32)
    return EmbeddingFit(centre=centre.astype(np.float32), planes=planes, bits=bits, seed=seed, n_fit=e.shape[0],
                        model_fingerprint=model_fingerprint or "")
