"""Shard sidecars: the keys and hashes of one webdataset shard, stored to be trusted later.

A shard sidecar is a :mod:`torch_dedup._store` file of kind ``"shard-sidecar"``. Besides
the provenance every torch_dedup sidecar records (method, hash size, decode mode, library
versions, hash environment, creation time), it holds the shard's URL and fingerprint
(size and ``mtime_ns`` of a local file), every sample's ``__key__`` (one UTF-8 blob plus
offsets), the packed hashes, which samples had an image and which images were hashed,
the per-sample failures, and, for a damaged shard read with ``on_error="skip"``, where the
damage is. A sidecar for another fingerprint or other settings is *stale* and never used.

Codes of a fitted method (``colour_dct``) are sidecars like any other, keyed on the fit's
fingerprint too: in the file name (``shard-000.tar.colour_dct16-exact-fit<16 hex>.tdhash``)
and in the meta a reader expects (``"fit"``), so codes of another fit are never read as these.

Where it lives: beside a local shard (``shard-000.tar.phash8-exact.tdhash``); in
``sidecar_dir`` when one is given (the name then carries a digest of the shard's identity,
so equal file names in different folders never collide); for a remote shard, or a local
one in a folder that cannot be written, in the user cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np

from torch_dedup._store import pack_strings, read_store, unpack_strings, write_store
from torch_dedup.errors import SidecarError
from torch_dedup.sidecar import DECODE_MODES, SIDECAR_SUFFIX, default_cache_dir, library_versions

from .shard_urls import is_local, local_path, shard_id, shard_name

__all__ = ["SHARD_SIDECAR_VERSION", "ShardSidecar", "chmod_like_shard", "read_rows", "read_shard_sidecar",
           "shard_file_paths", "shard_sidecar_paths", "write_rows", "write_shard_sidecar"]

logger = logging.getLogger(__name__)

#: Version of the shard sidecar's meaning (bump when the same settings could give other contents).
SHARD_SIDECAR_VERSION = 1
_KIND = "shard-sidecar"


@dataclass(frozen=True, eq=False)
class ShardSidecar:
    """The verified contents of one shard sidecar.

    Attributes:
        url: the shard's URL when it was hashed.
        keys: every sample's ``__key__``, in stored order.
        hashes: ``uint64`` ``(N,)`` or ``(N, W)``; rows of samples not hashed are 0.
        valid: ``bool`` ``(N,)``: the sample's image was hashed.
        has_image: ``bool`` ``(N,)``: the sample has a member with an image suffix.
        failures: ``(index, source, reason)`` of each image that could not be hashed.
        shard_error: ``None``, or ``{"offset", "member", "reason"}`` when the shard was
            damaged and read with ``on_error="skip"`` (only the samples before it are listed).
        meta: the provenance mapping.
        path: the file it was read from (``None`` when built in memory).
    """

    url: str
    keys: tuple
    hashes: np.ndarray
    valid: np.ndarray
    has_image: np.ndarray
    failures: tuple = ()
    shard_error: dict | None = None
    meta: Mapping = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def no_image_keys(self) -> list[str]:
        """Keys of the samples without an image member (counted and listed, not hashed)."""
        return [self.keys[i] for i in np.flatnonzero(~self.has_image).tolist()]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def shard_sidecar_paths(url: str, method: str, hash_size: int, decode: str = "exact",
                        sidecar_dir: str | os.PathLike | None = None, *,
                        fit_fingerprint: str | None = None) -> list[Path]:
    """Where the sidecar of ``url`` may live, in the order to look (and to try writing).

    Args:
        url: the shard.
        method: hash method.
        hash_size: hash size.
        decode: ``"exact"`` or ``"fast_decode"``.
        sidecar_dir: explicit folder (the only place then).
        fit_fingerprint: for a fitted method (``colour_dct``), the fingerprint of the fit the
            codes were made with: codes of another fit are other codes, so it is part of the
            name (``shard-0.tar.colour_dct16-exact-fit1a2b3c4d5e6f7a8b.tdhash``) as well as of
            the meta a reader expects.

    Returns:
        One or two paths: beside a local shard, then the user-cache fallback; or the one in
        ``sidecar_dir`` / the user cache.

    Example:
        >>> shard_sidecar_paths("/data/shard-0.tar", "phash", 8)[0]
        PosixPath('/data/shard-0.tar.phash8-exact.tdhash')
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r} is not a decode mode; use one of {DECODE_MODES}")
    settings = f"{method}{int(hash_size)}-{decode}"
    if fit_fingerprint is not None:
        settings += f"-fit{str(fit_fingerprint)[:16]}"
    return shard_file_paths(url, settings, SIDECAR_SUFFIX, sidecar_dir)


