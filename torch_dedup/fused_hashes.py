"""A dataset's fused codes: its offline hashes and its embedding codes side by side (layer 3).

``plan_dataset(ds, embed=model, fuse=True, method=M)`` codes ``ds`` twice — with method ``M``
through its sidecar (:mod:`torch_dedup.dataset_hashes`, fitted first for ``colour_dct``) and
with the model through its embedding cache (:mod:`torch_dedup.embedding`) — and
:func:`fuse_hashes` puts the two side by side with the repeats of
:func:`torch_dedup.hashing.fusion.fit_fusion`. Nothing new is stored: both halves are cached
already and fusing costs a concatenation. The fusion (each part's scale and repeats) is
measured on the dataset being planned and handed unchanged to its ``against=`` sets, with the
embedding fit, so train and test are compared in one space.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dataset_hashes import DatasetHashes
from .embedding import EmbeddingHashes
from .hashing.fusion import Fusion, fit_fusion
from .hashing.hyperplanes import EmbeddingFit

__all__ = ["FusedHashes", "fuse_hashes"]


@dataclass(frozen=True, eq=False)
class FusedHashes(DatasetHashes):
    """A :class:`~torch_dedup.dataset_hashes.DatasetHashes` whose ``hashes`` are fused codes.

    Attributes (besides the base class's):
        fusion: the :class:`~torch_dedup.hashing.fusion.Fusion` (layout, scales, repeats).
        embed_fit: the embedding part's :class:`~torch_dedup.hashing.EmbeddingFit`.
    """

    fusion: Fusion | None = None
    embed_fit: EmbeddingFit | None = None


def fuse_hashes(hashed: DatasetHashes, embedded: EmbeddingHashes, *, method: str, hash_size: int, bits: int,
                fusion: Fusion | None = None) -> FusedHashes:
    """The fused codes of one dataset from its two codings.

    Args:
        hashed: the dataset coded with ``method`` at ``hash_size`` (``bits`` bits).
        embedded: the same dataset's embedding codes.
        method, hash_size, bits: the method part's settings.
        fusion: ``None`` fits one on these codes (the dataset being planned); an
            ``against=`` set passes the dataset's.

    Returns:
        :class:`FusedHashes`; an item is valid when both halves are, and its failures are
        both halves' (sorted by index, one per item and reason).

    Raises:
        ValueError: the two codings are of different lengths.
    """
    if len(hashed) != len(embedded):
        raise ValueError(f"the method codes ({len(hashed)} items) and the embedding codes ({len(embedded)} items) "
                         f"are of different datasets")
    valid = hashed.valid & embedded.valid
    e_bits = int(embedded.meta["bits"])
    if fusion is None:
        fusion = fit_fusion([hashed.hashes, embedded.hashes], [bits, e_bits], valid)
    codes = fusion.fuse(hashed.hashes, embedded.hashes)
    codes[~valid] = 0
    failures = tuple(sorted(set(hashed.failures) | set(embedded.failures), key=lambda f: (f[0], str(f[2]))))
    fit_id = f"{hashed.meta.get('fit') or method}|{embedded.fit.fingerprint}|{fusion.key}"
    meta = {**hashed.meta, "method": f"{method}+embed", "hash_size": int(hash_size), "bits": fusion.total_bits,
            "fit": fit_id, "fusion": fusion.to_meta(), "method_fit": hashed.meta.get("fit"),
            "embed": {k: embedded.meta.get(k) for k in ("bits", "model_fingerprint", "fit_fingerprint", "transform",
                                                         "dims", "sidecar", "embed_version")}}
    return FusedHashes(codes, valid, failures, hashed.labels, hashed.fingerprint, meta, hashed.sidecar_path,
                       hashed.from_cache and embedded.from_cache, fusion=fusion, embed_fit=embedded.fit)

