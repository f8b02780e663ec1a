"""Hash sidecars: a dataset's hashes on disk, with everything needed to trust them later.

A sidecar is a :mod:`torch_dedup._store` file of kind ``"sidecar"``. Its meta states the
sidecar format version, hash method and size, decode mode (``"exact"`` or
``"fast_decode"``), the source fingerprint, the item count, the versions of torch_dedup,
imagehash, Pillow and numpy, the hash environment (:func:`hash_environment`: torch_dedup's
hashing version, the exact imagehash and Pillow versions, Pillow's decoder libraries), and
when it was written. Its arrays hold the packed hashes,
the per-item ``valid`` mask and the failures (index, source, reason) as flat arrays, so a
million-item sidecar loads in milliseconds and never through pickle.

Readers state what they expect (:func:`read_sidecar` ``expect=``); a file made for other
data or settings is *stale* and raises :class:`~torch_dedup.errors.SidecarError`, exactly
like a corrupt one. :func:`load_or_none` turns either into a WARNING and ``None``, so the
caller recomputes and rewrites: a stale or damaged cache is never used.

Layer 2: numpy and the stdlib (and Pillow, read lazily for its decoder versions).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ._store import pack_strings, read_store, unpack_strings, write_store
from .errors import SidecarError

__all__ = [
    "DECODE_MODES",
    "HASHING_VERSION",
    "SIDECAR_SUFFIX",
    "SIDECAR_VERSION",
    "Sidecar",
    "default_cache_dir",
    "hash_environment",
    "library_versions",
    "load_or_none",
    "read_sidecar",
    "remove_stale_temp_files",
    "sidecar_dir",
    "sidecar_file",
    "sidecar_name",
    "write_sidecar",
]

logger = logging.getLogger(__name__)

#: Version of the sidecar's meaning (bump when a hash of the same settings could change).
SIDECAR_VERSION = 1
#: Version of torch_dedup's own hashing (decode, resize, transforms, bit packing). Part of
#: :func:`hash_environment`: bump it with any change that could move a hash bit, so every
#: sidecar made before is recomputed (tests pin known hash values to catch a forgotten bump).
HASHING_VERSION = 1
#: Pillow's image codecs whose decoded pixels could differ between library versions.
_DECODERS = (("jpg", "libjpeg"), ("jpg_2000", "openjpeg"), ("webp", "libwebp"), ("libtiff", "libtiff"))
SIDECAR_SUFFIX = ".tdhash"
DECODE_MODES = ("exact", "fast_decode")
_KIND = "sidecar"
_DIR_NAME = ".torch_dedup"
_TEMP_RE = re.compile(r"^\..+\.tmp$")  # atomic_write_bytes' temp names: ".<target>.<random>.tmp"

Failure = tuple[int, str, str]


@dataclass(frozen=True)
class Sidecar:
    """The verified contents of one sidecar file.

    Attributes:
        hashes: packed hashes, ``uint64`` ``(N,)`` or ``(N, W)``; rows of invalid items are 0.
        valid: ``bool`` ``(N,)``, False where the item could not be hashed.
        failures: ``(index, source, reason)`` of each item that could not be hashed.
        meta: the provenance mapping (method, hash_size, decode, fingerprint, count, versions, ...).
        path: the file it was read from (``None`` when built in memory).
    """

    hashes: np.ndarray
    valid: np.ndarray
    failures: tuple[Failure, ...] = ()
    meta: Mapping = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.valid.shape[0])


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour decides the hash bits."""
    return {name: _version(dist) for name, dist in
            (("torch_dedup", "torch_dedup"), ("imagehash", "ImageHash"), ("Pillow", "Pillow"), ("numpy", "numpy"))}


def _feature_version(features, name: str) -> str | None:
    try:
        return features.version(name)
    except (ValueError, AttributeError):  # a Pillow that does not know this feature
        return None


