"""One global plan over many shards: :func:`plan_shards` builds a :class:`~torch_dedup.wds.shard_plan.ShardPlan`.

:func:`plan_shards` hashes (or reads the sidecars of) every shard, concatenates the
hashes in shard order, and runs the Hamming engine and the keep decision once over the
whole corpus (:func:`torch_dedup.hamming.cluster.find_duplicates`). A sample's identity is
``(shard, key)``, so equal keys in different shards are different samples. Keep priority
is corpus order: shard order as given, then stored order within a shard.

``against=`` sets (a test set's shards) are hashed the same way and their near-duplicates
removed as leaked. A fitted method (``colour_dct``) is fitted once on the shards planned
(:func:`~torch_dedup.wds.fit_shards`) unless ``fit=`` is given, and the ``against=`` sets are
coded with that same fit; ``plan.settings["fit"]`` records its fingerprint.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from torch_dedup._checks import FITTED_METHODS, check_bool
from torch_dedup._store import pack_strings, read_store
from torch_dedup.errors import EmptyDedupError, ImageDecodeError, SidecarError
from torch_dedup.hamming import find_duplicates
from torch_dedup.hashing import ColourDctFit
from torch_dedup.options import DedupOptions
from torch_dedup.sidecar import hash_environment

from .shard_fit import shard_fit
from .shard_plan import ShardPlan
from .shard_scan import DEFAULT_IMAGE_EXTS, parse_image_exts
from .shard_tasks import check_engine
from .shard_urls import shard_id, shard_name
from .shards import ShardHashes, _hash_missing, _shard_error_text, hash_shards
from .tar_samples import ShardReadError

__all__ = ["plan_shards"]

logger = logging.getLogger(__name__)


class _Corpus:
    """The concatenated arrays of many shards, filled one shard at a time (keys stay packed bytes)."""

    def __init__(self) -> None:
        self.hashes, self.valid, self.has_image, self.blobs, self.key_lengths = [], [], [], [], []
        self.shards: list[dict] = []
        self.shard_errors: list[tuple[int, dict]] = []

    def add(self, url: str, hashes, valid, has_image, key_blob, key_offsets, fingerprint, sidecar,
            shard_error) -> None:
        self.hashes.append(hashes)
        self.valid.append(valid)
        self.has_image.append(has_image)
        self.blobs.append(key_blob)
        self.key_lengths.append(np.diff(key_offsets))
        if shard_error is not None:
            self.shard_errors.append((len(self.shards), shard_error))
        self.shards.append({"url": url, "id": shard_id(url), "name": shard_name(url), "fingerprint": fingerprint,
                            "n": int(len(valid)), "sidecar": sidecar})

    def add_sidecar_file(self, url: str, path: str) -> None:
        """Read one shard sidecar's arrays (checksummed by the store; keys not decoded)."""
        meta, arrays = read_store(path, "shard-sidecar", SidecarError)
        try:
            n, off = int(meta["count"]), arrays["key_offsets"]
            h, valid, has_image = arrays["hashes"], arrays["valid"], arrays["has_image"]
            if off.dtype != np.int64 or off.shape != (n + 1,) or off[0] != 0 or off[-1] != len(arrays["keys"]) \
                    or h.dtype != np.uint64 or h.shape[:1] != (n,) or valid.shape != (n,) or has_image.shape != (n,):
                raise ValueError(f"arrays do not fit count {n}")
        except (KeyError, TypeError, ValueError) as exc:
            raise SidecarError(path, f"inconsistent shard sidecar ({exc}); delete it to hash the shard again") \
                from None
        self.add(url, h, valid, has_image, arrays["keys"], off, meta.get("fingerprint"), str(path),
                 meta.get("shard_error"))

    def arrays(self):
        n_shards = len(self.shards)
        shard_offsets = np.zeros(n_shards + 1, np.int64)
        np.cumsum([s["n"] for s in self.shards], out=shard_offsets[1:])
        lengths = np.concatenate(self.key_lengths) if self.key_lengths else np.zeros(0, np.int64)
        key_offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=key_offsets[1:])
        key_blob = np.concatenate(self.blobs) if self.blobs else np.zeros(0, np.uint8)
        self.blobs, self.key_lengths = [], []
        words = {h.shape[1] if h.ndim == 2 else 0 for h in self.hashes}
        if len(words) > 1:
            raise ValueError(f"the shards' hashes have different widths {sorted(words)}; hash them with one "
                             "method and hash_size")
        return (np.concatenate(self.hashes), np.concatenate(self.valid), np.concatenate(self.has_image),
                key_blob, key_offsets, shard_offsets)


