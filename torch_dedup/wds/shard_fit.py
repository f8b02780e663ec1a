"""The fit of a fitted method (``colour_dct``) for a set of shards: made once, stored in a fit file.

A colour_dct code lives in a space fitted to the data (issue 16). For every shard, and the
``against=`` sets compared with them, to be coded in one space, :func:`fit_shards` makes
the fit **once per set of shards** and stores it; :func:`~torch_dedup.wds.hash_shards` and
:func:`~torch_dedup.wds.plan_shards` call it when no ``fit=`` is given.

* **Sample.** The images are those with features in the shards' feature sidecars
  (:mod:`torch_dedup.wds.shard_features`: each image decoded once, failed images left out),
  numbered in URL order, then stored order within a shard. The fit is made on all of them up
  to :data:`~torch_dedup.dataset_fits.FIT_SAMPLE` (20,000), else on a seeded choice of that
  many positions (:func:`~torch_dedup.dataset_fits.fit_sample_indices`, seed
  :data:`~torch_dedup.dataset_fits.FIT_SEED`): the same shards always give the same fit. The
  features are the exact features of the sampled images (no shrinking is needed: the fit
  reads 532 bytes per image from the feature sidecars, not the images).
* **Fit file.** ``<first shard>+<more>-<digest>.colour_dct16.tdfit`` in ``sidecar_dir``, else
  beside the first local shard (the user cache folder for remote shards or a folder that
  cannot be written). The digest covers the *shard set's fingerprint* (each shard's identity
  and fingerprint, size and ``mtime_ns`` of a local file, in URL order, as hash sidecars are
  keyed), the method, hash size, image suffixes, feature version, sample size and seed; the
  file states them again, with the hash environment and the fit's arrays and fingerprint
  (checked on every read: a stale, corrupt or edited file is a WARNING and a refit, never used).
  Adding or replacing a shard makes another shard set, so another fit; pass ``fit=`` to keep
  coding new shards in an earlier fit's space.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torch_dedup._checks import FITTED_METHODS
from torch_dedup._store import read_store_expecting, write_store
from torch_dedup.dataset_fits import (
    FIT_SAMPLE,
    FIT_SEED,
    FIT_SUFFIX,
    fit_sample_indices,
)
from torch_dedup.errors import DedupError, StoreError
from torch_dedup.hashing import COLOUR_DCT_VERSION, ColourDctFit, fit_colour_dct
from torch_dedup.options import DedupOptions
from torch_dedup.sidecar import default_cache_dir, hash_environment

from .shard_features import (
    features_and_store,
    features_expect,
    load_valid_features,
    read_shard_features,
    shard_features_paths,
)
from .shard_scan import DEFAULT_IMAGE_EXTS, parse_image_exts, raise_recorded
from .shard_sidecar import chmod_like_shard
from .shard_tasks import check_engine, raise_task_error, run_shard_tasks
from .shard_urls import (
    expand_shard_urls,
    is_local,
    local_path,
    shard_fingerprint,
    shard_id,
    shard_name,
)
from .tar_samples import ShardReadError

__all__ = ["ShardFit", "fit_file_paths", "fit_shards", "read_fit_file", "shard_fit", "shard_set_fingerprint"]

logger = logging.getLogger(__name__)

_KIND = "colour-dct-fit"  # the kind of a dataset's fit file too (torch_dedup.dataset_fits)


@dataclass(frozen=True)
class ShardFit:
    """What :func:`shard_fit` did: the fit, its file, whether it was read from that file.

    Attributes:
        fit: the :class:`~torch_dedup.hashing.ColourDctFit`.
        path: the fit file read or written (``None`` when none could be written).
        from_cache: the fit was read from its file (no feature was read, nothing fitted).
    """

    fit: ColourDctFit
    path: Path | None
    from_cache: bool


def shard_set_fingerprint(urls: list[str], fingerprints: list[str | None]) -> str:
    """BLAKE2b of every shard's identity and fingerprint (``None``: missing), in URL order."""
    h = hashlib.blake2b(digest_size=16)
    for url, fp in zip(urls, fingerprints):
        h.update(f"{shard_id(url)}\t{fp if fp is not None else 'missing'}\n".encode())
    return h.hexdigest()