def shard_file_paths(url: str, settings: str, suffix: str, sidecar_dir: str | os.PathLike | None = None
                     ) -> list[Path]:
    """Where a file about shard ``url`` named ``<shard>.<settings><suffix>`` may live, in the order to look.

    Beside a local shard, then the user cache; in ``sidecar_dir`` (only) when given, the name
    then carrying a digest of the shard's identity so equal names in other folders never collide.
    """
    keyed = f"{shard_name(url)}-{_digest(shard_id(url))}.{settings}{suffix}"
    if sidecar_dir is not None:
        return [Path(sidecar_dir).expanduser() / keyed]
    fallback = default_cache_dir() / "wds" / keyed
    if is_local(url):
        path = Path(local_path(url)).expanduser()
        return [path.parent / f"{path.name}.{settings}{suffix}", fallback]
    return [fallback]


def write_shard_sidecar(path: str | os.PathLike, sc: ShardSidecar, *, method: str, hash_size: int,
                        fingerprint: str, decode: str = "exact", extra: Mapping | None = None) -> Path:
    """Write ``sc`` atomically to ``path`` (temp file, fsync, replace).

    Raises:
        ValueError: arrays that do not fit together.
        OSError: the folder cannot be written.
    """
    n = len(sc.keys)
    hashes = np.asarray(sc.hashes)
    if hashes.dtype != np.uint64 or hashes.ndim not in (1, 2) or hashes.shape[0] != n:
        raise ValueError(f"hashes must be uint64 (N,) or (N, W) with N={n}, got {hashes.dtype} {hashes.shape}")
    head = {"shard_sidecar_version": SHARD_SIDECAR_VERSION, "method": str(method), "hash_size": int(hash_size),
            "decode": decode, "fingerprint": str(fingerprint)}
    return write_rows(path, _KIND, sc, "hashes", hashes, head, extra)


def write_rows(path: str | os.PathLike, kind: str, sc, name: str, values: np.ndarray, head: Mapping,
               extra: Mapping | None) -> Path:
    """Write one row per sample of shard ``sc.url`` (``values`` stored as ``name``) with its keys,
    masks, failures and provenance, atomically; shared by hash and feature sidecars."""
    n = len(sc.keys)
    valid, has_image = np.asarray(sc.valid), np.asarray(sc.has_image)
    if valid.shape != (n,) or has_image.shape != (n,) or valid.dtype != np.bool_ or has_image.dtype != np.bool_:
        raise ValueError(f"valid and has_image must be bool ({n},)")
    key_blob, key_off = pack_strings(sc.keys)
    failures = tuple((int(i), str(s), str(r)) for i, s, r in sc.failures)
    src_blob, src_off = pack_strings([f[1] for f in failures])
    why_blob, why_off = pack_strings([f[2] for f in failures])
    meta = {
        **dict(head), "url": sc.url, "shard_name": shard_name(sc.url),
        "count": n, "n_images": int(has_image.sum()), "n_hashed": int(valid.sum()), "n_failures": len(failures),
        "shard_error": sc.shard_error, "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **dict(extra or {}),
    }
    arrays = {name: values, "valid": valid, "has_image": has_image, "keys": key_blob, "key_offsets": key_off,
              "failure_index": np.array([f[0] for f in failures], dtype=np.int64),
              "failure_source": src_blob, "failure_source_offsets": src_off,
              "failure_reason": why_blob, "failure_reason_offsets": why_off}
    written = write_store(path, kind, meta, arrays)
    chmod_like_shard(written, sc.url)
    return written