def _decoder_versions() -> str:
    """``libjpeg-<v>/...`` for the codecs this Pillow build reports a version of."""
    try:
        from PIL import features
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return "decoders-unknown"
    out = []
    for feature, name in _DECODERS:
        version = _feature_version(features, feature)
        if version and feature == "jpg":
            turbo = _feature_version(features, "libjpeg_turbo")
            # libjpeg-turbo reports the libjpeg API it emulates (6.2, 8.0): its own release says more
            version = f"{version}/libjpeg-turbo-{turbo}" if turbo else version
        if version:
            out.append(f"{name}-{version}")
    return "/".join(out) or "decoders-none"


def hash_environment() -> str:
    """Everything besides the settings whose change could move a hash bit, as one string a sidecar is keyed on.

    torch_dedup's :data:`HASHING_VERSION`, the exact imagehash and Pillow versions, and the
    versions of the image decoders Pillow links (libjpeg or libjpeg-turbo, openjpeg,
    libwebp, libtiff, as far as this build reports them). A sidecar (of a dataset or of a
    shard) made under another environment is stale and recomputed.

    Example:
        >>> hash_environment().startswith("torch_dedup-hashing-")
        True
    """
    v = library_versions()
    return (f"torch_dedup-hashing-{HASHING_VERSION}/imagehash-{v['imagehash']}/Pillow-{v['Pillow']}/"
            f"{_decoder_versions()}")


def sidecar_name(fingerprint: str, method: str, hash_size: int, decode: str) -> str:
    """File name of the sidecar for these settings: different settings never share a name.

    Example:
        >>> sidecar_name("array:abc", "phash", 8, "exact")[:13]
        'phash8-exact-'
    """
    _check_decode(decode)
    key = "\0".join((str(fingerprint), str(method), str(int(hash_size)), decode, str(SIDECAR_VERSION)))
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=10).hexdigest()
    return f"{method}{int(hash_size)}-{decode}-{digest}{SIDECAR_SUFFIX}"


def default_cache_dir() -> Path:
    """The user-level cache folder: ``$TORCH_DEDUP_CACHE``, else ``$XDG_CACHE_HOME/torch_dedup``,
    else ``~/.cache/torch_dedup`` (read from the environment at call time)."""
    env = os.environ.get("TORCH_DEDUP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "torch_dedup"


def _writable_dir(folder: Path) -> bool:
    """Whether ``folder`` exists (or can be made) and accepts a new file; probes for real,
    because permission bits say nothing for root or on read-only mounts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}-{time.monotonic_ns()}"
        with open(probe, "xb"):
            pass
        probe.unlink()
        return True
    except OSError:
        return False


def sidecar_dir(root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, *,
                class_folders: bool = False) -> Path:
    """Folder that holds a dataset's sidecars.

    Args:
        root: the dataset's root folder, if it has one. ``<root>/.torch_dedup/`` is used
            when it can be written.
        cache_dir: explicit folder; overrides everything else.
        class_folders: every sub-folder of ``root`` is a class (``ImageFolder``): a
            ``.torch_dedup/`` folder there would become a class of its own and break the
            dataset, so ``root`` itself is used (sidecar names then start with
            ``.torch_dedup-``, see :func:`sidecar_file`).

    Returns:
        ``cache_dir`` if given; else ``<root>/.torch_dedup`` (``<root>`` for class
        folders) when writable; else :func:`default_cache_dir`.

    Example:
        >>> sidecar_dir(cache_dir="/tmp/my-cache")
        PosixPath('/tmp/my-cache')
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if root is not None:
        candidate = Path(root).expanduser() if class_folders else Path(root).expanduser() / _DIR_NAME
        if (candidate.is_dir() if class_folders else True) and _writable_dir(candidate):
            return candidate
        logger.info("dataset root %s is not writable; sidecars go to %s", root, default_cache_dir())
    return default_cache_dir()


def sidecar_file(name: str, root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 *, class_folders: bool = False) -> Path:
    """Full path of the sidecar called ``name`` (:func:`sidecar_name`) of a dataset.

    In the folder :func:`sidecar_dir` picks; when that folder is an ``ImageFolder`` root
    (``class_folders``), the file is hidden as ``.torch_dedup-<name>``: a file there is
    neither a class nor a sample to torchvision.

    Example:
        >>> sidecar_file("phash8-exact-0123.tdhash", cache_dir="/tmp/c")
        PosixPath('/tmp/c/phash8-exact-0123.tdhash')
    """
    folder = sidecar_dir(root, cache_dir, class_folders=class_folders)
    in_root = class_folders and cache_dir is None and root is not None and folder == Path(root).expanduser()
    return folder / (f"{_DIR_NAME}-{name}" if in_root else name)


def _check_decode(decode: str) -> None:
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r} is not a decode mode; use one of {DECODE_MODES}")


