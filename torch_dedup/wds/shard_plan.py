"""One global plan over many shards: which ``(shard, __key__)`` samples to drop.

:func:`plan_shards` hashes (or reads the sidecars of) every shard, concatenates the
hashes in shard order, and runs the Hamming engine and the keep decision once over the
whole corpus (:func:`torch_dedup.hamming.cluster.find_duplicates`). A sample's identity is
``(shard, key)``, so equal keys in different shards are different samples. Keep priority
is corpus order: shard order as given, then stored order within a shard.

The resulting :class:`ShardPlan` is self-contained: the shard list (URL, identity, name,
fingerprint, sample count), every sample's key (one UTF-8 blob), its status (kept,
near-duplicate, failed to hash, no image), the drop mask the filter reads, the
representative each duplicate was dropped for, and the hashes (so rewritten shards get
sidecars without decoding again). It saves as a checksummed, pickle-free store file of
kind ``"shard-plan"``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import numpy as np

from torch_dedup._store import pack_strings, read_store, unpack_strings, write_store
from torch_dedup.errors import EmptyDedupError, PlanError, SidecarError
from torch_dedup.hamming.cluster import find_duplicates
from torch_dedup.plan import DedupPlan
from torch_dedup.sidecar import hash_environment, library_versions

from .shard_urls import shard_id, shard_name
from .shards import (
    DEFAULT_IMAGE_EXTS,
    ShardHashes,
    _check,
    _check_engine,
    _hash_missing,
    _shard_error_text,
    parse_image_exts,
)

__all__ = ["STATUS_DUPLICATE", "STATUS_FAILED", "STATUS_KEPT", "STATUS_NO_IMAGE", "ShardPlan", "plan_shards"]

logger = logging.getLogger(__name__)

STATUS_KEPT, STATUS_DUPLICATE, STATUS_FAILED, STATUS_NO_IMAGE = 0, 1, 2, 3
_STATUS_NAMES = ("kept", "duplicate", "failed", "no_image")
_KIND = "shard-plan"
_VERSION = 1


@dataclass(frozen=True, eq=False)
class ShardPlan:
    """Which samples of a set of shards to drop, and why.

    Attributes:
        shards: per shard ``{"url", "id", "name", "fingerprint", "n"}``, in corpus order.
        shard_offsets: ``(S+1,) int64``: samples of shard ``s`` are ``shard_offsets[s]:shard_offsets[s+1]``.
        key_blob, key_offsets: every sample's ``__key__`` (UTF-8 blob, ``(N+1,)`` offsets).
        status: ``(N,) uint8``: 0 kept, 1 near-duplicate, 2 image failed to hash, 3 no image.
        drop: ``(N,) bool``: what the filter and the rewrite drop (duplicates, and failed
            images unless ``drop_failed=False``). Samples without an image are never dropped.
        representative: ``(N,) int64`` corpus index of the kept sample a duplicate was
            dropped for (itself for kept samples, -1 for failed and no-image ones).
        hashes: ``uint64`` ``(N,)`` or ``(N, W)`` (0 where not hashed).
        settings: method, hash_size, decode, image_exts, threshold, policy, drop_failed.
        summary: counts, ratio and largest groups (JSON-able).
        path: the file it was loaded from, if any.
    """

    shards: tuple
    shard_offsets: np.ndarray
    key_blob: np.ndarray
    key_offsets: np.ndarray
    status: np.ndarray
    drop: np.ndarray
    representative: np.ndarray
    hashes: np.ndarray
    settings: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    path: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        bad = self._problem()
        if bad:
            raise ValueError(f"inconsistent ShardPlan: {bad}")
        for name in ("shard_offsets", "key_blob", "key_offsets", "status", "drop", "representative", "hashes"):
            arr = np.asarray(getattr(self, name))
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "shards", tuple(dict(s) for s in self.shards))

    def _problem(self) -> str | None:
        s, off = len(self.shards), np.asarray(self.shard_offsets)
        if off.dtype != np.int64 or off.shape != (s + 1,) or off[0] != 0 or np.any(np.diff(off) < 0):
            return "shard_offsets must be int64 (S+1,), starting at 0, non-decreasing"
        n = int(off[-1])
        for i, sh in enumerate(self.shards):
            if not isinstance(sh, dict) or not {"url", "id", "name", "fingerprint", "n"} <= set(sh):
                return f"shard {i} lacks url/id/name/fingerprint/n"
            if sh["n"] != off[i + 1] - off[i]:
                return f"shard {i} states {sh['n']} samples but its offsets span {off[i + 1] - off[i]}"
        ko = np.asarray(self.key_offsets)
        if ko.dtype != np.int64 or ko.shape != (n + 1,) or ko[0] != 0 or ko[-1] != len(self.key_blob) \
                or np.any(np.diff(ko) < 0):
            return "key_offsets do not fit the key blob and sample count"
        st, dr, rep = np.asarray(self.status), np.asarray(self.drop), np.asarray(self.representative)
        if st.shape != (n,) or st.dtype != np.uint8 or (n and st.max() > STATUS_NO_IMAGE):
            return "status must be uint8 (N,) with values 0..3"
        if dr.shape != (n,) or dr.dtype != np.bool_ or np.any(dr & ((st == STATUS_KEPT) | (st == STATUS_NO_IMAGE))):
            return "drop must be bool (N,) and never drop a kept or image-less sample"
        if rep.shape != (n,) or rep.dtype != np.int64 or np.any((rep < -1) | (rep >= n)):
            return "representative must be int64 (N,) in [-1, N)"
        dup = st == STATUS_DUPLICATE
        if np.any(rep[dup] < 0) or np.any(st[rep[dup]] != STATUS_KEPT):
            return "a duplicate's representative must be a kept sample"
        h = np.asarray(self.hashes)
        if h.dtype != np.uint64 or h.ndim not in (1, 2) or h.shape[0] != n:
            return "hashes must be uint64 (N,) or (N, W)"
        return None

    # ------------------------------------------------------------------ views
    @property
    def n(self) -> int:
        """Samples in all shards."""
        return int(self.shard_offsets[-1])

    @property
    def n_dropped(self) -> int:
        """Samples the filter drops."""
        return int(np.count_nonzero(self.drop))

    @property
    def n_kept(self) -> int:
        """Samples the filter passes (kept images and samples without an image)."""
        return self.n - self.n_dropped

    @property
    def urls(self) -> list[str]:
        """The shard URLs, in corpus order."""
        return [s["url"] for s in self.shards]

    def shard_keys(self, s: int) -> list[str]:
        """The keys of shard ``s``, in stored order."""
        a, b = int(self.shard_offsets[s]), int(self.shard_offsets[s + 1])
        off = self.key_offsets[a:b + 1]
        return unpack_strings(self.key_blob[off[0]:off[-1]], off - off[0])

    def shard_drop(self, s: int) -> np.ndarray:
        """The drop mask of shard ``s``'s samples."""
        return self.drop[self.shard_offsets[s]:self.shard_offsets[s + 1]]

    def dropped_keys(self, s: int) -> frozenset:
        """The keys of shard ``s`` that are dropped."""
        keys = self.shard_keys(s)
        return frozenset(keys[i] for i in np.flatnonzero(self.shard_drop(s)).tolist())

    def kept(self) -> Iterator[tuple[str, str]]:
        """``(url, key)`` of every sample that passes, in corpus order."""
        for s, sh in enumerate(self.shards):
            keys, drop = self.shard_keys(s), self.shard_drop(s)
            yield from ((sh["url"], k) for k, d in zip(keys, drop.tolist()) if not d)

    def dropped(self) -> Iterator[tuple[str, str]]:
        """``(url, key)`` of every dropped sample, in corpus order."""
        for s, sh in enumerate(self.shards):
            keys, drop = self.shard_keys(s), self.shard_drop(s)
            yield from ((sh["url"], k) for k, d in zip(keys, drop.tolist()) if d)

    def sample(self, index: int) -> tuple[str, str]:
        """``(url, key)`` of corpus sample ``index``."""
        s = int(np.searchsorted(self.shard_offsets, index, side="right")) - 1
        a, b = int(self.key_offsets[index]), int(self.key_offsets[index + 1])
        return self.shards[s]["url"], bytes(self.key_blob[a:b]).decode("utf-8")

    def as_dedup_plan(self) -> DedupPlan:
        """The keep decision as a :class:`~torch_dedup.plan.DedupPlan` over corpus order.

        For map-style access to the shards (an indexed dataset whose item ``i`` is corpus
        sample ``i``, e.g. ``wids.ShardListDataset`` over the same shard list):
        ``DedupSampler(ds, plan=shard_plan.as_dedup_plan())``. Samples without an image or
        with a failed image count as failed there (not sampled).
        """
        valid = self.status <= STATUS_DUPLICATE
        return find_duplicates(self.hashes, self.settings["threshold"], policy=self.settings["policy"],
                               valid=valid, settings=dict(self.settings),
                               provenance={"shards": [s["id"] for s in self.shards]})

    # --------------------------------------------------------------- storage
    def save(self, path: str | os.PathLike) -> str:
        """Write the plan atomically (checksummed, no pickle). Returns the path written."""
        meta = {"shard_plan_version": _VERSION, "settings": self.settings, "summary": self.summary,
                "shards": list(self.shards), "versions": library_versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        arrays = {"shard_offsets": self.shard_offsets, "key_blob": self.key_blob, "key_offsets": self.key_offsets,
                  "status": self.status, "drop": self.drop, "representative": self.representative,
                  "hashes": self.hashes}
        return str(write_store(path, _KIND, meta, arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardPlan:
        """Read and validate a plan written by :meth:`save`.

        Raises:
            PlanError: missing, corrupt, hostile, of another kind or version, or inconsistent.
        """
        meta, arrays = read_store(path, _KIND, error=PlanError)
        where = str(path)
        if meta.get("shard_plan_version") != _VERSION:
            raise PlanError(where, f"shard plan version {meta.get('shard_plan_version')!r} is not the supported "
                                   f"{_VERSION}; make the plan again with `torch-dedup wds plan`")
        want = {"shard_offsets", "key_blob", "key_offsets", "status", "drop", "representative", "hashes"}
        if set(arrays) != want:
            raise PlanError(where, f"arrays {sorted(arrays)} do not match the expected {sorted(want)}")
        shards, settings = meta.get("shards"), meta.get("settings")
        if not isinstance(shards, list) or not isinstance(settings, dict):
            raise PlanError(where, "malformed shard list or settings")
        try:
            return cls(shards=tuple(shards), settings=settings, summary=meta.get("summary") or {}, path=where,
                       **arrays)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise PlanError(where, f"{exc}; delete it and make the plan again") from None


def _summary(plan: ShardPlan, dp: DedupPlan, ambiguous: int, k: int = 10) -> dict:
    st = plan.status
    groups = []
    for kept, members in dp.largest_groups(k):
        if len(members) < 2:
            break
        url, key = plan.sample(kept)
        groups.append({"size": int(len(members)), "kept": [url, key],
                       "dropped": [list(plan.sample(int(m))) for m in members[:20].tolist() if m != kept]})
    n = plan.n
    return {"n": n, "n_shards": len(plan.shards), "n_images": int(np.count_nonzero(st != STATUS_NO_IMAGE)),
            "n_no_image": int(np.count_nonzero(st == STATUS_NO_IMAGE)),
            "n_failed": int(np.count_nonzero(st == STATUS_FAILED)),
            "n_duplicates": int(np.count_nonzero(st == STATUS_DUPLICATE)),
            "n_dropped": plan.n_dropped, "n_kept": plan.n_kept, "ratio": plan.n_dropped / n if n else 0.0,
            "n_ambiguous_keys": ambiguous, "largest_groups": groups}


def _resolve_ambiguous(drop: np.ndarray, key_blob, key_offsets, shard_offsets) -> int:
    """A key seen twice in one shard cannot be told apart in the stream: drop it only if every copy goes."""
    count = 0
    for s in range(len(shard_offsets) - 1):
        a, b = int(shard_offsets[s]), int(shard_offsets[s + 1])
        off = key_offsets[a:b + 1]
        keys = unpack_strings(key_blob[off[0]:off[-1]], off - off[0])
        if len(set(keys)) == len(keys):
            continue
        where: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            where.setdefault(k, []).append(a + i)
        for k, idx in where.items():
            if len(idx) > 1 and len(set(drop[idx].tolist())) > 1:
                drop[idx] = False
                count += 1
                logger.warning("key %r appears %d times in shard %d with different decisions; all copies are "
                               "kept (the stream cannot tell them apart)", k, len(idx), s)
    return count


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
                ray_address: str | None = None) -> ShardPlan:
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
        out: save the plan to this file too.

    Returns:
        A :class:`ShardPlan`.

    Raises:
        ValueError: a bad argument.
        EmptyDedupError: the shards hold no sample at all.
        ShardReadError, ImageDecodeError: from hashing, with ``on_error="raise"``.

    Example:
        >>> plan = plan_shards("shards/shard-{000000..000009}.tar", threshold=6,
        ...                    out="shards/dedup.tdplan")  # doctest: +SKIP
        >>> plan.summary["n_dropped"]  # doctest: +SKIP
        412
    """
    if not isinstance(drop_failed, bool):
        raise ValueError(f"drop_failed must be True or False, got {drop_failed!r}")
    corpus = _Corpus()
    if isinstance(urls, ShardHashes):
        hashes = urls
        if hashes.settings.get("method") != method or hashes.settings.get("hash_size") != int(hash_size):
            raise ValueError(f"the ShardHashes were made with {hashes.settings}; pass the same method= and "
                             f"hash_size= (got {method!r}, {hash_size!r})")
        all_urls, errors, run_settings = hashes.urls, list(hashes.errors), hashes.settings
        for sc in hashes.sidecars:
            blob, off = pack_strings(sc.keys)
            corpus.add(sc.url, sc.hashes, sc.valid, sc.has_image, blob, off, sc.meta.get("fingerprint"),
                       None if sc.path is None else str(sc.path), None)
    else:
        exts = parse_image_exts(image_exts)
        _check(method, hash_size, on_error, workers)
        _check_engine(engine, ray_address)
        run = _hash_missing(urls, method, hash_size, exts, sidecar_dir, workers, on_error, fast_decode, refresh,
                            progress, engine, ray_address)
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
    shards = tuple(corpus.shards)
    h, valid, has_image, key_blob, key_offsets, shard_offsets = corpus.arrays()
    del corpus
    settings = {**run_settings, "threshold": int(threshold), "policy": policy, "drop_failed": drop_failed,
                "hash_env": hash_environment()}
    dp = find_duplicates(h, threshold, policy=policy, valid=valid, settings=dict(settings))
    status = np.full(n, STATUS_KEPT, np.uint8)
    status[~dp.keep] = STATUS_DUPLICATE
    status[has_image & ~valid] = STATUS_FAILED
    status[~has_image] = STATUS_NO_IMAGE
    drop = (status == STATUS_DUPLICATE) | ((status == STATUS_FAILED) & drop_failed)
    ambiguous = _resolve_ambiguous(drop, key_blob, key_offsets, shard_offsets)
    plan = ShardPlan(shards=shards, shard_offsets=shard_offsets, key_blob=key_blob, key_offsets=key_offsets,
                     status=status, drop=drop, representative=dp.representative.astype(np.int64), hashes=h,
                     settings=settings)
    object.__setattr__(plan, "summary", _summary(plan, dp, ambiguous))
    if errors:
        plan.summary["shard_errors"] = [list(e) for e in errors]
    logger.info("plan_shards: %d samples in %d shards, threshold %d: dropping %d (%.1f%%)", n, len(shards),
                threshold, plan.n_dropped, 100 * plan.n_dropped / n)
    if out is not None:
        object.__setattr__(plan, "path", plan.save(out))
    return plan