def chmod_like_shard(path: Path, url: str) -> None:
    """Give a sidecar the read permissions of its shard (the store writes 0600 temp files), so
    whoever may read the shard may read its sidecar; 0644 for remote shards."""
    mode = 0o644
    if is_local(url):
        try:
            mode = stat.S_IMODE(os.stat(local_path(url)).st_mode) & 0o666 | 0o600
        except OSError:
            pass
    try:
        os.chmod(path, mode)
    except OSError as exc:  # e.g. a file system without permissions: the sidecar is still valid
        logger.info("cannot set the mode of %s (%s)", path, exc)


def read_shard_sidecar(path: str | os.PathLike, *, expect: Mapping | None = None) -> ShardSidecar:
    """Read and verify a shard sidecar.

    Args:
        path: the file.
        expect: meta values the file must state (``fingerprint``, ``method``, ``hash_size``,
            ``decode``, ``image_exts``, ``hash_env``, ...); any difference makes it stale.

    Returns:
        The :class:`ShardSidecar`.

    Raises:
        SidecarError: missing, corrupt, hostile, of another kind or version, inconsistent or stale.
    """
    def check(hashes, n):
        if hashes.dtype != np.uint64 or hashes.ndim not in (1, 2) or hashes.shape[0] != n:
            raise ValueError(f"hashes do not match count {n}")

    want = {"shard_sidecar_version": SHARD_SIDECAR_VERSION, **dict(expect or {})}
    meta, rows = read_rows(path, _KIND, want, "hashes", check)
    return ShardSidecar(meta=meta, path=Path(path), **rows)


def read_rows(path: str | os.PathLike, kind: str, want: Mapping, name: str, check) -> tuple[dict, dict]:
    """Read and verify what :func:`write_rows` wrote: ``(meta, fields)``, the fields named as in
    :class:`ShardSidecar` with the values under ``name``; ``check(values, n)`` raises ValueError
    for values that do not fit.

    Raises:
        SidecarError: missing, corrupt, hostile, of another kind, inconsistent, or a meta value
            differing from ``want`` (stale).
    """
    path = Path(path)
    meta, arrays = read_store(path, kind, SidecarError)
    for key, value in want.items():
        if meta.get(key) != value:
            raise SidecarError(str(path), f"stale: {key} is {meta.get(key)!r}, expected {value!r}; "
                                          "it will be recomputed")
    try:
        n = int(meta["count"])
        keys = unpack_strings(arrays["keys"], arrays["key_offsets"])
        values, valid, has_image = arrays[name], arrays["valid"], arrays["has_image"]
        if len(keys) != n:
            raise ValueError(f"keys do not match count {n}")
        check(values, n)
        if valid.dtype != np.bool_ or has_image.dtype != np.bool_ or valid.shape != (n,) \
                or has_image.shape != (n,) or np.any(valid & ~has_image):
            raise ValueError("valid/has_image masks are inconsistent")
        index = arrays["failure_index"]
        sources = unpack_strings(arrays["failure_source"], arrays["failure_source_offsets"])
        reasons = unpack_strings(arrays["failure_reason"], arrays["failure_reason_offsets"])
        if index.dtype != np.int64 or not len(index) == len(sources) == len(reasons) \
                or (index.size and (index.min() < 0 or index.max() >= n)):
            raise ValueError("failure arrays are inconsistent")
        url = str(meta["url"])
        shard_error = meta.get("shard_error")
        if shard_error is not None and not isinstance(shard_error, dict):
            raise ValueError("shard_error must be a mapping")
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise SidecarError(str(path), f"inconsistent {kind} file ({exc}); it will be recomputed") from None
    return meta, {"url": url, "keys": tuple(keys), name: values, "valid": valid, "has_image": has_image,
                  "failures": tuple(zip(index.tolist(), sources, reasons)), "shard_error": shard_error}
