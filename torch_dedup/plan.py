"""``DedupPlan``: the keep decision for a dataset, the one thing every consumer reads (layer 2).

A plan says, for each of the ``n`` items of a dataset, whether it is kept, and for
the others why not: removed as a near-duplicate of a kept representative, leaked
into another set (``against=``), or failed to hash. It saves and loads as a
checksummed, pickle-free store file (see :mod:`torch_dedup._store`) and checks on
load that every array is consistent with every other, so a corrupt or hostile file
raises :class:`~torch_dedup.errors.PlanError` instead of feeding a sampler
out-of-range indices.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._store import read_store, write_store
from .errors import PlanError

__all__ = ["POLICIES", "DedupPlan"]

logger = logging.getLogger(__name__)

#: Clustering policies a plan may record.
POLICIES = ("greedy", "components")
_KIND = "plan"
_PLAN_VERSION = 1
_EXTRA = "extra/"  # prefix of the arrays a consumer stores beside the plan


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, copy=True)
    arr.setflags(write=False)
    return arr


def _check_array(name: str, arr: Any, dtype, shape: tuple) -> str | None:
    if not isinstance(arr, np.ndarray):
        return f"{name} is {type(arr).__name__}, expected a numpy array"
    if arr.dtype != np.dtype(dtype):
        return f"{name} has dtype {arr.dtype}, expected {np.dtype(dtype)}"
    if len(arr.shape) != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        return f"{name} has shape {arr.shape}, expected {want}"
    return None


def _problem(p: DedupPlan) -> str | None:
    """The first inconsistency of a plan, as text, or None when it is sound."""
    if isinstance(p.n, bool) or not isinstance(p.n, (int, np.integer)) or p.n < 0:
        return f"n={p.n!r} is not a non-negative int"
    if isinstance(p.threshold, bool) or not isinstance(p.threshold, (int, np.integer)) or p.threshold < 0:
        return f"threshold={p.threshold!r} is not a non-negative int"
    if p.policy not in POLICIES:
        return f"policy={p.policy!r} is not one of {POLICIES}"
    if not isinstance(p.per_class, bool):
        return f"per_class={p.per_class!r} is not a bool"
    if not isinstance(p.settings, dict) or not isinstance(p.provenance, dict):
        return "settings and provenance must be dicts"
    n = int(p.n)
    for name, dt in (("keep", np.bool_), ("failed", np.bool_), ("leaked", np.bool_), ("group", np.int64),
                     ("representative", np.int64), ("distance_to_rep", np.int16)):
        bad = _check_array(name, getattr(p, name), dt, (n,))
        if bad:
            return bad
    bad = (_check_array("label_conflicts", p.label_conflicts, np.int64, (None, 2))
           or _check_array("label_conflict_distances", p.label_conflict_distances,
                           getattr(p.label_conflict_distances, "dtype", None) if getattr(
                               p.label_conflict_distances, "dtype", None) in (np.uint8, np.uint16) else np.uint8,
                           (len(p.label_conflicts) if isinstance(p.label_conflicts, np.ndarray) else -1,))
           or _check_array("leaks", p.leaks, np.int64, (None, 3)))
    if bad:
        return bad
    if p.labels is not None and (bad := _check_array("labels", p.labels, np.int64, (n,))):
        return bad
    if p.per_class and p.labels is None:
        return "per_class is set but the plan has no labels"
    if p.sweep is not None:
        if bad := _check_array("sweep", p.sweep, np.int64, (None,)):
            return bad
        if len(p.sweep) == 0 or np.any(p.sweep < 0) or np.any(p.sweep > n):
            return f"sweep values must lie in [0, {n}] and there must be at least one"
    if p.sweep_pairs is not None:
        if p.sweep is None:
            return "sweep_pairs without sweep (both come from one sweep)"
        if bad := _check_array("sweep_pairs", p.sweep_pairs, np.int64, (len(p.sweep),)):
            return bad
        if np.any(p.sweep_pairs < 0) or sum(p.sweep_pairs.tolist()) > n * (n - 1) // 2:
            return f"sweep_pairs must be pair counts >= 0 adding up to at most n(n-1)/2 = {n * (n - 1) // 2}"
    bits = p.settings.get("hash_bits")
    if bits is not None and (not isinstance(bits, int) or isinstance(bits, bool) or bits <= 0 or p.threshold > bits):
        return f"settings hash_bits={bits!r} is not a positive int >= threshold {p.threshold}"
    max_d = bits if isinstance(bits, int) and not isinstance(bits, bool) else 32767

    keep, failed, leaked = p.keep, p.failed, p.leaked
    if np.any((keep & failed) | (keep & leaked) | (failed & leaked)):
        return "keep, failed and leaked overlap (an item can be only one of them)"
    out = failed | leaked
    removed = ~(keep | out)
    idx = np.arange(n, dtype=np.int64)
    rep, group, dist = p.representative, p.group, p.distance_to_rep
    if np.any(rep[keep] != idx[keep]) or np.any(dist[keep] != 0):
        return "a kept item must be its own representative at distance 0"
    if np.any(rep[out] != -1) or np.any(group[out] != -1) or np.any(dist[out] != -1):
        return "failed and leaked items must have representative, group and distance -1"
    r = rep[removed]
    if np.any((r < 0) | (r >= n)):
        return "a removed item's representative is out of range"
    if not np.all(keep[r]):
        return "a removed item's representative is not a kept item"
    d = dist[removed]
    limit = p.threshold if p.policy == "greedy" else max_d
    if np.any((d < 0) | (d > limit)):
        return f"a removed item's distance to its representative is outside [0, {limit}]"
    kept_idx = idx[keep]
    if not np.array_equal(group[kept_idx], np.arange(len(kept_idx))):
        return "group ids of kept items must be 0..G-1 in item order"
    if np.any(group[removed] != group[r]):
        return "a removed item's group differs from its representative's"

    lc, lcd = p.label_conflicts, p.label_conflict_distances
    if len(lc):
        if p.labels is None:
            return "label conflicts without labels"
        if np.any((lc[:, 0] < 0) | (lc[:, 1] >= n) | (lc[:, 0] >= lc[:, 1])):
            return "label conflict pairs must satisfy 0 <= i < j < n"
        if np.any(p.labels[lc[:, 0]] == p.labels[lc[:, 1]]) or np.any(lcd > p.threshold):
            return "a label conflict joins two items of one label, or lies beyond the threshold"
        if np.any(failed[lc[:, 0]] | failed[lc[:, 1]]):
            return "a label conflict involves an item that failed to hash"
    if p.leak_pairs is not None:
        if bad := _check_array("leak_pairs", p.leak_pairs, np.int64, (None, 3)):
            return bad
        lp = p.leak_pairs
        if len(lp) and (np.any((lp[:, 0] < 0) | (lp[:, 0] >= n)) or np.any(lp[:, 1] < 0)
                        or np.any((lp[:, 2] < 0) | (lp[:, 2] > p.threshold))):
            return "a leak pair has an item out of range, a negative row, or a distance beyond the threshold"
        if len(lp) and not np.all(leaked[lp[:, 0]]):
            return "a leak pair names an item that is not marked leaked"
        if not np.array_equal(np.unique(lp[:, 0]), idx[leaked]):
            return "leak_pairs must name every leaked item"
    lk = p.leaks
    if not np.array_equal(lk[:, 0], idx[leaked]):
        return "leaks must list each leaked item once, in item order"
    if len(lk) and (np.any(lk[:, 1] < 0) or np.any((lk[:, 2] < 0) | (lk[:, 2] > p.threshold))):
        return "a leak has a negative row of the other set or a distance beyond the threshold"
    return None


@dataclass(frozen=True, eq=False)
class DedupPlan:
    """Which items of a dataset to keep, and why the others go.

    Built by :func:`torch_dedup.hamming.cluster.find_duplicates`; read by the
    samplers, datasets, filters and reports. Arrays are read-only.

    Attributes:
        n: number of items in the dataset.
        threshold: Hamming threshold; items within it are near-duplicates.
        policy: ``"greedy"`` or ``"components"``.
        keep: ``(n,) bool``, True for kept items.
        group: ``(n,) int64`` group id, dense ``0..G-1`` in the order of each group's
            kept item; removed items share their representative's id; -1 for failed
            or leaked items.
        representative: ``(n,) int64``: itself for kept items; for removed ones the
            kept item they were removed for (greedy: the highest-priority kept item
            within the threshold; components: the kept item of the component); -1
            for failed or leaked items.
        distance_to_rep: ``(n,) int16`` Hamming distance to the representative: 0
            for kept, -1 for failed or leaked; under components it is the direct
            distance, which may exceed the threshold along chains.
        failed: ``(n,) bool``, items that could not be hashed (neither kept nor removed).
        leaked: ``(n,) bool``, items within the threshold of the ``against`` set.
        labels: ``(n,) int64`` class labels, or None.
        per_class: whether only same-label items counted as duplicates.
        label_conflicts: ``(P, 2) int64`` item pairs ``i < j`` within the threshold
            whose labels differ (reported whenever labels are given, per_class or
            not). Items with the same hash value and label form one group, named by
            its lowest-index item, and each pair of conflicting groups is listed once,
            so exact-duplicate blocks cannot blow the list up quadratically; without
            exact duplicates this is every conflicting item pair.
        label_conflict_distances: ``(P,)`` their distances (uint8; uint16 for hashes over 255 bits).
        leaks: ``(L, 3) int64`` rows ``(item, against_row, distance)``: each leaked
            item with its nearest item of the other set (lowest row on ties).
        leak_pairs: ``(P, 3) int64`` rows ``(item, against_row, distance)``: *every*
            pair within the threshold between this set and the other, sorted by item then
            row; ``None`` unless asked for (``find_duplicates(..., leak_pairs=True)``), as
            it can be large. ``against_row`` counts rows of the ``against`` hashes.
        sweep: ``(T+1,) int64`` kept count at thresholds ``0..T``, or None.
        sweep_pairs: ``(T+1,) int64`` item pairs ``i < j`` at Hamming distance exactly
            ``d`` for ``d = 0..T`` (from the sweep's search), or None; its cumulative sum
            (:attr:`sweep_pairs_within`) is the number of near-duplicate pairs at each
            threshold. Pairs of hashed items (leaked ones included); under ``per_class``
            only pairs with one label.
        settings: how the plan was made (method, hash_bits, priority kind, ...).
        provenance: where the hashes came from (fingerprint, versions, sidecar, ...).
        path: the file the plan was loaded from, if any (used in error messages).

    Example:
        >>> import numpy as np
        >>> from torch_dedup.hamming.cluster import find_duplicates
        >>> plan = find_duplicates(np.array([0, 1, 0xFF00], dtype=np.uint64), threshold=2)
        >>> plan.kept_indices.tolist(), plan.representative.tolist()
        ([0, 2], [0, 0, 2])
    """

    n: int
    threshold: int
    policy: str
    keep: np.ndarray
    group: np.ndarray
    representative: np.ndarray
    distance_to_rep: np.ndarray
    failed: np.ndarray
    leaked: np.ndarray
    labels: np.ndarray | None = None
    per_class: bool = False
    label_conflicts: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    label_conflict_distances: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    leaks: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    leak_pairs: np.ndarray | None = None
    sweep: np.ndarray | None = None
    sweep_pairs: np.ndarray | None = None
    settings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    path: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        bad = _problem(self)
        if bad:
            raise ValueError(f"inconsistent DedupPlan: {bad}")
        for name in ("keep", "group", "representative", "distance_to_rep", "failed", "leaked", "labels",
                     "label_conflicts", "label_conflict_distances", "leaks", "leak_pairs", "sweep",
                     "sweep_pairs"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _readonly(value))
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "threshold", int(self.threshold))

    # ----------------------------------------------------------------- views
    @property
    def kept_indices(self) -> np.ndarray:
        """Sorted ``int64`` indices of the kept items (what a sampler yields)."""
        return np.flatnonzero(self.keep).astype(np.int64)

    @property
    def removed_indices(self) -> np.ndarray:
        """Sorted ``int64`` indices of items removed as near-duplicates (not failed, not leaked)."""
        return np.flatnonzero(~(self.keep | self.failed | self.leaked)).astype(np.int64)

    @property
    def n_kept(self) -> int:
        """Number of kept items."""
        return int(np.count_nonzero(self.keep))

    @property
    def n_removed(self) -> int:
        """Number of items not kept, for whatever reason (duplicate, leaked or failed)."""
        return self.n - self.n_kept

    @property
    def ratio(self) -> float:
        """Fraction of items not kept (0.0 for an empty plan)."""
        return self.n_removed / self.n if self.n else 0.0

    @property
    def sweep_pairs_within(self) -> np.ndarray | None:
        """Near-duplicate item pairs within each threshold ``0..T`` (cumulative ``sweep_pairs``), or None."""
        return None if self.sweep_pairs is None else np.cumsum(self.sweep_pairs, dtype=np.int64)

    def group_sizes(self) -> np.ndarray:
        """Items per group id, ``(G,) int64`` (a kept item plus those removed for it)."""
        g = self.group[self.group >= 0]
        return np.bincount(g, minlength=self.n_kept).astype(np.int64)

    def largest_groups(self, k: int = 10) -> list[tuple[int, np.ndarray]]:
        """The ``k`` largest groups (ties by group id) as ``(kept item, sorted member indices)``."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k={k!r} must be a non-negative int")
        sizes = self.group_sizes()
        top = np.lexsort((np.arange(len(sizes)), -sizes))[:k]
        members = np.flatnonzero(np.isin(self.group, top))
        by_group = members[np.argsort(self.group[members], kind="stable")]
        bounds = np.searchsorted(self.group[by_group], top, side="left")
        kept = self.kept_indices
        return [(int(kept[g]), by_group[b:b + sizes[g]]) for g, b in zip(top.tolist(), bounds.tolist())]

    def per_class_counts(self) -> dict[int, tuple[int, int]]:
        """``label -> (items before, items kept)``; ``before`` counts every item of the label.

        Raises:
            ValueError: the plan was made without labels.
        """
        if self.labels is None:
            raise ValueError("this plan has no labels; pass labels= to find_duplicates to count per class")
        classes, before = np.unique(self.labels, return_counts=True)
        after = np.bincount(np.searchsorted(classes, self.labels[self.keep]), minlength=len(classes))
        return {int(c): (int(b), int(a)) for c, b, a in zip(classes, before, after)}

    def summary_dict(self) -> dict:
        """A JSON-able summary: counts, ratio, groups, conflicts, sweep (kept counts and pairs at
        each distance), settings, provenance."""
        sizes = self.group_sizes()
        out = {
            "n": self.n, "threshold": self.threshold, "policy": self.policy, "per_class": self.per_class,
            "n_kept": self.n_kept, "n_removed": self.n_removed,
            "n_duplicates": len(self.removed_indices),
            "n_failed": int(np.count_nonzero(self.failed)), "n_leaked": int(np.count_nonzero(self.leaked)),
            "ratio": self.ratio, "n_groups": len(sizes),
            "n_groups_with_duplicates": int(np.count_nonzero(sizes > 1)),
            "largest_group": int(sizes.max()) if len(sizes) else 0,
            "n_label_conflicts": len(self.label_conflicts),
            "sweep": None if self.sweep is None else self.sweep.tolist(),
            "sweep_pairs": None if self.sweep_pairs is None else self.sweep_pairs.tolist(),
            "settings": dict(self.settings), "provenance": dict(self.provenance),
        }
        if self.labels is not None:
            out["per_class_counts"] = {str(k): list(v) for k, v in self.per_class_counts().items()}
        return out

    def summary(self) -> str:
        """A few human-readable lines about the plan."""
        d = self.summary_dict()
        lines = [
            f"DedupPlan: {d['n']} items, threshold {d['threshold']}, policy {d['policy']}"
            + (", per class" if self.per_class else ""),
            (f"  kept {d['n_kept']} ({100 * d['n_kept'] / max(d['n'], 1):.1f}%), not kept {d['n_removed']} "
             f"({100 * d['ratio']:.1f}%): {d['n_duplicates']} near-duplicates, {d['n_leaked']} leaked, "
             f"{d['n_failed']} failed"),
            f"  {d['n_groups_with_duplicates']} groups with duplicates, largest {d['largest_group']} items",
        ]
        if self.labels is not None:
            lines.append(f"  {d['n_label_conflicts']} near-duplicate pairs across labels")
        if self.sweep is not None:
            lines.append("  kept by threshold: " + ", ".join(f"{t}:{v}" for t, v in enumerate(self.sweep.tolist())))
        if self.sweep_pairs is not None:
            lines.append("  near-duplicate pairs within threshold: "
                         + ", ".join(f"{t}:{v}" for t, v in enumerate(self.sweep_pairs_within.tolist())))
        return "\n".join(lines)

    # ------------------------------------------------------------ checking
    def check_compatible(self, n: int, fingerprint: str | None = None) -> None:
        """Raise :class:`PlanError` unless the plan was made for a dataset of ``n`` items
        (and, when both are known, the same fingerprint).

        Raises:
            PlanError: length or fingerprint mismatch, with the fix.
        """
        where = self.path or "<DedupPlan>"
        if int(n) != self.n:
            raise PlanError(where, f"plan was made for {self.n} items but the dataset has {int(n)}; "
                                   "recompute the plan for this dataset")
        mine = self.provenance.get("fingerprint")
        if fingerprint is not None:
            if mine is None:
                logger.warning("%s records no dataset fingerprint; cannot verify it matches %s", where, fingerprint)
            elif str(mine) != str(fingerprint):
                raise PlanError(where, f"plan was made for dataset fingerprint {mine!r} but this dataset has "
                                       f"{fingerprint!r}; recompute the plan for this dataset")

    # ------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike, *, extra_meta: dict | None = None,
             extra_arrays: dict[str, np.ndarray] | None = None) -> str:
        """Write the plan atomically (checksummed, no pickle). Returns the path written.

        Args:
            path: the file to write.
            extra_meta: JSON-able facts a consumer stores beside the plan (e.g. the shard
                table of a :class:`~torch_dedup.wds.ShardPlan`); :meth:`load` ignores them,
                :meth:`load_with_extras` returns them.
            extra_arrays: arrays stored beside the plan, likewise (names without ``/``).

        Raises:
            ValueError: settings, provenance or extras are not JSON-serialisable, or an
                extra array's name is not a plain name.
        """
        meta = {"plan_version": _PLAN_VERSION, "n": self.n, "threshold": self.threshold, "policy": self.policy,
                "per_class": self.per_class, "has_labels": self.labels is not None,
                "has_sweep": self.sweep is not None, "has_sweep_pairs": self.sweep_pairs is not None,
                "has_leak_pairs": self.leak_pairs is not None,
                "settings": self.settings, "provenance": self.provenance}
        arrays = {"keep": self.keep, "group": self.group, "representative": self.representative,
                  "distance_to_rep": self.distance_to_rep, "failed": self.failed, "leaked": self.leaked,
                  "label_conflicts": self.label_conflicts, "label_conflict_distances": self.label_conflict_distances,
                  "leaks": self.leaks}
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.sweep is not None:
            arrays["sweep"] = self.sweep
        if self.sweep_pairs is not None:
            arrays["sweep_pairs"] = self.sweep_pairs
        if self.leak_pairs is not None:
            arrays["leak_pairs"] = self.leak_pairs
        if extra_meta is not None:
            meta["extra"] = dict(extra_meta)
        for name, arr in (extra_arrays or {}).items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"extra array name {name!r} must be a non-empty string without '/'")
            arrays[_EXTRA + name] = np.asarray(arr)
        try:
            return str(write_store(path, _KIND, meta, arrays))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot save plan to {path}: settings/provenance must be JSON-serialisable "
                             f"({exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> DedupPlan:
        """Read and fully validate a plan written by :meth:`save` (extras, if any, are ignored).

        Raises:
            PlanError: missing, truncated, corrupt, hostile or inconsistent file (names the file).
        """
        return cls.load_with_extras(path)[0]

    @classmethod
    def load_with_extras(cls, path: str | os.PathLike) -> tuple[DedupPlan, dict, dict[str, np.ndarray]]:
        """Read a plan and the extras a consumer stored beside it (see :meth:`save`).

        Returns:
            ``(plan, extra_meta, extra_arrays)``; both extras are empty when none were saved.

        Raises:
            PlanError: missing, truncated, corrupt, hostile or inconsistent file (names the file).
        """
        meta, arrays = read_store(path, _KIND, error=PlanError)
        where = str(path)
        if meta.get("plan_version") != _PLAN_VERSION:
            raise PlanError(where, f"plan version {meta.get('plan_version')!r} is not the supported "
                                   f"{_PLAN_VERSION}; recompute the plan")
        extras = {k[len(_EXTRA):]: arrays.pop(k) for k in list(arrays) if k.startswith(_EXTRA)}
        want = {"keep", "group", "representative", "distance_to_rep", "failed", "leaked", "label_conflicts",
                "label_conflict_distances", "leaks"}
        # plans written before sweep_pairs existed have no has_sweep_pairs flag: they load with None
        for flag, name in (("has_labels", "labels"), ("has_sweep", "sweep"), ("has_sweep_pairs", "sweep_pairs"),
                           ("has_leak_pairs", "leak_pairs")):
            if meta.get(flag) is True:
                want.add(name)
        if set(arrays) != want:
            raise PlanError(where, f"arrays {sorted(arrays)} do not match the expected {sorted(want)}")
        extra_meta = meta.get("extra", {})
        if not isinstance(extra_meta, dict):
            raise PlanError(where, "malformed extra section (not a JSON object); delete it and recompute the plan")
        try:
            plan = cls(n=meta.get("n"), threshold=meta.get("threshold"), policy=meta.get("policy"),
                       per_class=meta.get("per_class"), settings=meta.get("settings"),
                       provenance=meta.get("provenance"), path=where, labels=arrays.pop("labels", None),
                       sweep=arrays.pop("sweep", None), sweep_pairs=arrays.pop("sweep_pairs", None),
                       leak_pairs=arrays.pop("leak_pairs", None), **arrays)
        except (ValueError, TypeError, IndexError) as exc:
            raise PlanError(where, f"{exc}; delete it and recompute the plan") from None
        return plan, extra_meta, extras
