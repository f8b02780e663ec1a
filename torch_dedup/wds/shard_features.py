"""colour_dct features of one shard's images, kept in a feature sidecar: one decode per image.

A colour_dct code is ``fit.codes(features(image))``: the 133 features depend on the image
alone, the fit on the data it was made on (:mod:`torch_dedup.hashing.colour_dct_fit`). So a
shard's images are decoded once, into a *feature sidecar* beside the shard
(``shard-000.tar.colour_dct-features.tdfeat``, 532 bytes per image), and everything else
is read from it: the seeded sample a fit of the shards is made on
(:func:`torch_dedup.wds.fit_shards`), and the codes of any fit (one matrix product per
shard, no image decoded again). The file is a :mod:`torch_dedup._store` file of kind
``"shard-features"`` laid out like a hash sidecar (keys, masks, failures, damage,
provenance), with the float32 features in place of hashes; it is valid for the shard's
fingerprint, the image suffixes, the feature version and the hash environment.

Each image member is opened with ``PIL.Image.open(BytesIO(data))`` (a decompression bomb
is a failure, as for every hash) and read as :func:`~torch_dedup.hashing.hash_images`
reads a PIL image, so a shard's codes equal ``hash_images(images, "colour_dct", hs,
fit=fit)`` of its images bit for bit.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing import (
    COLOUR_DCT_DIMS,
    COLOUR_DCT_VERSION,
    ColourDctFit,
    colour_dct_features,
)
from torch_dedup.sidecar import hash_environment

from .shard_scan import CUT_FLAG, scan_shard
from .shard_sidecar import ShardSidecar, read_rows, shard_file_paths, write_rows
from .shard_urls import shard_fingerprint
from .tar_samples import ShardReadError

__all__ = ["FEATURES_SUFFIX", "SHARD_FEATURES_VERSION", "ShardFeatures", "features_and_store", "features_expect",
           "load_valid_features", "read_shard_features", "shard_features", "shard_features_paths", "store_features",
           "write_shard_features"]

logger = logging.getLogger(__name__)

#: Version of the feature sidecar's layout (bump when the same settings could give other contents).
SHARD_FEATURES_VERSION = 1
FEATURES_SUFFIX = ".tdfeat"
_KIND = "shard-features"
_SETTINGS = "colour_dct-features"


@dataclass(frozen=True, eq=False)
class ShardFeatures:
    """The colour_dct features of one shard's images (a feature sidecar's contents).

    Attributes:
        url, keys, valid, has_image, failures, shard_error, meta, path: as in
            :class:`~torch_dedup.wds.ShardSidecar`.
        features: ``float32`` ``(N, 133)``; rows of samples not read are 0.
    """

    url: str
    keys: tuple
    features: np.ndarray
    valid: np.ndarray
    has_image: np.ndarray
    failures: tuple = ()
    shard_error: dict | None = None
    meta: Mapping = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def codes(self, fit: ColourDctFit) -> ShardSidecar:
        """The shard's codes in ``fit``'s space, as a :class:`ShardSidecar` (``path`` None).

        Rows of samples not read are 0 (as in every sidecar); the rest are
        ``fit.codes(features)``, the bits :func:`~torch_dedup.hashing.hash_images` gives.
        """
        words = np.zeros((len(self.keys), fit.words), np.uint64)
        if self.valid.any():
            words[self.valid] = fit.codes(self.features[self.valid]).reshape(-1, fit.words)
        hashes = words[:, 0].copy() if fit.words == 1 else words
        return ShardSidecar(url=self.url, keys=self.keys, hashes=hashes, valid=self.valid, has_image=self.has_image,
                            failures=self.failures, shard_error=self.shard_error)


#: Decoded images held before their features are computed in one call (count, then bytes):
#: one call per image costs a quarter more than the decode itself on small images.
_STEP = 256
_STEP_BYTES = 1 << 26


def _open_member(data: bytes) -> Image.Image:
    """Decode one image member fully; decompression bombs fail like in every other hashing path."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"


def shard_features(url: str, *, image_exts: tuple, on_error: str = "raise") -> ShardFeatures:
    """Decode every image of one shard and compute its colour_dct features (no file is written).

    Args:
        url: the shard.
        image_exts: suffixes that hold the image, in order of preference (parsed).
        on_error: ``"raise"``: an undecodable image raises :class:`ImageDecodeError` and a
            damaged shard :class:`ShardReadError`; ``"skip"``: both are recorded.

    Returns:
        A :class:`ShardFeatures` (``path`` None).
    """
    rows: dict[int, np.ndarray] = {}
    failures: list[tuple[int, str, str]] = []
    pending: list[tuple[int, str, Image.Image]] = []
    held = [0]

    def fail(i: int, source: str, exc: Exception) -> None:
        if on_error == "raise":
            raise ImageDecodeError(source, _reason(exc), i) from exc
        failures.append((i, source, _reason(exc)))

    def flush() -> None:
        try:
            feats = colour_dct_features([im for _, _, im in pending])
            rows.update((i, feats[k]) for k, (i, _, _) in enumerate(pending))
        except Exception:  # noqa: BLE001 - redone one by one below, so the failure is pinned to its image
            for i, source, im in pending:
                try:
                    rows[i] = colour_dct_features([im])[0]
                except Exception as exc:  # noqa: BLE001 - this image's failure, not the shard's
                    fail(i, source, exc)
        for _, _, im in pending:
            im.close()
        pending.clear()
        held[0] = 0

    def take(i: int, source: str, data: bytes) -> None:
        try:
            im = _open_member(data)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's failure, not the shard's
            fail(i, source, exc)
            return
        pending.append((i, source, im))
        held[0] += im.width * im.height * len(im.getbands())
        if len(pending) >= _STEP or held[0] >= _STEP_BYTES:
            flush()

    try:
        scan = scan_shard(url, image_exts, on_error, take)
        if pending:
            flush()
    finally:
        for _, _, im in pending:
            im.close()
    n = len(scan.keys)
    features = np.zeros((n, COLOUR_DCT_DIMS), np.float32)
    valid = np.zeros(n, bool)
    for i, row in rows.items():
        features[i] = row
        valid[i] = True
    return ShardFeatures(url=url, keys=tuple(scan.keys), features=features, valid=valid,
                         has_image=np.array(scan.has_image, dtype=bool).reshape(n),
                         failures=tuple(sorted(failures + scan.failures)), shard_error=scan.shard_error)


