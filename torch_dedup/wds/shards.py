"""Hash webdataset shards: one sidecar per shard, computed once, in parallel, resumable.

:func:`hash_shards` looks for a valid sidecar of each shard (same fingerprint, same
settings) and hashes only the shards without one, each in a worker process, writing its
sidecar as soon as it is done: a crash loses at most the shards in flight, and adding
shards later hashes only the new ones. Images are decoded from the member bytes and go
through the same exact path as image files (:func:`torch_dedup.hashing._decode.hash_files`),
so a shard sample's hash equals ``imagehash.<method>(PIL.Image.open(member))``.

``method="colour_dct"`` codes in the space of a fit (:mod:`torch_dedup.wds.shard_fit`: one
per set of shards, or the ``fit=`` given): each shard's images are decoded once into a
feature sidecar (:mod:`torch_dedup.wds.shard_features`), the codes are computed from it and
stored as the shard's sidecar, keyed on the fit's fingerprint.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from torch_dedup._checks import FITTED_METHODS
from torch_dedup.errors import ImageDecodeError
from torch_dedup.hashing import ColourDctFit, hash_bits, hash_files
from torch_dedup.options import DedupOptions
from torch_dedup.sidecar import hash_environment

from .shard_features import (
    ShardFeatures,
    features_expect,
    load_valid_features,
    shard_features,
    shard_features_paths,
    store_features,
)
from .shard_fit import shard_fit
from .shard_scan import (
    CUT_FLAG,
    DEFAULT_IMAGE_EXTS,
    parse_image_exts,
    raise_recorded,
    scan_shard,
)
from .shard_sidecar import (
    ShardSidecar,
    read_shard_sidecar,
    shard_sidecar_paths,
    write_shard_sidecar,
)
from .shard_tasks import check_engine, raise_task_error, run_shard_tasks
from .shard_urls import expand_shard_urls, shard_fingerprint
from .tar_samples import ShardReadError

__all__ = ["DEFAULT_IMAGE_EXTS", "ShardHashes", "hash_shard", "hash_shards", "parse_image_exts"]

logger = logging.getLogger(__name__)

_FLUSH = 256  # images decoded and hashed per batch (bounds memory)


def _check(method: str, hash_size, on_error: str, workers, fast_decode: bool = False, fit=None) -> None:
    """The shared option rules (:class:`~torch_dedup.options.DedupOptions`) for the shard settings."""
    DedupOptions(method=method, hash_size=hash_size, on_error=on_error, workers=workers, fast_decode=fast_decode,
                 fit=fit)


def _fit_fingerprint(fit) -> str | None:
    return None if fit is None else fit.fingerprint


def hash_shard(url: str, method: str = "phash", hash_size: int = 8, *,
               image_exts: str | Iterable[str] = DEFAULT_IMAGE_EXTS, on_error: str = "raise",
               fast_decode: bool = False, fit: ColourDctFit | None = None) -> ShardSidecar:
    """Hash the images of one shard (no file is written; see :func:`hash_shards` for caching).

    Args:
        url: the shard (local path or any URL webdataset opens).
        method: ``"ahash"``, ``"dhash"``, ``"phash"``, ``"whash"``, a composite code
            (``"phash+dhash"``), or ``"colour_dct"`` (with ``fit=``).
        hash_size: hash size (8: 64 bits).
        image_exts: suffixes that hold the image, in order of preference.
        on_error: ``"raise"``: an undecodable image raises :class:`ImageDecodeError` and a
            damaged shard :class:`ShardReadError`; ``"skip"``: both are recorded
            (``failures`` / ``shard_error``) and hashing goes on.
        fast_decode: JPEG draft decoding (faster, some bits differ from imagehash).
        fit: for ``method="colour_dct"`` (required), the
            :class:`~torch_dedup.hashing.ColourDctFit` whose space the codes live in
            (``hash_size**2`` bits), e.g. from :func:`~torch_dedup.wds.fit_shards`; the codes
            equal ``hash_images(images, "colour_dct", hash_size, fit=fit)`` of the shard's
            images bit for bit. ``None`` for the other methods.

    Returns:
        A :class:`ShardSidecar` (``path`` None).

    Raises:
        ValueError: a bad argument; ``method="colour_dct"`` without a fit, or with a fit of
            another code length.
        ShardReadError, ImageDecodeError: see ``on_error``.

    Example:
        >>> sc = hash_shard("shards/shard-000000.tar")  # doctest: +SKIP
        >>> sc.keys[:2], sc.hashes.shape  # doctest: +SKIP
        (('000000', '000001'), (1000,))
    """
    exts = parse_image_exts(image_exts)
    if method in FITTED_METHODS and fit is None:
        raise ValueError(f"hash_shard(method={method!r}) needs fit=: its codes live in a space fitted to the data, "
                         f"and one shard alone is not the data. Make the fit once for all the shards compared, "
                         f"fit = torch_dedup.wds.fit_shards(urls, hash_size={hash_size!r}), and pass it here; "
                         f"hash_shards and plan_shards fit on their shards by themselves")
    _check(method, hash_size, on_error, 0, fast_decode, fit)
    if fit is not None:
        return shard_features(url, image_exts=exts, on_error=on_error).codes(fit)
    words = -(-hash_bits(method, hash_size) // 64)
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

    def take(i: int, source: str, data: bytes) -> None:
        sources[i] = source
        batch.append((i, io.BytesIO(data)))
        if len(batch) >= _FLUSH:
            flush()

    scan = scan_shard(url, exts, on_error, take)
    if batch:
        flush()
    keys, has_image, shard_error = scan.keys, scan.has_image, scan.shard_error
    failures.extend(scan.failures)
    n = len(keys)
    hashes = np.zeros((n, words), np.uint64)
    valid = np.zeros(n, bool)
    for i, row in rows.items():
        hashes[i] = row
        valid[i] = True
    return ShardSidecar(url=url, keys=tuple(keys), hashes=hashes[:, 0].copy() if words == 1 else hashes,
                        valid=valid, has_image=np.array(has_image, dtype=bool).reshape(n),
                        failures=tuple(sorted(failures)), shard_error=shard_error)


def _expect(fingerprint: str, method: str, hash_size: int, decode: str, exts: tuple, fit=None) -> dict:
    out = {"fingerprint": fingerprint, "method": method, "hash_size": int(hash_size), "decode": decode,
           "image_exts": list(exts), "hash_env": hash_environment()}
    if fit is not None:
        out["fit"] = fit.fingerprint  # codes of another fit are other codes: stale, never read as these
    return out


def _load_valid(paths: list[Path], expect: dict) -> ShardSidecar | None:
    for path in paths:
        if path.exists():
            try:
                sc = read_shard_sidecar(path, expect=expect)
            except Exception as exc:
                logger.warning("ignoring shard sidecar %s: %s", path, getattr(exc, "reason", exc))
                continue
            if sc.shard_error is not None and not sc.meta.get(CUT_FLAG):
                # written before a sample cut by damage was recorded as failed: it may list that
                # sample as "no image" (kept and rewritten), so it is stale
                logger.info("shard sidecar %s predates the rule for samples cut by damage; hashing again", path)
                continue
            return sc
    return None


def _store(url: str, paths: list[str], sc: ShardSidecar, method: str, hash_size: int, exts: tuple, on_error: str,
           decode: str, fingerprint: str, fit_fp: str | None) -> tuple:
    """Write a shard's sidecar to the first of ``paths`` that can be written: ``("ok", path)`` or an error tuple."""
    extra = {"image_exts": list(exts), "hash_env": hash_environment(), CUT_FLAG: True, "on_error": on_error}
    if fit_fp is not None:
        extra["fit"] = fit_fp
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


