"""One global plan over many shards: which ``(shard, __key__)`` samples to drop.

:func:`~torch_dedup.wds.shard_planning.plan_shards` (in :mod:`torch_dedup.wds.shard_planning`)
builds it: one Hamming engine run and keep decision over the whole corpus, in corpus order
(shard order as given, then stored order within a shard); a sample's identity is ``(shard, key)``.

A :class:`ShardPlan` is a :class:`~torch_dedup.plan.DedupPlan` over those corpus indices
(samples whose image failed to hash and samples without an image are ``failed`` there)
seen through the shard table: shards (URL, identity, name, fingerprint, sample count),
every sample's key (one UTF-8 blob), which samples have an image, and the hashes (so
rewritten shards get sidecars without decoding again). The status of each sample and the
drop mask the filter reads are derived from these, never stored. It saves as an ordinary
plan file: ``DedupPlan.load`` reads the plan part of it, ``ShardPlan.load`` the whole.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import numpy as np

from torch_dedup._store import read_store, unpack_strings
from torch_dedup.errors import PlanError
from torch_dedup.hamming import popcount64
from torch_dedup.plan import DedupPlan
from torch_dedup.sidecar import library_versions

__all__ = ["STATUS_DUPLICATE", "STATUS_FAILED", "STATUS_KEPT", "STATUS_LEAKED", "STATUS_NO_IMAGE", "ShardPlan"]

STATUS_KEPT, STATUS_DUPLICATE, STATUS_FAILED, STATUS_NO_IMAGE, STATUS_LEAKED = 0, 1, 2, 3, 4
# Version of the shard extras inside a plan file. Version 1 was a store file of its own
# kind, "shard-plan"; such files are refused with a pointer to `torch-dedup wds plan`.
_VERSION = 2
_OLD_KIND = "shard-plan"
_EXTRA_ARRAYS = ("shard_offsets", "key_blob", "key_offsets", "has_image", "hashes")
_SETTINGS = ("method", "hash_size", "decode", "image_exts", "drop_failed")  # what rewrite and the filter read
_REMAKE = "make the plan again with `torch-dedup wds plan SHARDS --out FILE` (or plan_shards(..., out=FILE))"
_KEY_BASE = np.uint64(0x100000001B3)  # FNV prime: an odd multiplier spreads the key digests
_KEY_CHUNK = 1 << 20  # keys digested per numpy pass, bounding the temporaries to ~16 bytes per key byte


@dataclass(frozen=True, eq=False)
class ShardPlan:
    """Which samples of a set of shards to drop, and why: a :class:`DedupPlan` over ``(shard, key)``.

    Attributes:
        plan: the :class:`~torch_dedup.plan.DedupPlan` over corpus order (shard order as
            given, then stored order within a shard). Samples whose image failed to hash
            and samples without an image are ``failed`` in it.
        shards: per shard ``{"url", "id", "name", "fingerprint", "n", ...}``, in corpus order.
        shard_offsets: ``(S+1,) int64``: samples of shard ``s`` are ``shard_offsets[s]:shard_offsets[s+1]``.
        key_blob, key_offsets: every sample's ``__key__`` (UTF-8 blob, ``(N+1,)`` offsets).
        has_image: ``(N,) bool``: the sample has an image member.
        hashes: ``uint64`` ``(N,)`` or ``(N, W)`` (0 where not hashed).
        shard_errors: ``(url, reason)`` of shards that could not be read to the end
            (``on_error="skip"``); the samples before the damage are planned.
        path: the file it was loaded from or saved to, if any.
        status: derived ``(N,) uint8``: 0 kept, 1 near-duplicate, 2 image failed to hash,
            3 no image, 4 leaked (a near-duplicate of the plan's ``against=`` sets).
        drop: derived ``(N,) bool``: what the filter and the rewrite drop: duplicates, leaked
            samples, and failed images unless ``drop_failed=False``. Samples without an image are never
            dropped, nor any copy of a key that appears twice in one shard with different
            decisions (the stream cannot tell the copies apart).
        summary: derived, JSON-able: the plan's ``summary_dict()`` with counts over samples as
            the filter sees them (``n_removed``, ``n_kept``, ...) and the shard fields
            (docs/webdataset.md, "Counters").
        ambiguous_keys: derived ``(shard, key, copies)`` of each key spared that way.

    Arrays passed in become read-only (not copied: a plan may hold millions of keys).

    Example:
        >>> plan = ShardPlan.load("shards/dedup.tdplan")  # doctest: +SKIP
        >>> plan.n_removed, plan.plan.n_kept  # doctest: +SKIP
        (412, 9560)
    """

    plan: DedupPlan
    shards: tuple
    shard_offsets: np.ndarray
    key_blob: np.ndarray
    key_offsets: np.ndarray
    has_image: np.ndarray
    hashes: np.ndarray
    shard_errors: tuple = ()
    path: str | None = field(default=None, repr=False)
    status: np.ndarray = field(init=False, repr=False)
    drop: np.ndarray = field(init=False, repr=False)
    summary: dict = field(init=False, repr=False)
    ambiguous_keys: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bad = self._problem()
        if bad:
            raise ValueError(f"inconsistent ShardPlan: {bad}")
        for name in ("shard_offsets", "key_blob", "key_offsets", "has_image", "hashes"):
            arr = np.asarray(getattr(self, name))
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "shards", tuple(dict(s) for s in self.shards))
        object.__setattr__(self, "shard_errors", tuple((str(u), str(why)) for u, why in self.shard_errors))
        dp, has_image = self.plan, self.has_image
        status = np.full(dp.n, STATUS_KEPT, np.uint8)
        status[~dp.keep] = STATUS_DUPLICATE
        status[dp.leaked] = STATUS_LEAKED
        status[dp.failed] = STATUS_FAILED
        status[~has_image] = STATUS_NO_IMAGE
        # the last sample read from a damaged shard may have been cut (hash_shard records it as a
        # failed image); it is dropped even with drop_failed=False: its members are in doubt
        cut = self.cut_samples()
        status[cut] = STATUS_FAILED
        drop = (status == STATUS_DUPLICATE) | (status == STATUS_LEAKED) \
            | ((status == STATUS_FAILED) & dp.settings["drop_failed"])
        drop[cut] = True
        ambiguous = _resolve_ambiguous(drop, _repeated_keys(self.key_blob, self.key_offsets, self.shard_offsets))
        for arr in (status, drop):
            arr.setflags(write=False)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "drop", drop)
        object.__setattr__(self, "ambiguous_keys", tuple(ambiguous))
        object.__setattr__(self, "summary", self._summary())

    def _problem(self) -> str | None:
        if not isinstance(self.plan, DedupPlan):
            return f"plan is {type(self.plan).__name__}, expected a DedupPlan"
        s, off = len(self.shards), np.asarray(self.shard_offsets)
        if off.dtype != np.int64 or off.shape != (s + 1,) or off[0] != 0 or np.any(np.diff(off) < 0):
            return "shard_offsets must be int64 (S+1,), starting at 0, non-decreasing"
        n = int(off[-1])
        for i, sh in enumerate(self.shards):
            if not isinstance(sh, dict) or not {"url", "id", "name", "fingerprint", "n"} <= set(sh):
                return f"shard {i} lacks url/id/name/fingerprint/n"
            if sh["n"] != off[i + 1] - off[i]:
                return f"shard {i} states {sh['n']} samples but its offsets span {off[i + 1] - off[i]}"
        blob, ko = np.asarray(self.key_blob), np.asarray(self.key_offsets)
        if blob.dtype != np.uint8 or blob.ndim != 1 or ko.dtype != np.int64 or ko.shape != (n + 1,) or ko[0] != 0 \
                or ko[-1] != len(blob) or np.any(np.diff(ko) < 0):
            return "key_blob/key_offsets do not fit each other and the sample count"
        dp = self.plan
        if dp.n != n:
            return f"the DedupPlan covers {dp.n} items but the shards hold {n} samples"
        missing = [k for k in _SETTINGS if k not in dp.settings]
        if missing or not isinstance(dp.settings["drop_failed"], bool):
            return f"the plan's settings lack {missing or ['a bool drop_failed']}"
        hi = np.asarray(self.has_image)
        if hi.dtype != np.bool_ or hi.shape != (n,):
            return "has_image must be bool (N,)"
        if np.any(~hi & ~dp.failed):
            return "a sample without an image must be failed in the plan"
        h = np.asarray(self.hashes)
        if h.dtype != np.uint64 or h.ndim not in (1, 2) or h.shape[0] != n:
            return "hashes must be uint64 (N,) or (N, W)"
        bits, words = dp.settings.get("hash_bits"), h.shape[1] if h.ndim == 2 else 1
        if bits is not None and not 64 * (words - 1) < bits <= 64 * words:
            return f"hashes of shape {h.shape} do not hold the plan's {bits}-bit hashes"
        # the decisions must belong to these hashes: each removed sample lies at its recorded
        # distance from its representative
        removed = dp.removed_indices
        rows = h.reshape(n, -1)
        d = popcount64(rows[removed] ^ rows[dp.representative[removed]]).sum(axis=1, dtype=np.int64)
        if not np.array_equal(d, dp.distance_to_rep[removed]):
            return "the hashes do not match the plan's distances to representatives"
        if not all(isinstance(e, (tuple, list)) and len(e) == 2 for e in self.shard_errors):
            return "shard_errors must be (url, reason) pairs"
        return None

    def _summary(self, k: int = 10) -> dict:
        """The DedupPlan's summary, with counts over samples as the filter sees them."""
        dp, st = self.plan, self.status
        groups = []
        for kept, members in dp.largest_groups(k):
            if len(members) < 2:
                break
            url, key = self.sample(kept)
            groups.append({"size": int(len(members)), "kept": [url, key],
                           "dropped": [list(self.sample(int(m))) for m in members[:20].tolist() if m != kept]})
        n, removed = self.n, int(np.count_nonzero(self.drop))
        return {**dp.summary_dict(),
                # counts over samples as the filter sees them (image-less samples pass), where the
                # DedupPlan counts items; n_failed counts images that failed to hash, not image-less samples
                "n_kept": n - removed, "n_removed": removed, "n_dropped": removed,
                "ratio": removed / n if n else 0.0, "n_images_kept": dp.n_kept,
                "n_failed": int(np.count_nonzero(st == STATUS_FAILED)),
                "n_shards": len(self.shards), "n_images": int(np.count_nonzero(self.has_image)),
                "n_no_image": int(np.count_nonzero(st == STATUS_NO_IMAGE)),
                "n_ambiguous_keys": len(self.ambiguous_keys), "largest_groups": groups,
                "shard_errors": [list(e) for e in self.shard_errors]}

    # ------------------------------------------------------------------ views
    @property
    def n(self) -> int:
        """Samples in all shards."""
        return int(self.shard_offsets[-1])

    @property
    def n_removed(self) -> int:
        """Samples the filter and the rewrite drop (``drop.sum()``)."""
        return int(np.count_nonzero(self.drop))

    @property
    def n_dropped(self) -> int:
        """Deprecated alias of :attr:`n_removed`."""
        warnings.warn("ShardPlan.n_dropped is deprecated; use ShardPlan.n_removed (the same count, named as "
                      "DedupPlan names it)", DeprecationWarning, stacklevel=2)
        return self.n_removed

    @property
    def n_kept(self) -> int:
        """Samples the filter passes (kept images, spared ambiguous keys and samples without an image)."""
        return self.n - self.n_removed

    @property
    def representative(self) -> np.ndarray:
        """``(N,) int64`` corpus index of the kept sample a duplicate was dropped for (itself for
        kept samples, -1 for failed and image-less ones): the plan's ``representative``."""
        return self.plan.representative

    @property
    def settings(self) -> dict:
        """How the plan was made: method, hash_size, decode, image_exts, threshold, policy,
        drop_failed, hash_env, and what :func:`find_duplicates` records."""
        return self.plan.settings

    @property
    def urls(self) -> list[str]:
        """The shard URLs, in corpus order."""
        return [s["url"] for s in self.shards]

    def cut_samples(self) -> np.ndarray:
        """``int64`` corpus indices of the samples that damage may have cut (the last sample read
        from each shard in :attr:`shard_errors`): always dropped, never written by a rewrite."""
        damaged = {u for u, _ in self.shard_errors}
        off = self.shard_offsets
        return np.array([int(off[s + 1]) - 1 for s, sh in enumerate(self.shards)
                         if sh["url"] in damaged and off[s + 1] > off[s]], dtype=np.int64)

    def split_kept_counts(self, world_size: int, num_workers: int = 1) -> np.ndarray:
        """Samples the filter passes to each ``(rank, worker)`` when the shards, in plan order, are
        split by webdataset's ``split_by_node`` then ``split_by_worker`` (shard ``s`` goes to rank
        ``s % world_size``, worker ``(s // world_size) % num_workers``).

        ``int(counts.min())`` is the epoch length that every worker of every rank can yield
        without repeating a sample: pass it to ``DataPipeline.with_epoch`` (divided by the batch
        size when the pipeline batches) and all ranks get the same count (docs/webdataset.md,
        "Equal counts on every rank").

        Args:
            world_size: DDP ranks (>= 1).
            num_workers: DataLoader workers per rank (>= 1; count 0 workers as 1).

        Returns:
            ``int64`` array of shape ``(world_size, num_workers)``.

        Raises:
            ValueError: a bad count, or more splits than shards (a worker would get no shard).

        Example:
            >>> counts = plan.split_kept_counts(world_size=2, num_workers=4)  # doctest: +SKIP
            >>> pipe = pipe.with_epoch(int(counts.min()))  # doctest: +SKIP
        """
        for name, v in (("world_size", world_size), ("num_workers", num_workers)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}={v!r} must be an int >= 1")
        n_shards = len(self.shards)
        if world_size * num_workers > n_shards:
            raise ValueError(f"world_size={world_size} x num_workers={num_workers} = {world_size * num_workers} "
                             f"splits but the plan has {n_shards} shard(s): some worker would get no shard and "
                             "yield nothing; use fewer workers, or more, smaller shards")
        passed = np.concatenate([[0], np.cumsum(~self.drop, dtype=np.int64)])
        kept = passed[self.shard_offsets[1:]] - passed[self.shard_offsets[:-1]]
        out = np.zeros((world_size, num_workers), np.int64)
        idx = np.arange(n_shards)
        np.add.at(out, (idx % world_size, (idx // world_size) % num_workers), kept)
        return out

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
        """The stored :class:`~torch_dedup.plan.DedupPlan` over corpus order (same as :attr:`plan`).

        For map-style access to the shards (an indexed dataset whose item ``i`` is corpus
        sample ``i``, e.g. ``wids.ShardListDataset`` over the same shard list):
        ``DedupSampler(ds, plan=shard_plan.as_dedup_plan())`` samples ``plan.kept_indices``.
        Samples without an image or with a failed image are failed there (not sampled, even
        with ``drop_failed=False``), and a duplicate key spared by the stream filter is
        still a duplicate (an index tells the copies apart).
        """
        return self.plan

    # --------------------------------------------------------------- storage
    def save(self, path: str | os.PathLike) -> str:
        """Write the plan atomically as one plan file (checksummed, no pickle). Returns the path written.

        The file is an ordinary :class:`DedupPlan` file with the shard table stored beside
        the plan as extras: ``DedupPlan.load(path)`` reads the plan over corpus order,
        :meth:`load` the whole shard plan.
        """
        meta = {"shard_plan_version": _VERSION, "shards": list(self.shards),
                "shard_errors": [list(e) for e in self.shard_errors], "versions": library_versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        arrays = {name: getattr(self, name) for name in _EXTRA_ARRAYS}
        return self.plan.save(path, extra_meta=meta, extra_arrays=arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardPlan:
        """Read and validate a shard plan written by :meth:`save`.

        Args:
            path: the plan file (from ``plan_shards(..., out=)`` or ``torch-dedup wds plan``).

        Returns:
            The :class:`ShardPlan`, with ``path`` set.

        Raises:
            PlanError: missing, corrupt, hostile or inconsistent; a plan file without shard
                extras (a dataset plan); or a shard plan of the old ``"shard-plan"`` format.
                The message names the file and the fix.
        """
        where = str(path)
        try:
            dp, meta, arrays = DedupPlan.load_with_extras(path)
        except PlanError:
            if _is_old_shard_plan(path):
                raise PlanError(where, f"this is a shard plan of an older torch_dedup (file kind {_OLD_KIND!r}), "
                                       f"which this version no longer reads; {_REMAKE}") from None
            raise
        if "shard_plan_version" not in meta:
            raise PlanError(where, "this is a plan file without shard extras (a plan of a dataset, not of "
                                   f"webdataset shards), so it is not a shard plan; {_REMAKE}")
        if meta["shard_plan_version"] != _VERSION:
            raise PlanError(where, f"shard plan version {meta['shard_plan_version']!r} is not the supported "
                                   f"{_VERSION}; {_REMAKE}")
        if set(arrays) != set(_EXTRA_ARRAYS):
            raise PlanError(where, f"shard arrays {sorted(arrays)} do not match the expected "
                                   f"{sorted(_EXTRA_ARRAYS)}; delete it and {_REMAKE}")
        shards, errors = meta.get("shards"), meta.get("shard_errors", [])
        if not isinstance(shards, list) or not isinstance(errors, list):
            raise PlanError(where, f"malformed shard list or shard errors; delete it and {_REMAKE}")
        try:
            return cls(plan=dp, shards=tuple(shards), shard_errors=tuple(errors), path=where, **arrays)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise PlanError(where, f"{exc}; delete it and {_REMAKE}") from None


def _is_old_shard_plan(path) -> bool:
    """Whether ``path`` is a readable store file of the retired kind ``"shard-plan"``."""
    try:
        read_store(path, _OLD_KIND, error=PlanError)
    except PlanError:
        return False
    return True


def _key_digests(key_blob: np.ndarray, key_offsets: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial digest of each key's bytes: equal keys get equal digests.

    Vectorised (no Python string per sample), so that deriving the drop mask on every
    load stays cheap; digest collisions are settled by comparing the bytes.
    """
    n = len(key_offsets) - 1
    out = np.zeros(max(n, 0), np.uint64)
    lengths = np.diff(key_offsets)
    if n <= 0 or not lengths.any():
        return out
    # uint64 arithmetic wraps modulo 2**64 without warnings, which is what a digest wants
    powers = np.cumprod(np.full(int(lengths.max()), _KEY_BASE, np.uint64))
    for a in range(0, n, _KEY_CHUNK):
        b = min(a + _KEY_CHUNK, n)
        lo, hi = int(key_offsets[a]), int(key_offsets[b])
        if hi == lo:
            continue
        starts, ln = key_offsets[a:b] - lo, lengths[a:b]
        pos = np.arange(hi - lo, dtype=np.int64) - np.repeat(starts, ln)
        terms = (key_blob[lo:hi].astype(np.uint64) + np.uint64(1)) * powers[pos]
        nonempty = ln > 0
        # empty keys consume no bytes, so each non-empty key's span ends where the next one starts
        out[a:b][nonempty] = np.add.reduceat(terms, starts[nonempty])
    return out


def _repeated_keys(key_blob, key_offsets, shard_offsets) -> list[tuple[int, str, np.ndarray]]:
    """``(shard, key, corpus indices)`` of every key stored more than once in one shard."""
    n = len(key_offsets) - 1
    if n < 2:
        return []
    shard_of = np.repeat(np.arange(len(shard_offsets) - 1), np.diff(shard_offsets))
    lengths, digest = np.diff(key_offsets), _key_digests(key_blob, key_offsets)
    order = np.lexsort((np.arange(n), digest, lengths, shard_of))
    so, lo, dg = shard_of[order], lengths[order], digest[order]
    same = (so[1:] == so[:-1]) & (lo[1:] == lo[:-1]) & (dg[1:] == dg[:-1])
    if not same.any():  # the usual case: every key is unique within its shard
        return []
    candidates = np.unique(np.concatenate([order[1:][same], order[:-1][same]]))
    groups: dict[tuple[int, bytes], list[int]] = {}
    for j in candidates.tolist():  # exact bytes settle digest collisions
        groups.setdefault((int(shard_of[j]), bytes(key_blob[key_offsets[j]:key_offsets[j + 1]])), []).append(j)
    return [(s, raw.decode("utf-8"), np.asarray(idx, np.int64))
            for (s, raw), idx in sorted(groups.items(), key=lambda kv: kv[1][0]) if len(idx) > 1]


def _resolve_ambiguous(drop: np.ndarray, repeated) -> list[tuple[int, str, int]]:
    """A key seen twice in one shard cannot be told apart in the stream: drop it only if every copy goes.

    Returns ``(shard, key, copies)`` of each key whose copies were spared.
    """
    spared = []
    for s, key, idx in repeated:
        d = drop[idx]
        if d.any() and not d.all():
            drop[idx] = False
            spared.append((s, key, len(idx)))
    return spared