def plan_shards(urls, threshold: int = 6, *, method: str = "phash", hash_size: int = 8, policy: str = "greedy",
                image_exts=DEFAULT_IMAGE_EXTS, sidecar_dir=None, workers: int | None = None, on_error: str = "raise",
                fast_decode: bool = False, drop_failed: bool = True, refresh: bool = False, progress: bool = True,
                out: str | os.PathLike | None = None, engine: str = "local",
                ray_address: str | None = None, fit: ColourDctFit | None = None, against=None) -> ShardPlan:
    """Hash the shards that need it and decide, across all of them, which samples to drop.

    Sidecars are read one at a time into flat arrays (hashes, masks, keys as one UTF-8
    blob plus offsets): memory is about 30 bytes per sample plus the keys' bytes, never a
    Python object per sample.

    Args:
        urls: shard URLs (brace pattern, path or list), or a :class:`ShardHashes` from
            :func:`hash_shards`.
        threshold: Hamming threshold: samples within it are near-duplicates.
        method, hash_size, image_exts, sidecar_dir, workers, on_error, fast_decode, refresh,
            progress, engine, ray_address: as in :func:`~torch_dedup.wds.shards.hash_shards`.
        policy: ``"greedy"`` (default) or ``"components"``.
        drop_failed: also drop samples whose image could not be hashed (``on_error="skip"``).
        out: save the plan to this file too (a plan file ``DedupPlan.load`` also reads).
        fit: for ``method="colour_dct"``, the :class:`~torch_dedup.hashing.ColourDctFit` to
            code with; ``None``: the fit of the shards planned (:func:`~torch_dedup.wds.fit_shards`,
            made once and stored), or of the given :class:`ShardHashes`. ``against=`` sets are
            always coded with this same fit; ``plan.settings["fit"]`` records its fingerprint.
        against: other sets whose near-duplicates are removed from these shards (a test set
            that must not leak into training): shard URLs (a brace pattern, a path or a list of
            URLs, hashed like the shards planned, with the same method, hash size and fit), a
            :class:`ShardHashes` made with them, a ``uint64`` hash array made with them, or a
            list of such sets. Leaked samples are dropped (``status`` 4, ``plan.leaks`` names
            the nearest row of the concatenated ``against`` hashes).

    Returns:
        A :class:`ShardPlan` (its ``plan`` is the :class:`DedupPlan` over corpus order).

    Raises:
        ValueError: a bad argument; ``ShardHashes`` (planned or ``against``) coded with
            another method, hash size or fit.
        EmptyDedupError: the shards hold no sample at all.
        ShardReadError, ImageDecodeError: from hashing, with ``on_error="raise"``.

    Example:
        >>> plan = plan_shards("shards/shard-{000000..000009}.tar", threshold=6,
        ...                    out="shards/dedup.tdplan")  # doctest: +SKIP
        >>> plan.n_removed, plan.summary["n_removed"]  # doctest: +SKIP
        (412, 412)
    """
    # the shared option rules, checked before any shard is read
    DedupOptions(threshold=threshold, method=method, hash_size=hash_size, policy=policy, on_error=on_error,
                 workers=workers, fast_decode=fast_decode, progress=progress, refresh=refresh, fit=fit)
    check_bool("drop_failed", drop_failed)
    against_sets = _against_sets(against, method, hash_size)
    corpus = _Corpus()
    fit_file = None
    if isinstance(urls, ShardHashes):
        hashes = urls
        if hashes.settings.get("method") != method or hashes.settings.get("hash_size") != int(hash_size):
            raise ValueError(f"the ShardHashes were made with {hashes.settings}; pass the same method= and "
                             f"hash_size= (got {method!r}, {hash_size!r})")
        if method in FITTED_METHODS:
            stated = hashes.settings.get("fit")
            if fit is not None and fit.fingerprint != stated:
                raise ValueError(f"the ShardHashes were coded with the fit {stated!r}, but fit= is "
                                 f"{fit.fingerprint!r}: codes of different fits are not comparable; pass their fit "
                                 f"(hashes.fit) or hash the shards again with this fit")
            fit = fit if fit is not None else hashes.fit
        all_urls, errors, run_settings = hashes.urls, list(hashes.errors), hashes.settings
        if on_error == "raise" and (errors or hashes.failures):
            note = (f" (these ShardHashes were made with on_error='skip': {len(errors)} shard(s) missing or "
                    f"damaged, {len(hashes.failures)} image(s) failed); pass on_error='skip' to plan_shards too "
                    "to plan what was read")
            if errors:
                raise ShardReadError(errors[0][0], f"{errors[0][1]}{note}")
            raise ImageDecodeError(hashes.failures[0][1], f"{hashes.failures[0][2]}{note}")
        for sc in hashes.sidecars:
            blob, off = pack_strings(sc.keys)
            corpus.add(sc.url, sc.hashes, sc.valid, sc.has_image, blob, off, sc.meta.get("fingerprint"),
                       None if sc.path is None else str(sc.path), sc.shard_error)
    else:
        exts = parse_image_exts(image_exts)
        check_engine(engine, ray_address)
        fresh = False
        if method in FITTED_METHODS and fit is None:
            made = shard_fit(urls, method, hash_size, image_exts=exts, sidecar_dir=sidecar_dir, workers=workers,
                             on_error=on_error, refresh=refresh, progress=progress, engine=engine,
                             ray_address=ray_address)
            fit, fit_file, fresh = made.fit, made.path, refresh
        run = _hash_missing(urls, method, hash_size, exts, sidecar_dir, workers, on_error, fast_decode, refresh,
                            progress, engine, ray_address, fit=fit, fresh_features=fresh)
        all_urls, run_settings = run.urls, run.settings
        err = dict(run.errors)
        for i in sorted(run.paths):
            corpus.add_sidecar_file(all_urls[i], run.paths[i])
            if corpus.shard_errors and corpus.shard_errors[-1][0] == len(corpus.shards) - 1:
                err[i] = (all_urls[i], _shard_error_text(corpus.shard_errors[-1][1]))
        errors = [err[i] for i in sorted(err)]
    n = sum(s["n"] for s in corpus.shards)
    if n == 0:
        raise EmptyDedupError(f"the {len(all_urls)} shard(s) hold no sample; check the URLs "
                              f"(first: {all_urls[0]!r})")
    hash_kw = {"image_exts": image_exts, "sidecar_dir": sidecar_dir, "workers": workers, "on_error": on_error,
               "fast_decode": fast_decode, "refresh": refresh, "progress": progress, "engine": engine,
               "ray_address": ray_address}
    against_hashes, against_described = _against(against_sets, method, hash_size, fit, hash_kw)
    shards = tuple(corpus.shards)
    h, valid, has_image, key_blob, key_offsets, shard_offsets = corpus.arrays()
    del corpus
    settings = {**run_settings, "threshold": int(threshold), "policy": policy, "drop_failed": drop_failed,
                "hash_env": hash_environment()}
    provenance = {"source": "webdataset shards", "n_shards": len(shards)}
    if fit is not None:
        provenance["fit"] = fit.fingerprint
        if fit_file is not None:
            provenance["fit_file"] = str(fit_file)
    if against is not None:
        provenance["against"] = against_described
    # samples without an image are failed in the plan, like images that failed to hash: neither
    # kept nor removed, so the DedupPlan's keep mask is exactly the images worth sampling
    dp = find_duplicates(h, threshold, policy=policy, valid=valid & has_image, settings=settings,
                         provenance=provenance, against=against_hashes)
    plan = ShardPlan(plan=dp, shards=shards, shard_offsets=shard_offsets, key_blob=key_blob,
                     key_offsets=key_offsets, has_image=has_image, hashes=h, shard_errors=tuple(errors))
    for s, key, copies in plan.ambiguous_keys:
        logger.warning("key %r appears %d times in shard %d with different decisions; all copies are "
                       "kept (the stream cannot tell them apart)", key, copies, s)
    logger.info("plan_shards: %d samples in %d shards, threshold %d: dropping %d (%.1f%%)", n, len(shards),
                threshold, plan.n_removed, 100 * plan.n_removed / n)
    if out is not None:
        object.__setattr__(plan, "path", plan.save(out))
    return plan


