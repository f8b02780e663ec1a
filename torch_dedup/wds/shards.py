"""Hash webdataset shards: one sidecar per shard, computed once, in parallel, resumable.

:func:`hash_shards` looks for a valid sidecar of each shard (same fingerprint, same
settings) and hashes only the shards without one, each in a worker process, writing its
sidecar as soon as it is done: a crash loses at most the shards in flight, and adding
shards later hashes only the new ones. Images are decoded from the member bytes and go
through the same exact path as image files (:func:`torch_dedup.hashing._decode.hash_files`),
so a shard sample's hash equals ``imagehash.<method>(PIL.Image.open(member))``.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing import hash_bits, hash_files
from torch_dedup.options import DedupOptions
from torch_dedup.sidecar import hash_environment

from .shard_sidecar import (
    ShardSidecar,
    read_shard_sidecar,
    shard_sidecar_paths,
    write_shard_sidecar,
)
from .shard_urls import expand_shard_urls, is_local, local_path, shard_fingerprint
from .tar_samples import ShardReadError, iter_tar_samples

__all__ = ["DEFAULT_IMAGE_EXTS", "ShardHashes", "hash_shard", "hash_shards", "parse_image_exts"]

logger = logging.getLogger(__name__)

#: Image suffixes looked for in a sample, in order of preference.
DEFAULT_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
_FLUSH = 256  # images decoded and hashed per batch (bounds memory)
_CUT_REASON = "cut by the damage to its shard (members may be missing or truncated)"
#: Meta flag of sidecars whose damaged shard's last sample is recorded as failed (older ones are stale).
_CUT_FLAG = "cut_sample_failed"


def parse_image_exts(image_exts: str | Iterable[str]) -> tuple[str, ...]:
    """``"jpg;png"`` or ``["jpg", "png"]`` -> ``("jpg", "png")`` (lower case, order kept).

    Raises:
        ValueError: empty, or an entry that is not a non-empty string.

    Example:
        >>> parse_image_exts("JPG;png")
        ('jpg', 'png')
    """
    items = image_exts.split(";") if isinstance(image_exts, str) else list(image_exts)
    out = []
    for e in items:
        if not isinstance(e, str) or not e.strip().lstrip("."):
            raise ValueError(f"image_exts={image_exts!r}: every entry must be a non-empty suffix like 'jpg'")
        e = e.strip().lstrip(".").lower()
        if e not in out:
            out.append(e)
    if not out:
        raise ValueError(f"image_exts={image_exts!r} names no suffix; e.g. 'jpg;jpeg;png;webp;ppm;bmp'")
    return tuple(out)


def _check_engine(engine, ray_address) -> None:
    from torch_dedup.engines import ENGINES

    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not an engine; use one of {ENGINES} ('ray' needs "
                         "pip install 'torch_dedup[ray]')")
    if ray_address is not None and engine != "ray":
        raise ValueError(f"ray_address={ray_address!r} is only used with engine='ray' (got engine={engine!r})")


def _check(method: str, hash_size, on_error: str, workers) -> None:
    """The shared option rules (:class:`~torch_dedup.options.DedupOptions`) for the shard settings."""
    DedupOptions(method=method, hash_size=hash_size, on_error=on_error, workers=workers)


def hash_shard(url: str, method: str = "phash", hash_size: int = 8, *,
               image_exts: str | Iterable[str] = DEFAULT_IMAGE_EXTS, on_error: str = "raise",
               fast_decode: bool = False) -> ShardSidecar:
    """Hash the images of one shard (no file is written; see :func:`hash_shards` for caching).

    Args:
        url: the shard (local path or any URL webdataset opens).
        method: ``"ahash"``, ``"dhash"``, ``"phash"``, ``"whash"`` or a composite code
            (``"phash+dhash"``).
        hash_size: hash size (8: 64 bits).
        image_exts: suffixes that hold the image, in order of preference.
        on_error: ``"raise"``: an undecodable image raises :class:`ImageDecodeError` and a
            damaged shard :class:`ShardReadError`; ``"skip"``: both are recorded
            (``failures`` / ``shard_error``) and hashing goes on.
        fast_decode: JPEG draft decoding (faster, some bits differ from imagehash).

    Returns:
        A :class:`ShardSidecar` (``path`` None).

    Raises:
        ShardReadError, ImageDecodeError: see ``on_error``.

    Example:
        >>> sc = hash_shard("shards/shard-000000.tar")  # doctest: +SKIP
        >>> sc.keys[:2], sc.hashes.shape  # doctest: +SKIP
        (('000000', '000001'), (1000,))
    """
    exts = parse_image_exts(image_exts)
    _check(method, hash_size, on_error, 0)
    words = -(-hash_bits(method, hash_size) // 64)
    keys: list[str] = []
    has_image: list[bool] = []
    rows: dict[int, np.ndarray] = {}
    failures: list[tuple[int, str, str]] = []
    batch: list[tuple[int, io.BytesIO]] = []
    sources: dict[int, str] = {}

    def flush() -> None:
        for index, row, reason in hash_files(batch, method, hash_size, fast_decode):
            if row is None:
                if on_error == "raise":
                    raise ImageDecodeError(sources[index], reason, index)
                failures.append((index, sources[index], reason))
            else:
                rows[index] = row
        batch.clear()

    shard_error = None
    try:
        for sample in iter_tar_samples(url):
            i = len(keys)
            keys.append(sample.key)
            if not sample.complete:
                # the damage may have cut its image (or any member) off: a failed sample, never
                # "a sample without an image", so the plan drops it and nothing writes it
                has_image.append(True)
                failures.append((i, f"{url}:{sample.key}", _CUT_REASON))
                continue
            ext = next((e for e in exts if e in sample.files), None)
            has_image.append(ext is not None)
            if ext is not None:
                stored, data = sample.files[ext]
                sources[i] = f"{url}:{sample.key}.{stored}"
                batch.append((i, io.BytesIO(data)))
                if len(batch) >= _FLUSH:
                    flush()
    except ShardReadError as exc:
        if on_error == "raise":
            raise
        logger.warning("%s; %s", exc.detail, "shard left out" if exc.unopened else
                       "planning the samples read before the damage")
        shard_error = {"offset": exc.offset, "member": exc.member, "reason": exc.reason}
    if batch:
        flush()
    n = len(keys)
    hashes = np.zeros((n, words), np.uint64)
    valid = np.zeros(n, bool)
    for i, row in rows.items():
        hashes[i] = row
        valid[i] = True
    return ShardSidecar(url=url, keys=tuple(keys), hashes=hashes[:, 0].copy() if words == 1 else hashes,
                        valid=valid, has_image=np.array(has_image, dtype=bool).reshape(n),
                        failures=tuple(sorted(failures)), shard_error=shard_error)


#: Below this many bytes of local shards to hash, worker processes cost more than they save:
#: each spawned worker imports torch_dedup (and torch) first, seconds on a busy machine.
_POOL_MIN_BYTES = 256 << 20


def _auto_workers(urls: list[str]) -> int:
    if len(urls) < 2:
        return 0
    local = [u for u in urls if is_local(u)]
    if len(local) == len(urls) and sum(os.path.getsize(local_path(u)) for u in local) < _POOL_MIN_BYTES:
        return 0
    return min(len(urls), os.cpu_count() or 1)


def _expect(fingerprint: str, method: str, hash_size: int, decode: str, exts: tuple) -> dict:
    return {"fingerprint": fingerprint, "method": method, "hash_size": int(hash_size), "decode": decode,
            "image_exts": list(exts), "hash_env": hash_environment()}


def _load_valid(paths: list[Path], expect: dict) -> ShardSidecar | None:
    for path in paths:
        if path.exists():
            try:
                sc = read_shard_sidecar(path, expect=expect)
            except Exception as exc:
                logger.warning("ignoring shard sidecar %s: %s", path, getattr(exc, "reason", exc))
                continue
            if sc.shard_error is not None and not sc.meta.get(_CUT_FLAG):
                # written before a sample cut by damage was recorded as failed: it may list that
                # sample as "no image" (kept and rewritten), so it is stale
                logger.info("shard sidecar %s predates the rule for samples cut by damage; hashing again", path)
                continue
            return sc
    return None


def _raise_recorded(url: str, sc: ShardSidecar) -> None:
    """A raise run over a shard whose valid sidecar records damage or failed images: raise what it records.

    The sidecar was written by an ``on_error="skip"`` run; serving it to a raise run would
    silently plan only part of the shard, so the recorded error is raised as if read now.
    """
    note = f" (recorded in its sidecar {sc.path} by an earlier on_error='skip' run)"
    if sc.shard_error is not None:
        err = sc.shard_error
        raise ShardReadError(url, f"{err.get('reason')}{note}", err.get("offset"), err.get("member"))
    index, source, reason = sc.failures[0]
    raise ImageDecodeError(source, f"{reason}{note}", index)


def _hash_and_store(url: str, paths: list[str], method: str, hash_size: int, exts: tuple, on_error: str,
                    fast_decode: bool) -> tuple:
    """Worker task: hash one shard and write its sidecar. Returns data, never a custom exception."""
    decode = "fast_decode" if fast_decode else "exact"
    try:
        fingerprint = shard_fingerprint(url)  # before reading: a shard changed meanwhile is stale next time
    except OSError as exc:
        return ("shard_error", url, f"cannot open: {exc}", None, None, True)
    try:
        sc = hash_shard(url, method, hash_size, image_exts=exts, on_error=on_error, fast_decode=fast_decode)
    except ShardReadError as exc:
        return ("shard_error", exc.url, exc.reason, exc.offset, exc.member, exc.unopened)
    except ImageDecodeError as exc:
        return ("image_error", exc.source, exc.reason, exc.index)
    extra = {"image_exts": list(exts), "hash_env": hash_environment(), _CUT_FLAG: True, "on_error": on_error}
    last = None
    for path in paths:
        try:
            written = write_shard_sidecar(path, sc, method=method, hash_size=hash_size, fingerprint=fingerprint,
                                          decode=decode, extra=extra)
            return ("ok", str(written))
        except OSError as exc:
            logger.info("cannot write shard sidecar %s (%s); trying the next place", path, exc)
            last = exc
    return ("write_error", url, str(last))


@dataclass
class ShardHashes:
    """The hashes of many shards, one :class:`ShardSidecar` per readable shard, in URL order.

    Attributes:
        urls: the shards asked for.
        sidecars: a sidecar per shard that could be read (all of them unless ``on_error="skip"``
            met a missing shard); damaged shards read with ``skip`` are here with ``shard_error``.
        hashed: shards hashed by this call.
        cached: shards whose valid sidecar was reused.
        errors: ``(url, reason)`` of shards missing (not in ``sidecars``) or damaged.
        settings: method, hash_size, decode, image_exts.
    """

    urls: list
    sidecars: list
    hashed: list = field(default_factory=list)
    cached: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        """Samples in all sidecars."""
        return sum(len(sc) for sc in self.sidecars)

    @property
    def no_image(self) -> list[tuple[str, str]]:
        """``(url, key)`` of every sample without an image member."""
        return [(sc.url, k) for sc in self.sidecars for k in sc.no_image_keys]

    @property
    def failures(self) -> list[tuple[str, str, str]]:
        """``(url, source, reason)`` of every image that could not be hashed."""
        return [(sc.url, s, r) for sc in self.sidecars for _, s, r in sc.failures]


def _raise(res: tuple) -> None:
    if res[0] == "shard_error":
        raise ShardReadError(res[1], res[2], res[3], res[4], unopened=res[5])
    if res[0] == "image_error":
        raise ImageDecodeError(res[1], res[2], res[3])
    raise OSError(f"cannot write the sidecar of shard {res[1]} anywhere ({res[2]}); pass sidecar_dir= "
                  "to a writable folder")


@dataclass
class _HashRun:
    """What :func:`_hash_missing` did: sidecar path (or error) per URL index, nothing loaded."""

    urls: list
    paths: dict  # index -> sidecar path (str) of every readable shard
    hashed: list
    cached: list
    errors: dict  # index -> (url, reason) for shards with no sidecar
    settings: dict
    loaded: dict = field(default_factory=dict)  # index -> ShardSidecar already read (keep=True only)


def _hash_missing(urls, method, hash_size, exts, sidecar_dir, workers, on_error, fast_decode, refresh, progress,
                  engine, ray_address, keep: bool = False) -> _HashRun:
    """Hash the shards without a valid sidecar; return where every sidecar is (one shard in memory at a time)."""
    urls = expand_shard_urls(urls)
    decode = "fast_decode" if fast_decode else "exact"
    settings = {"method": method, "hash_size": int(hash_size), "decode": decode, "image_exts": list(exts)}
    paths_out: dict[int, str] = {}
    errors: dict[int, tuple[str, str]] = {}
    cached, todo = [], []
    loaded: dict[int, ShardSidecar] = {}
    for i, url in enumerate(urls):
        paths = shard_sidecar_paths(url, method, hash_size, decode, sidecar_dir)
        try:
            fingerprint = shard_fingerprint(url)
        except OSError as exc:
            if on_error == "raise":
                raise ShardReadError(url, f"cannot open: {exc}", unopened=True) from None
            logger.warning("skipping shard %s: cannot open: %s", url, exc)
            errors[i] = (url, f"cannot open: {exc}")
            continue
        sc = None if refresh else _load_valid(paths, _expect(fingerprint, method, hash_size, decode, exts))
        if sc is not None and on_error == "raise" and (sc.shard_error is not None or sc.failures):
            _raise_recorded(url, sc)
        if sc is None:
            todo.append((i, url, [str(p) for p in paths]))
        else:
            paths_out[i] = str(sc.path)
            cached.append(url)
            if keep:
                loaded[i] = sc
    args = (method, hash_size, exts, on_error, fast_decode)
    done: dict[int, tuple] = {}

    def take(i: int, res: tuple) -> None:
        done[i] = res
        if res[0] != "ok" and (on_error == "raise" or res[0] == "write_error"):
            _raise(res)
        if res[0] == "shard_error":
            logger.warning("skipping shard %s: %s", res[1], res[2])

    if engine == "ray":
        from torch_dedup.engines.ray import ray_map

        index = [i for i, _, _ in todo]
        for k, res in ray_map(_hash_and_store, [(url, paths, *args) for _, url, paths in todo], address=ray_address,
                              progress=progress and len(todo) >= 2, desc="hashing shards (ray)", unit="shard"):
            take(index[k], res)
    else:
        if workers is None:
            workers = _auto_workers([url for _, url, _ in todo])
        from tqdm.auto import tqdm

        with tqdm(total=len(todo), unit="shard", desc="hashing shards", disable=not progress or len(todo) < 2,
                  leave=False) as bar:
            if workers == 0 or len(todo) < 2:
                for i, url, paths in todo:
                    take(i, _hash_and_store(url, paths, *args))
                    bar.update(1)
            else:
                with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                    futures = {pool.submit(_hash_and_store, url, paths, *args): i for i, url, paths in todo}
                    try:
                        for fut in as_completed(futures):
                            take(futures[fut], fut.result())
                            bar.update(1)
                    except BaseException:
                        for fut in futures:
                            fut.cancel()
                        raise
    hashed = []
    for i, url, _ in todo:
        res = done[i]
        if res[0] == "ok":
            paths_out[i] = res[1]
            hashed.append(url)
        else:
            errors[i] = (url, res[2])
    return _HashRun(urls=urls, paths=paths_out, hashed=hashed, cached=cached, errors=errors, settings=settings,
                    loaded=loaded)


def _shard_error_text(err: dict) -> str:
    return (f"damaged at byte offset {err.get('offset')} (member {err.get('member')!r}): {err.get('reason')}")


def hash_shards(urls, method: str = "phash", hash_size: int = 8, *,
                image_exts: str | Iterable[str] = DEFAULT_IMAGE_EXTS, sidecar_dir: str | os.PathLike | None = None,
                workers: int | None = None, on_error: str = "raise", fast_decode: bool = False,
                refresh: bool = False, progress: bool = True, engine: str = "local",
                ray_address: str | None = None) -> ShardHashes:
    """Hash every shard that has no valid sidecar yet, in parallel; read the others.

    Args:
        urls: shard URLs: a brace pattern (``"data/shard-{000..099}.tar"``), a path, or a list.
        method: hash method (default ``"phash"``).
        hash_size: hash size (default 8: 64-bit hashes).
        image_exts: suffixes that hold the image, in order of preference
            (default ``jpg;jpeg;png;webp;ppm;bmp``); samples with none are counted and
            listed (:attr:`ShardHashes.no_image`), not hashed.
        sidecar_dir: folder for the sidecars; default: beside each local shard (the user
            cache folder for remote URLs and read-only folders). With ``engine="ray"`` on
            a multi-node cluster it must be storage every node sees (see ``docs/ray.md``).
        workers: processes hashing shards side by side (``None``: one per core, at most
            one per shard, but none below 256 MB of local shards, where starting the
            processes costs more than it saves; 0: in this process). Local engine only.
        on_error: ``"raise"`` or ``"skip"`` (undecodable images and damaged or missing
            shards are recorded and the rest goes on).
        fast_decode: JPEG draft decoding (faster, some bits differ from imagehash).
        refresh: hash every shard again, even with a valid sidecar.
        progress: a tqdm bar over the shards being hashed.
        engine: ``"local"`` (worker processes on this machine) or ``"ray"`` (one Ray task
            per shard, retried when its worker dies; needs ``pip install 'torch_dedup[ray]'``).
            Both write the same sidecars.
        ray_address: with ``engine="ray"``: the cluster to use (``"auto"``,
            ``"ray://head:10001"``); None: the Ray session of this process, ``RAY_ADDRESS``,
            or a new local cluster.

    Returns:
        A :class:`ShardHashes`.

    Raises:
        ValueError: a bad argument.
        ImportError: ``engine="ray"`` without ray installed (the message names the extra).
        ShardReadError: a missing, truncated or corrupt shard (``on_error="raise"``).
        ImageDecodeError: an undecodable image (``on_error="raise"``).

    Example:
        >>> h = hash_shards("shards/shard-{000000..000009}.tar")  # doctest: +SKIP
        >>> len(h.hashed), len(h.cached)   # the first call hashes; a second reads every sidecar  # doctest: +SKIP
        (10, 0)
        >>> h = hash_shards("shards/shard-{000000..000009}.tar", engine="ray")  # doctest: +SKIP
    """
    exts = parse_image_exts(image_exts)
    _check(method, hash_size, on_error, workers)
    _check_engine(engine, ray_address)
    run = _hash_missing(urls, method, hash_size, exts, sidecar_dir, workers, on_error, fast_decode, refresh, progress,
                        engine, ray_address, keep=True)
    urls = run.urls
    # the URL as given now (it may be spelled differently from when the sidecar was written)
    results = {i: replace(run.loaded.get(i) or read_shard_sidecar(path), url=urls[i])
               for i, path in run.paths.items()}
    errors = dict(run.errors)
    for i, sc in results.items():
        if sc.shard_error is not None:
            errors[i] = (urls[i], _shard_error_text(sc.shard_error))
    order = sorted(results)
    out = ShardHashes(urls=urls, sidecars=[results[i] for i in order], hashed=run.hashed, cached=run.cached,
                      errors=[errors[i] for i in sorted(errors)], settings=run.settings)
    logger.info("hash_shards: %d shards (%d hashed, %d cached, %d with errors), %d samples",
                len(urls), len(run.hashed), len(run.cached), len(errors), out.n_samples)
    return out