def _failure_arrays(failures: Iterable[Failure], n: int) -> dict[str, np.ndarray]:
    failures = list(failures)
    index = np.array([int(f[0]) for f in failures], dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"failure indices must lie in [0, {n - 1}], got {index.min()}..{index.max()}")
    src_blob, src_off = pack_strings([str(f[1]) for f in failures])
    why_blob, why_off = pack_strings([str(f[2]) for f in failures])
    return {"failure_index": index, "failure_source": src_blob, "failure_source_offsets": src_off,
            "failure_reason": why_blob, "failure_reason_offsets": why_off}


def write_sidecar(path: str | os.PathLike, hashes: np.ndarray, valid: np.ndarray,
                  failures: Iterable[Failure] = (), *, method: str, hash_size: int,
                  fingerprint: str, decode: str = "exact", extra: Mapping | None = None) -> Path:
    """Write a sidecar atomically (temp file, fsync, replace): readers see the old file or the new one.

    Args:
        path: target file; its folder is created when missing.
        hashes: ``uint64`` ``(N,)`` or ``(N, W)`` packed hashes.
        valid: ``bool`` ``(N,)``.
        failures: ``(index, source, reason)`` for items that could not be hashed.
        method: hash method name (``"phash"``, ...).
        hash_size: the hash size the hashes were made with.
        fingerprint: the source fingerprint the hashes belong to.
        decode: ``"exact"`` or ``"fast_decode"``.
        extra: more JSON-serialisable provenance to record (e.g. the dataset class).

    Returns:
        The path written.

    Raises:
        ValueError: shapes or dtypes that do not fit together.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.tdhash")
        >>> _ = write_sidecar(p, np.zeros(3, np.uint64), np.ones(3, bool), method="phash",
        ...                   hash_size=8, fingerprint="demo")
        >>> read_sidecar(p, expect={"count": 3}).meta["method"]
        'phash'
    """
    _check_decode(decode)
    hashes = np.asarray(hashes)
    valid = np.asarray(valid)
    if hashes.dtype != np.uint64 or hashes.ndim not in (1, 2):
        raise ValueError(f"hashes must be uint64 of shape (N,) or (N, W), got {hashes.dtype} {hashes.shape}")
    if valid.dtype != np.bool_ or valid.shape != hashes.shape[:1]:
        raise ValueError(f"valid must be bool of shape ({hashes.shape[0]},), got {valid.dtype} {valid.shape}")
    n = int(hashes.shape[0])
    failures = tuple((int(i), str(s), str(r)) for i, s, r in failures)
    meta = {
        "sidecar_version": SIDECAR_VERSION,
        "method": str(method),
        "hash_size": int(hash_size),
        "decode": decode,
        "fingerprint": str(fingerprint),
        "count": n,
        "n_failures": len(failures),
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    if path.parent.is_dir():
        remove_stale_temp_files(path.parent)
    arrays = {"hashes": hashes, "valid": valid, **_failure_arrays(failures, n)}
    return write_store(path, _KIND, meta, arrays)


def _meta_value(meta: Mapping, key: str):
    if key == "format":
        return meta.get("sidecar_version")
    if key in ("Pillow", "imagehash", "numpy", "torch_dedup"):
        versions = meta.get("versions")
        return versions.get(key) if isinstance(versions, dict) else None
    if key in meta:
        return meta.get(key)
    extra = meta.get("extra")
    return extra.get(key) if isinstance(extra, dict) else None


def read_sidecar(path: str | os.PathLike, *, expect: Mapping | None = None) -> Sidecar:
    """Read and verify a sidecar.

    Args:
        path: the file.
        expect: values the file must state, e.g. ``{"fingerprint": fp, "method": "phash",
            "hash_size": 8, "decode": "exact", "count": n}``. Keys: any meta key, any key of
            ``extra`` given to :func:`write_sidecar`, ``"format"`` (the sidecar version; always
            checked against :data:`SIDECAR_VERSION`), and the library names in
            ``meta["versions"]`` (``"Pillow"``, ``"imagehash"``, ...).

    Returns:
        The :class:`Sidecar`.

    Raises:
        SidecarError: missing, truncated, bit-flipped, hostile, of another kind or version
            (from :func:`torch_dedup._store.read_store`), inconsistent, or *stale*: a value
            in ``expect`` differs from the file's.

    Example:
        >>> read_sidecar("/nonexistent.tdhash")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        SidecarError: /nonexistent.tdhash: cannot open: No such file or directory
    """
    path = Path(path)
    meta, arrays = read_store(path, _KIND, SidecarError)
    want = {"format": SIDECAR_VERSION, **dict(expect or {})}
    for key, value in want.items():
        have = _meta_value(meta, key)
        if have != value:
            raise SidecarError(str(path), f"stale: {key} is {have!r}, expected {value!r}; it will be recomputed")
    try:
        hashes, valid = arrays["hashes"], arrays["valid"]
        n = int(meta["count"])
        if hashes.dtype != np.uint64 or hashes.ndim not in (1, 2) or hashes.shape[0] != n \
                or valid.dtype != np.bool_ or valid.shape != (n,):
            raise ValueError(f"hashes {hashes.dtype}{hashes.shape} / valid {valid.dtype}{valid.shape} "
                             f"do not match count {n}")
        index = arrays["failure_index"]
        sources = unpack_strings(arrays["failure_source"], arrays["failure_source_offsets"])
        reasons = unpack_strings(arrays["failure_reason"], arrays["failure_reason_offsets"])
        if index.dtype != np.int64 or index.ndim != 1 or not len(index) == len(sources) == len(reasons):
            raise ValueError("failure arrays disagree in length")
        if index.size and (index.min() < 0 or index.max() >= n):
            raise ValueError("failure index out of range")
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise SidecarError(str(path), f"inconsistent sidecar contents ({exc}); it will be recomputed") from None
    failures = tuple(zip(index.tolist(), sources, reasons))
    return Sidecar(hashes=hashes, valid=valid, failures=failures, meta=meta, path=path)


def load_or_none(path: str | os.PathLike, expect: Mapping | None = None) -> Sidecar | None:
    """Read a sidecar if it is present, intact and current; else ``None`` (the caller recomputes).

    A missing file returns ``None`` quietly; a corrupt or stale one logs a WARNING that names
    the file and the reason, then returns ``None``.

    Example:
        >>> load_or_none("/nonexistent.tdhash") is None
        True
    """
    path = Path(path)
    if not path.exists():
        logger.debug("no sidecar at %s", path)
        return None
    try:
        return read_sidecar(path, expect=expect)
    except SidecarError as exc:
        logger.warning("ignoring sidecar %s: %s", path, exc.reason)
        return None


def remove_stale_temp_files(folder: str | os.PathLike, max_age_s: float = 3600.0) -> int:
    """Delete temp files left by writers that died mid-write (SIGKILL, power loss).

    Only names of the atomic-write temp form (``.<name>.<random>.tmp``) untouched for
    ``max_age_s`` seconds are removed, so a writer still at work keeps its file.

    Returns:
        How many files were removed.
    """
    folder = Path(folder)
    now = time.time()
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not _TEMP_RE.match(entry.name) or SIDECAR_SUFFIX not in entry.name:
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime >= max_age_s:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue  # another process removed or replaced it meanwhile
    if removed:
        logger.info("removed %d stale temp file(s) from %s", removed, folder)
    return removed