def _against_sets(against, method: str, hash_size: int) -> list:
    """``against`` as a list of sets, each checked for its kind (before any shard is hashed)."""
    if against is None:
        return []
    if isinstance(against, (str, os.PathLike, ShardHashes, np.ndarray)):
        items = [against]
    elif isinstance(against, (list, tuple)) and against:
        # a list of URLs is one set of shards; any other list is a list of sets
        items = [list(against)] if all(isinstance(a, (str, os.PathLike)) for a in against) else list(against)
    else:
        raise ValueError(f"against={against!r} must be shard URLs (a brace pattern, a path or a list), a "
                         f"ShardHashes, a uint64 hash array, or a list of such sets")
    for k, item in enumerate(items):
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint64 or item.ndim not in (1, 2):
                raise ValueError(f"against set {k} is a {item.dtype} array of shape {item.shape}; pass uint64 "
                                 f"hashes (N,) or (N, W) made with method={method!r}, hash_size={hash_size}")
        elif not isinstance(item, (ShardHashes, str, os.PathLike, list, tuple)):
            raise ValueError(f"against set {k} is a {type(item).__name__}; pass shard URLs, a ShardHashes or a "
                             f"uint64 hash array")
    return items


def _against(items: list, method: str, hash_size: int, fit, hash_kw: dict) -> tuple[np.ndarray | None, list]:
    """The valid hashes of every ``against`` set (concatenated, in order) and a JSON-able description of each.

    Shard sets are hashed with the plan's method, hash size and fit, so a fitted method's
    ``against`` codes always live in the space of the shards planned.
    """
    if not items:
        return None, []
    if method in FITTED_METHODS and fit is None:
        raise ValueError(f"against= with method={method!r} needs the fit the shards were coded with, and these "
                         f"ShardHashes carry none; pass fit= (the fit their settings name)")
    fit_fp = None if fit is None else fit.fingerprint
    parts, described = [], []
    for k, item in enumerate(items):
        if isinstance(item, np.ndarray):
            parts.append(item)
            described.append({"kind": "hashes", "n": len(item)})
            continue
        if isinstance(item, ShardHashes):
            h = item
            st = h.settings
            if st.get("method") != method or st.get("hash_size") != int(hash_size) or st.get("fit") != fit_fp:
                raise ValueError(f"against set {k} (ShardHashes) was hashed with method={st.get('method')!r}, "
                                 f"hash_size={st.get('hash_size')!r}, fit={st.get('fit')!r}, but the plan uses "
                                 f"method={method!r}, hash_size={hash_size}, fit={fit_fp!r}; hash it again with "
                                 f"hash_shards(urls, {method!r}, {hash_size}" + (", fit=fit)" if fit_fp else ")"))
        else:
            h = hash_shards(item, method, hash_size, fit=fit, **hash_kw)
        parts.extend(sc.hashes[sc.valid] for sc in h.sidecars)
        described.append({"kind": "shards", "n_shards": len(h.urls), "first": str(h.urls[0]), "fit": fit_fp,
                          "n_images": int(sum(int(sc.valid.sum()) for sc in h.sidecars))})
    widths = {p.shape[1:] for p in parts}
    if len(widths) > 1:
        raise ValueError(f"against= holds hashes of different widths {sorted(widths)}; hash everything with the "
                         f"same method and hash_size")
    if not parts:
        words = -(-int(hash_size) ** 2 // 64)
        return np.zeros((0,) if words == 1 else (0, words), np.uint64), described
    return np.concatenate(parts), described
