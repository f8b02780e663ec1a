"""Self-describing, checksummed, pickle-free array files (sidecars and plans use this).

Layout of a store file::

    b"TORCHDEDUP-STORE"          16-byte magic
    uint64 little-endian          length H of the JSON header
    H bytes                       JSON header (UTF-8): kind, format version, meta, array table
    32 bytes                      SHA-256 of the JSON header bytes
    array data                    each array's raw little-endian bytes at its declared offset

Each array entry states name, dtype (from a short allow-list: no object arrays), shape,
offset, byte count and SHA-256. Reading checks the magic, header checksum, declared sizes
against the real file size (so a hostile header cannot make us allocate absurd memory),
and every array checksum; nothing is ever unpickled. Writing is atomic: a temp file in the
target folder, fsync, ``os.replace``, fsync of the folder, and the temp file removed in
``finally`` if anything failed — a crash leaves the old file or the new one, never half.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import StoreError

__all__ = ["FORMAT_VERSION", "atomic_write_bytes", "pack_strings", "read_store", "read_store_expecting",
           "unpack_strings", "write_store"]

MAGIC = b"TORCHDEDUP-STORE"
FORMAT_VERSION = 1
_MAX_HEADER = 64 * 1024 * 1024
_ALIGN = 64
_DTYPES = {
    "bool": np.dtype(np.bool_),
    "uint8": np.dtype("<u1"),
    "int8": np.dtype("<i1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "uint32": np.dtype("<u4"),
    "int32": np.dtype("<i4"),
    "uint64": np.dtype("<u8"),
    "int64": np.dtype("<i8"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}


def _dtype_name(arr: np.ndarray, name: str) -> str:
    for key, dt in _DTYPES.items():
        if arr.dtype == dt or (arr.dtype.kind == dt.kind and arr.dtype.itemsize == dt.itemsize):
            return key
    raise TypeError(f"array {name!r} has dtype {arr.dtype}, which a store file cannot hold; "
                    f"allowed: {', '.join(_DTYPES)}")


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write_bytes(path: str | os.PathLike, chunks) -> Path:
    """Write an iterable of byte chunks to ``path`` atomically (temp file, fsync, replace).

    The file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the
    umask), not ``mkstemp``'s private ``0o600``: sidecars and plans sit beside data that
    others read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            except OSError:  # a filesystem without permission bits: keep what it gives
                pass
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
        except OSError:  # some filesystems do not allow opening a folder
            return path
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)
        return path
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def write_store(path: str | os.PathLike, kind: str, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> Path:
    """Atomically write ``arrays`` and the JSON-serialisable ``meta`` to ``path``.

    Args:
        path: target file; its folder is created if needed.
        kind: what the file is (``"sidecar"``, ``"plan"``, ...); checked on read.
        meta: JSON-serialisable provenance and settings.
        arrays: name → numpy array (numeric or bool dtypes only).

    Returns:
        The path written.
    """
    table = []
    blobs = []
    offset = 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        dname = _dtype_name(arr, name)
        data = np.ascontiguousarray(arr, dtype=_DTYPES[dname]).tobytes()
        pad = (-offset) % _ALIGN
        offset += pad
        blobs.append(b"\0" * pad)
        table.append({"name": name, "dtype": dname, "shape": list(arr.shape), "offset": offset,
                      "nbytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        blobs.append(data)
        offset += len(data)
    header = json.dumps({"kind": kind, "format_version": FORMAT_VERSION, "meta": meta, "arrays": table},
                        sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    head = MAGIC + len(header).to_bytes(8, "little") + header + hashlib.sha256(header).digest()
    return atomic_write_bytes(path, [head, *blobs])


def read_store(path: str | os.PathLike, kind: str, error: type[StoreError] = StoreError
               ) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a store file written by :func:`write_store`.

    Args:
        path: the file.
        kind: the kind it must declare.
        error: the :class:`StoreError` subclass to raise.

    Returns:
        ``(meta, arrays)``.

    Raises:
        StoreError (or ``error``): missing, truncated, corrupt, hostile, wrong kind or version.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
        # fstat, not stat(path): a writer may os.replace the path between the two calls, and
        # the size must be that of the file we actually read.
        size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise error(str(path), f"cannot open: {exc.strerror or exc}") from None
    with f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise error(str(path), "not a torch_dedup file (bad magic bytes); delete it to recompute")
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise error(str(path), "truncated header; delete it to recompute")
        hlen = int.from_bytes(raw_len, "little")
        data_start = len(MAGIC) + 8 + hlen + 32
        if hlen > _MAX_HEADER or data_start > size:
            raise error(str(path), f"declared header size {hlen} does not fit the file ({size} bytes): "
                                   "truncated or corrupt; delete it to recompute")
        header = f.read(hlen)
        digest = f.read(32)
        if hashlib.sha256(header).digest() != digest:
            raise error(str(path), "header checksum mismatch (corrupt file); delete it to recompute")
        try:
            doc = json.loads(header)
        except (ValueError, RecursionError) as exc:  # RecursionError: a deeply nested (hostile) header
            raise error(str(path), f"header is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(doc, dict) or doc.get("kind") != kind:
            raise error(str(path), f"file kind is {doc.get('kind') if isinstance(doc, dict) else None!r}, "
                                   f"expected {kind!r}")
        if doc.get("format_version") != FORMAT_VERSION:
            raise error(str(path), f"format version {doc.get('format_version')!r} is not the supported "
                                   f"{FORMAT_VERSION}; recompute it with this torch_dedup version")
        arrays: dict[str, np.ndarray] = {}
        entries = doc.get("arrays", [])
        if not isinstance(entries, list):
            raise error(str(path), "malformed array table")
        for entry in entries:
            if not isinstance(entry, dict):
                raise error(str(path), f"malformed array entry {entry!r:.200}")
            arrays[str(entry.get("name", "?"))] = _read_array(f, entry, data_start, size, path, error)
        _check_padding(f, entries, data_start, size, path, error)
        meta = doc.get("meta")
        if not isinstance(meta, dict):
            raise error(str(path), "header has no meta mapping")
        return meta, arrays


def read_store_expecting(path: str | os.PathLike, kind: str, expect: Mapping | None,
                         error: type[StoreError] = StoreError) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`read_store`, then every ``expect`` key must hold its value in the meta.

    Raises:
        StoreError (or ``error``): as :func:`read_store`, or ``"stale: KEY is X, expected Y"``.
    """
    meta, arrays = read_store(path, kind, error)
    for key, want in dict(expect or {}).items():
        if meta.get(key) != want:
            raise error(str(path), f"stale: {key} is {meta.get(key)!r}, expected {want!r}")
    return meta, arrays


def _read_array(f, entry, data_start: int, size: int, path: Path, error) -> np.ndarray:
    try:
        name = str(entry["name"])
        dt = _DTYPES[entry["dtype"]]
        shape = tuple(int(s) for s in entry["shape"])
        offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
        want = str(entry["sha256"])
    except (KeyError, TypeError, ValueError):
        raise error(str(path), f"malformed array entry {entry!r:.200}") from None
    if any(s < 0 for s in shape) or offset < 0 or nbytes < 0:
        raise error(str(path), f"array {name!r}: negative size or offset")
    count = 1
    for s in shape:
        count *= s
    if count * dt.itemsize != nbytes or data_start + offset + nbytes > size:
        raise error(str(path), f"array {name!r} declares shape {shape} ({nbytes} bytes) that does not fit "
                               f"the {size}-byte file: truncated or hostile; delete it to recompute")
    f.seek(data_start + offset)
    buf = f.read(nbytes)
    if len(buf) != nbytes or hashlib.sha256(buf).hexdigest() != want:
        raise error(str(path), f"array {name!r} checksum mismatch (corrupt file); delete it to recompute")
    return np.frombuffer(buf, dtype=dt).reshape(shape).copy() if nbytes else np.zeros(shape, dt)


def _check_padding(f, entries, data_start: int, size: int, path: Path, error) -> None:
    """Every byte outside the arrays must be zero padding, and nothing may follow the last array.

    With this, a flipped bit anywhere in the file is detected, not only inside the arrays.
    """
    spans = sorted((int(e["offset"]), int(e["offset"]) + int(e["nbytes"])) for e in entries)
    pos = 0
    for start, end in spans:
        if start < pos:
            raise error(str(path), "arrays overlap: corrupt or hostile file")
        if start > pos:
            f.seek(data_start + pos)
            if f.read(start - pos).strip(b"\0"):
                raise error(str(path), "non-zero bytes in padding (corrupt file); delete it to recompute")
        pos = end
    if data_start + pos != size:
        raise error(str(path), f"{size - data_start - pos} unexpected bytes after the data (corrupt or "
                               "appended file); delete it to recompute")


def pack_strings(strings) -> tuple[np.ndarray, np.ndarray]:
    """Encode strings as one UTF-8 byte array and ``len+1`` int64 offsets (no object arrays).

    File names that are not valid UTF-8 reach Python as ``str`` with lone surrogates
    (``os.fsdecode``'s ``surrogateescape``); they are stored as their original bytes, so
    :func:`unpack_strings` gives back the identical ``str`` (and ``os.fsencode`` of it the
    name on disk). Any other lone surrogate (not from a file name) cannot be stored exactly
    and raises ``ValueError`` naming the string.
    """
    encoded = [_encode(s, k) for k, s in enumerate(strings)]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _encode(s: str, k: int) -> bytes:
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string {k} ({s!r:.200}) holds {s[exc.start:exc.end]!r}, a lone surrogate that is not an "
                         f"escaped file-name byte, so it cannot be stored exactly; pass text that is valid "
                         f"Unicode (e.g. s.encode('utf-8', 'replace').decode())") from None


def unpack_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Inverse of :func:`pack_strings`; raises ``ValueError`` on inconsistent offsets.

    Bytes that are not UTF-8 (a file name stored by :func:`pack_strings`) come back as
    ``surrogateescape`` characters, exactly the ``str`` that was packed.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(blob) \
            or np.any(np.diff(offsets) < 0):
        raise ValueError("string offsets are inconsistent with the byte blob")
    raw = bytes(np.asarray(blob, dtype=np.uint8))
    return [raw[a:b].decode("utf-8", "surrogateescape") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