def shard_features_paths(url: str, sidecar_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where the feature sidecar of ``url`` may live, in the order to look (as for hash sidecars).

    Example:
        >>> shard_features_paths("/data/shard-0.tar")[0]
        PosixPath('/data/shard-0.tar.colour_dct-features.tdfeat')
    """
    return shard_file_paths(url, _SETTINGS, FEATURES_SUFFIX, sidecar_dir)


def features_expect(fingerprint: str, exts: tuple) -> dict:
    """The meta a feature sidecar must state to be valid for this shard and these settings."""
    return {"fingerprint": fingerprint, "image_exts": list(exts), "features_version": COLOUR_DCT_VERSION,
            "hash_env": hash_environment()}


def write_shard_features(path: str | os.PathLike, sf: ShardFeatures, *, fingerprint: str,
                         extra: Mapping | None = None) -> Path:
    """Write ``sf`` atomically to ``path``.

    Raises:
        ValueError: arrays that do not fit together.
        OSError: the folder cannot be written.
    """
    n = len(sf.keys)
    features = np.asarray(sf.features)
    if features.dtype != np.float32 or features.shape != (n, COLOUR_DCT_DIMS):
        raise ValueError(f"features must be float32 ({n}, {COLOUR_DCT_DIMS}), got {features.dtype} {features.shape}")
    head = {"shard_features_version": SHARD_FEATURES_VERSION, "features_version": COLOUR_DCT_VERSION,
            "dims": COLOUR_DCT_DIMS, "fingerprint": str(fingerprint)}
    return write_rows(path, _KIND, sf, "features", features, head, extra)


def read_shard_features(path: str | os.PathLike, *, expect: Mapping | None = None) -> ShardFeatures:
    """Read and verify a feature sidecar.

    Raises:
        SidecarError: missing, corrupt, hostile, of another kind or version, inconsistent or stale.
    """
    def check(features, n):
        if features.dtype != np.float32 or features.shape != (n, COLOUR_DCT_DIMS) or not np.isfinite(features).all():
            raise ValueError(f"features must be finite float32 ({n}, {COLOUR_DCT_DIMS})")

    want = {"shard_features_version": SHARD_FEATURES_VERSION, **dict(expect or {})}
    meta, rows = read_rows(path, _KIND, want, "features", check)
    return ShardFeatures(meta=meta, path=Path(path), **rows)


def load_valid_features(paths, expect: Mapping) -> ShardFeatures | None:
    """The first feature sidecar in ``paths`` valid for ``expect``; ``None`` when there is none.

    A corrupt or stale file is logged and passed over (the caller computes the features again).
    """
    for path in paths:
        if Path(path).exists():
            try:
                sf = read_shard_features(path, expect=expect)
            except Exception as exc:  # noqa: BLE001 - any unreadable sidecar is recomputed
                logger.warning("ignoring feature sidecar %s: %s", path, getattr(exc, "reason", exc))
                continue
            if sf.shard_error is not None and not sf.meta.get(CUT_FLAG):
                continue
            return sf
    return None


def features_and_store(url: str, paths: list[str], exts: tuple, on_error: str) -> tuple:
    """Worker task: compute one shard's features and write its feature sidecar.

    Returns data, never a custom exception: ``("ok", path)``, or the error tuples
    :func:`~torch_dedup.wds.shard_tasks.raise_task_error` raises.
    """
    try:
        fingerprint = shard_fingerprint(url)  # before reading: a shard changed meanwhile is stale next time
    except OSError as exc:
        return ("shard_error", url, f"cannot open: {exc}", None, None, True)
    try:
        sf = shard_features(url, image_exts=exts, on_error=on_error)
    except ShardReadError as exc:
        return ("shard_error", exc.url, exc.reason, exc.offset, exc.member, exc.unopened)
    except ImageDecodeError as exc:
        return ("image_error", exc.source, exc.reason, exc.index)
    return store_features(url, paths, sf, fingerprint, exts, on_error)


def store_features(url: str, paths: list[str], sf: ShardFeatures, fingerprint: str, exts: tuple,
                   on_error: str) -> tuple:
    """Write ``sf`` to the first of ``paths`` that can be written: ``("ok", path)`` or ``("write_error", ...)``."""
    extra = {"image_exts": list(exts), "hash_env": hash_environment(), CUT_FLAG: True, "on_error": on_error}
    last = None
    for path in paths:
        try:
            return ("ok", str(write_shard_features(path, sf, fingerprint=fingerprint, extra=extra)))
        except OSError as exc:
            logger.info("cannot write feature sidecar %s (%s); trying the next place", path, exc)
            last = exc
    return ("write_error", url, str(last))