def fit_file_paths(urls: list[str], set_fingerprint: str, method: str, hash_size: int, exts: tuple,
                   sidecar_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where the fit file of this shard set may live, in the order to look (and to try writing)."""
    key = "\0".join((set_fingerprint, method, str(int(hash_size)), ";".join(exts), COLOUR_DCT_VERSION,
                     str(FIT_SAMPLE), str(FIT_SEED)))
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=10).hexdigest()
    more = f"+{len(urls) - 1}" if len(urls) > 1 else ""
    name = f"{shard_name(urls[0])}{more}-{digest}.{method}{int(hash_size)}{FIT_SUFFIX}"
    if sidecar_dir is not None:
        return [Path(sidecar_dir).expanduser() / name]
    fallback = default_cache_dir() / "wds" / name
    if is_local(urls[0]):
        return [Path(local_path(urls[0])).expanduser().parent / name, fallback]
    return [fallback]


def _expect(set_fingerprint: str, method: str, hash_size: int, exts: tuple) -> dict:
    return {"shard_set": set_fingerprint, "method": method, "hash_size": int(hash_size), "image_exts": list(exts),
            "features_version": COLOUR_DCT_VERSION, "fit_sample": FIT_SAMPLE, "fit_seed": FIT_SEED,
            "hash_env": hash_environment()}


def read_fit_file(path: str | os.PathLike, *, expect: dict | None = None) -> ColourDctFit:
    """The fit stored in a fit file (of shards, or of a dataset: the same kind of file).

    Args:
        path: the ``.tdfit`` file.
        expect: meta values the file must state (stale otherwise).

    Returns:
        The :class:`~torch_dedup.hashing.ColourDctFit` (its fingerprint checked against its arrays).

    Raises:
        StoreError: missing, corrupt, of another kind, stale, or a fit whose fingerprint does
            not match its arrays (edited).

    Example:
        >>> fit = read_fit_file("shards/shard-000000.tar+99-0123abcd.colour_dct16.tdfit")  # doctest: +SKIP
    """
    return _read(path, expect)[0]


def _read(path, expect: dict | None) -> tuple[ColourDctFit, dict]:
    meta, arrays = read_store_expecting(path, _KIND, expect)
    try:
        return ColourDctFit.from_arrays(arrays, meta["fit"]), meta
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(str(path), f"{type(exc).__name__}: {exc}") from None


def _load(paths: list[Path], expect: dict, bits: int, on_error: str) -> tuple[ColourDctFit, Path] | None:
    for path in paths:
        if not path.exists():
            continue
        try:
            fit, meta = _read(path, expect)
            if fit.bits != bits:
                raise StoreError(str(path), f"it makes {fit.bits}-bit codes, {bits} wanted")
            if on_error == "raise" and meta.get("clean") is not True:
                # made by an on_error='skip' run that left images or shards out: a raise run
                # reads the shards again, to raise what was left out
                logger.info("fit file %s was made with on_error='skip' over failures; not used by a raise run", path)
                continue
        except StoreError as exc:
            logger.warning("ignoring fit file %s: %s; the fit will be made again", path, exc.reason)
            continue
        return fit, path
    return None


def _features(urls, prints, exts, sidecar_dir, workers, on_error, refresh, progress, engine, ray_address
              ) -> dict[int, tuple[str, int | None, bool | None]]:
    """Every readable shard's feature sidecar, computed where missing:
    ``{index: (path, images with features, nothing failed)}`` (``None``: not read yet)."""
    out: dict[int, tuple[str, int | None, bool | None]] = {}
    todo = []
    for i, url in enumerate(urls):
        if prints[i] is None:
            continue
        paths = shard_features_paths(url, sidecar_dir)
        sf = None if refresh else load_valid_features(paths, features_expect(prints[i], exts))
        if sf is None:
            todo.append((i, url, ([str(p) for p in paths], exts, on_error)))
            continue
        if on_error == "raise" and (sf.shard_error is not None or sf.failures):
            raise_recorded(url, sf)
        out[i] = (str(sf.path), int(sf.valid.sum()), not (sf.failures or sf.shard_error))

    def take(i: int, res: tuple) -> None:
        if res[0] == "ok":
            out[i] = (res[1], None, None)
        elif on_error == "raise" or res[0] == "write_error":
            raise_task_error(res)
        else:
            logger.warning("skipping shard %s for the fit: %s", res[1], res[2])

    run_shard_tasks(features_and_store, todo, take, workers=workers, engine=engine, ray_address=ray_address,
                    progress=progress, desc="colour_dct features")
    return out


def shard_fit(urls, method: str = "colour_dct", hash_size: int = 16, *,
              image_exts: str | Iterable[str] = DEFAULT_IMAGE_EXTS, sidecar_dir: str | os.PathLike | None = None,
              workers: int | None = None, on_error: str = "raise", refresh: bool = False, progress: bool = True,
              engine: str = "local", ray_address: str | None = None) -> ShardFit:
    """:func:`fit_shards`, also saying where the fit file is and whether the fit was read from it."""
    DedupOptions(method=method, hash_size=hash_size, on_error=on_error, workers=workers, refresh=refresh,
                 progress=progress)
    if method not in FITTED_METHODS:
        raise ValueError(f"method={method!r} hashes each image by itself and needs no fit; fit_shards fits "
                         f"{', '.join(map(repr, FITTED_METHODS))}")
    exts = parse_image_exts(image_exts)
    check_engine(engine, ray_address)
    urls = expand_shard_urls(urls)
    prints: list[str | None] = []
    for url in urls:
        try:
            prints.append(shard_fingerprint(url))
        except OSError as exc:
            if on_error == "raise":
                raise ShardReadError(url, f"cannot open: {exc}", unopened=True) from None
            logger.warning("shard %s left out of the fit: cannot open: %s", url, exc)
            prints.append(None)
    set_fp = shard_set_fingerprint(urls, prints)
    expect = _expect(set_fp, method, hash_size, exts)
    paths = fit_file_paths(urls, set_fp, method, hash_size, exts, sidecar_dir)
    bits = int(hash_size) ** 2
    found = None if refresh else _load(paths, expect, bits, on_error)
    if found is not None:
        logger.debug("fit file hit: %s", found[1])
        return ShardFit(found[0], found[1], True)
    feats = _features(urls, prints, exts, sidecar_dir, workers, on_error, refresh, progress, engine, ray_address)
    order = sorted(feats)
    counts, clean = [], len(order) == len(urls)
    for i in order:
        path, count, ok = feats[i]
        if count is None:  # written by this call: read it for its counts (the sample is drawn from them next)
            sf = read_shard_features(path)
            count, ok = int(sf.valid.sum()), not (sf.failures or sf.shard_error)
        counts.append(count)
        clean = clean and ok
    total = int(sum(counts))
    if total == 0:
        raise DedupError(f"none of the images of the {len(urls)} shard(s) (first: {urls[0]!r}) could be read to "
                         f"fit method={method!r}; check the shards and image_exts={';'.join(exts)!r}, or pass "
                         f"fit= made on readable images")
    idx = fit_sample_indices(total)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    parts = []
    for k, i in enumerate(order):
        lo, hi = np.searchsorted(idx, [starts[k], starts[k + 1]])
        if hi > lo:
            sf = read_shard_features(feats[i][0])
            rows = sf.features[sf.valid]
            parts.append(rows[idx[lo:hi] - starts[k]])
    sample = np.concatenate(parts)
    try:
        fit = fit_colour_dct(sample, bits=bits, seed=FIT_SEED)
    except ValueError as exc:
        raise ValueError(f"fitting method={method!r} on {len(sample)} sampled images of {len(urls)} shard(s): "
                         f"{exc}") from exc
    arrays, fit_meta = fit.to_arrays()
    meta = {**expect, "fit": fit_meta, "n_shards": len(urls), "first_shard": urls[0], "n_images": total,
            "sample": len(sample), "clean": bool(clean)}
    written = None
    for path in paths:
        try:
            written = write_store(path, _KIND, meta, arrays)
            chmod_like_shard(written, urls[0])  # whoever may read the shards may read their fit
            break
        except OSError as exc:
            logger.info("cannot write fit file %s (%s); trying the next place", path, exc)
    if written is None:
        logger.warning("could not write the fit file of %d shard(s) (tried %s); the fit will be made again next "
                       "time (the same fit: it is deterministic). Pass sidecar_dir= to a writable folder.",
                       len(urls), ", ".join(map(str, paths)))
    logger.info("fitted %s%d on %d of %d images of %d shard(s) (fingerprint %s), stored in %s", method, hash_size,
                len(sample), total, len(urls), fit.fingerprint, written)
    return ShardFit(fit, written, False)


def fit_shards(urls, method: str = "colour_dct", hash_size: int = 16, *,
               image_exts: str | Iterable[str] = DEFAULT_IMAGE_EXTS, sidecar_dir: str | os.PathLike | None = None,
               workers: int | None = None, on_error: str = "raise", refresh: bool = False, progress: bool = True,
               engine: str = "local", ray_address: str | None = None) -> ColourDctFit:
    """The fit of ``method`` for a set of shards: read from its fit file, or made once and stored.

    Images are decoded once, into a feature sidecar per shard (532 bytes per image), which
    the codes of any fit are later computed from without decoding again. The fit is made on
    the features of all images up to 20,000, else of a seeded sample of 20,000 positions
    over the shards' images in URL order (``torch_dedup.dataset_fits.FIT_SAMPLE``/``FIT_SEED``).

    Args:
        urls: shard URLs: a brace pattern, a path, or a list (their order is part of the fit).
        method: a fitted method (``"colour_dct"``).
        hash_size: code side: ``hash_size**2``-bit codes (8, 16, 24 or 32).
        image_exts, sidecar_dir, workers, on_error, progress, engine, ray_address: as in
            :func:`~torch_dedup.wds.hash_shards` (``sidecar_dir`` also holds the feature
            sidecars and the fit file).
        refresh: compute the features and the fit again, even where valid files exist.

    Returns:
        The :class:`~torch_dedup.hashing.ColourDctFit`; pass it as ``fit=`` to
        :func:`~torch_dedup.wds.hash_shards` / :func:`~torch_dedup.wds.plan_shards` of other
        shards (a test set) to code them in the same space.

    Raises:
        ValueError: a bad argument, or a method that needs no fit.
        DedupError: no image of the shards could be read.
        ShardReadError, ImageDecodeError: a damaged shard or undecodable image (``on_error="raise"``).

    Example:
        >>> fit = fit_shards("train/shard-{000000..000099}.tar", hash_size=16)  # doctest: +SKIP
        >>> gate = plan_shards("test/shard-{000000..000009}.tar", 22, method="colour_dct", hash_size=16,
        ...                    fit=fit, against="train/shard-{000000..000099}.tar")  # doctest: +SKIP
    """
    return shard_fit(urls, method, hash_size, image_exts=image_exts, sidecar_dir=sidecar_dir, workers=workers,
                     on_error=on_error, refresh=refresh, progress=progress, engine=engine,
                     ray_address=ray_address).fit