def _hash_and_store(url: str, paths: list[str], method: str, hash_size: int, exts: tuple, on_error: str,
                    fast_decode: bool, fit_state: tuple | None = None, feature_paths: list[str] | None = None
                    ) -> tuple:
    """Worker task: hash one shard and write its sidecar. Returns data, never a custom exception.

    A fitted method's task gets the fit as ``fit_state`` (:meth:`ColourDctFit.to_arrays`),
    rebuilt here with its fingerprint checked, and also writes the shard's feature sidecar.
    """
    decode = "fast_decode" if fast_decode else "exact"
    try:
        fingerprint = shard_fingerprint(url)  # before reading: a shard changed meanwhile is stale next time
    except OSError as exc:
        return ("shard_error", url, f"cannot open: {exc}", None, None, True)
    fit = None if fit_state is None else ColourDctFit.from_arrays(*fit_state)
    try:
        if fit is None:
            sc = hash_shard(url, method, hash_size, image_exts=exts, on_error=on_error, fast_decode=fast_decode)
        else:
            sf = shard_features(url, image_exts=exts, on_error=on_error)
            if store_features(url, feature_paths or [], sf, fingerprint, exts, on_error)[0] != "ok":
                logger.info("no feature sidecar written for shard %s; the codes are written all the same", url)
            sc = sf.codes(fit)
    except ShardReadError as exc:
        return ("shard_error", exc.url, exc.reason, exc.offset, exc.member, exc.unopened)
    except ImageDecodeError as exc:
        return ("image_error", exc.source, exc.reason, exc.index)
    return _store(url, paths, sc, method, hash_size, exts, on_error, decode, fingerprint, _fit_fingerprint(fit))


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
        settings: method, hash_size, decode, image_exts (and ``fit``, the fit's fingerprint,
            for a fitted method).
        fit: the :class:`~torch_dedup.hashing.ColourDctFit` the codes were made with
            (``method="colour_dct"``), else ``None``.
    """

    urls: list
    sidecars: list
    hashed: list = field(default_factory=list)
    cached: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    fit: ColourDctFit | None = None

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
                  engine, ray_address, keep: bool = False, fit: ColourDctFit | None = None,
                  fresh_features: bool = False) -> _HashRun:
    """Hash the shards without a valid sidecar; return where every sidecar is (one shard in memory at a time).

    With a fit (``colour_dct``), a shard whose feature sidecar is valid is coded here from it
    (no image decoded; ``fresh_features``: also under ``refresh``, the features having just
    been made); the others go to the tasks, which receive the fit's arrays.
    """
    urls = expand_shard_urls(urls)
    decode = "fast_decode" if fast_decode else "exact"
    fit_fp = _fit_fingerprint(fit)
    settings = {"method": method, "hash_size": int(hash_size), "decode": decode, "image_exts": list(exts)}
    if fit_fp is not None:
        settings["fit"] = fit_fp
    paths_out: dict[int, str] = {}
    errors: dict[int, tuple[str, str]] = {}
    cached, todo = [], []
    loaded: dict[int, ShardSidecar] = {}
    done: dict[int, tuple] = {}
    fit_state = None if fit is None else fit.to_arrays()
    for i, url in enumerate(urls):
        paths = shard_sidecar_paths(url, method, hash_size, decode, sidecar_dir, fit_fingerprint=fit_fp)
        try:
            fingerprint = shard_fingerprint(url)
        except OSError as exc:
            if on_error == "raise":
                raise ShardReadError(url, f"cannot open: {exc}", unopened=True) from None
            logger.warning("skipping shard %s: cannot open: %s", url, exc)
            errors[i] = (url, f"cannot open: {exc}")
            continue
        sc = None if refresh else _load_valid(paths, _expect(fingerprint, method, hash_size, decode, exts, fit))
        if sc is not None and on_error == "raise" and (sc.shard_error is not None or sc.failures):
            raise_recorded(url, sc)
        if sc is not None:
            paths_out[i] = str(sc.path)
            cached.append(url)
            if keep:
                loaded[i] = sc
            continue
        if fit is None:
            todo.append((i, url, ([str(p) for p in paths], method, hash_size, exts, on_error, fast_decode)))
            continue
        feature_paths = [str(p) for p in shard_features_paths(url, sidecar_dir)]
        sf = None if refresh and not fresh_features else load_valid_features(feature_paths,
                                                                                features_expect(fingerprint, exts))
        if sf is None:
            todo.append((i, url, ([str(p) for p in paths], method, hash_size, exts, on_error, fast_decode,
                                  fit_state, feature_paths)))
            continue
        done[i] = _codes_from_features(url, [str(p) for p in paths], sf, fit, method, hash_size, exts, on_error,
                                       decode, fingerprint)

    def take(i: int, res: tuple) -> None:
        done[i] = res
        if res[0] != "ok" and (on_error == "raise" or res[0] == "write_error"):
            raise_task_error(res)
        if res[0] == "shard_error":
            logger.warning("skipping shard %s: %s", res[1], res[2])

    for i in list(done):
        take(i, done[i])
    run_shard_tasks(_hash_and_store, todo, take, workers=workers, engine=engine, ray_address=ray_address,
                    progress=progress, desc="hashing shards")
    hashed = []
    for i in sorted(done):
        res = done[i]
        if res[0] == "ok":
            paths_out[i] = res[1]
            hashed.append(urls[i])
        else:
            errors[i] = (urls[i], res[2])
    return _HashRun(urls=urls, paths=paths_out, hashed=hashed, cached=cached, errors=errors, settings=settings,
                    loaded=loaded)


def _codes_from_features(url: str, paths: list[str], sf: ShardFeatures, fit: ColourDctFit, method: str,
                         hash_size: int, exts: tuple, on_error: str, decode: str, fingerprint: str) -> tuple:
    """A shard's codes in ``fit``'s space from its valid feature sidecar, written as its sidecar."""
    if on_error == "raise" and (sf.shard_error is not None or sf.failures):
        raise_recorded(url, sf)
    return _store(url, paths, replace(sf.codes(fit), url=url), method, hash_size, exts,
                  sf.meta.get("on_error", on_error), decode, fingerprint, fit.fingerprint)


def _shard_error_text(err: dict) -> str:
    return (f"damaged at byte offset {err.get('offset')} (member {err.get('member')!r}): {err.get('reason')}")


def hash_shards(urls, method: str = "phash", hash_size: int = 8, *,
                image_exts: str | Iterable[str] = DEFAULT_IMAGE_EXTS, sidecar_dir: str | os.PathLike | None = None,
                workers: int | None = None, on_error: str = "raise", fast_decode: bool = False,
                refresh: bool = False, progress: bool = True, engine: str = "local",
                ray_address: str | None = None, fit: ColourDctFit | None = None) -> ShardHashes:
    """Hash every shard that has no valid sidecar yet, in parallel; read the others.

    Args:
        urls: shard URLs: a brace pattern (``"data/shard-{000..099}.tar"``), a path, or a list.
        method: hash method (default ``"phash"``), or ``"colour_dct"``: whitened colour DCT
            codes in the space of ``fit`` (docs/webdataset.md, "colour_dct on shards").
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
        fit: for ``method="colour_dct"``, the :class:`~torch_dedup.hashing.ColourDctFit` to
            code with (e.g. the training shards' fit, to code test shards in its space);
            ``None``: the fit of these shards (:func:`~torch_dedup.wds.fit_shards`, read from
            its fit file or made once). The sidecars are keyed on the fit's fingerprint.
            ``None`` for the other methods.

    Returns:
        A :class:`ShardHashes`.

    Raises:
        ValueError: a bad argument (``fit=`` of another code length, or with a method that
            takes none).
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
    _check(method, hash_size, on_error, workers, fast_decode, fit)
    check_engine(engine, ray_address)
    fresh = False
    if method in FITTED_METHODS and fit is None:
        made = shard_fit(urls, method, hash_size, image_exts=exts, sidecar_dir=sidecar_dir, workers=workers,
                         on_error=on_error, refresh=refresh, progress=progress, engine=engine, ray_address=ray_address)
        fit, fresh = made.fit, refresh
    run = _hash_missing(urls, method, hash_size, exts, sidecar_dir, workers, on_error, fast_decode, refresh, progress,
                        engine, ray_address, keep=True, fit=fit, fresh_features=fresh)
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
                      errors=[errors[i] for i in sorted(errors)], settings=run.settings, fit=fit)
    logger.info("hash_shards: %d shards (%d hashed, %d cached, %d with errors), %d samples",
                len(urls), len(run.hashed), len(run.cached), len(errors), out.n_samples)
    return out
