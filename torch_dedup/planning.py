"""Dataset → :class:`~torch_dedup.plan.DedupPlan`: the one entry every consumer plans through (layer 3).

:func:`plan_dataset` is compute-or-load and DDP-aware: it validates the options once
(:class:`~torch_dedup.options.DedupOptions`), reads the hashes from the dataset's sidecar or
computes them — once across the ranks when ``torch.distributed`` runs more than one process
(:mod:`torch_dedup.distributed_hashing`), in this process otherwise — hashes ``against=`` sets
the same way, and decides what to keep (:func:`plan_from_hashes`). Build a plan once and hand
it to as many consumers as you like::

    plan = plan_dataset(train, threshold=6, against=test)
    sampler = DedupSampler(train, plan=plan)          # no hashing, no search
    subset = DedupDataset(train, plan=plan)

:func:`resolve_plan` is what :class:`~torch_dedup.sampler.DedupSampler` and
:class:`~torch_dedup.dataset.DedupDataset` call: a given plan checked against the dataset,
or :func:`plan_dataset`; it logs the one INFO line.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import numpy as np

from ._checks import method_bits
from .dataset_fits import with_fit
from .dataset_hashes import DatasetHashes, hash_dataset_with
from .dataset_views import DatasetViews, dataset_views
from .embedding import embed_dataset, embed_dataset_distributed
from .errors import EmptyDedupError
from .fused_hashes import FusedHashes, fuse_hashes
from .hamming.cluster import DEFAULT_MEMORY_LIMIT, find_duplicates
from .hamming.views import find_duplicates_views
from .hashing.fusion import CHANCE_SHARE
from .options import DedupOptions, option_names
from .plan import DedupPlan
from .sidecar import library_versions
from .sources import labels_of, source_of

__all__ = ["ResolvedPlan", "check_labels", "class_order_bias", "plan_dataset", "plan_dataset_distributed", "plan_from_hashes",
           "resolve_plan", "warn_if_order_strips_classes"]

logger = logging.getLogger(__name__)

_DISTRIBUTED = ("auto", True, False)


def _use_distributed(distributed, group) -> bool:
    if distributed not in _DISTRIBUTED or not isinstance(distributed, (str, bool)):
        raise ValueError(f"distributed={distributed!r} must be 'auto' (a collective when torch.distributed runs "
                         f"more than one process), True or False (this process alone)")
    if distributed is False:
        return False
    from .distributed_hashing import is_distributed
    if distributed is True and not is_distributed(group):
        raise RuntimeError("distributed=True needs torch.distributed initialised with more than one process; "
                           "use distributed='auto' or False in a single process")
    return is_distributed(group)


def _hasher(distributed: bool, group):
    """The hashing function of this call: once across the group, or in this process."""
    if not distributed:
        return hash_dataset_with
    from .distributed_hashing import hash_dataset_distributed_with
    return lambda ds, options: hash_dataset_distributed_with(ds, options, group)


def _fitter(distributed: bool, group):
    """The fitting function of this call (a no-op for the unfitted methods): once for the group, or here."""
    if not distributed:
        return with_fit
    from .distributed_hashing import with_fit_distributed
    return lambda ds, options: with_fit_distributed(ds, options, group)


def _viewer(collective: bool, group):
    """The view coding of this call: a share per rank (a collective), or all in this process."""
    if not collective:
        return dataset_views
    from .distributed_hashing import dataset_views_distributed
    return lambda ds, options: dataset_views_distributed(ds, options, group)


def _together(collective: bool, group):
    """``run(fn, what)``: ``fn()`` here, or through :func:`~torch_dedup.distributed_hashing.agree` under DDP."""
    if not collective:
        return lambda fn, what: fn()
    from .distributed_hashing import agree
    return lambda fn, what: agree(fn, what, group)


def plan_dataset(ds, threshold: int | None = None, *, options: DedupOptions | None = None,
                 distributed: bool | str = "auto", group=None, **settings: Any) -> DedupPlan:
    """Hash a dataset (or read its sidecar) and decide which items to keep.

    The one public way from a dataset to a :class:`~torch_dedup.plan.DedupPlan`; the sampler,
    the dataset wrapper and the CLI all plan through it.

    Args:
        ds: a map-style dataset (torchvision MNIST family/CIFAR/SVHN, ImageFolder, Subset,
            any dataset with ``image_fn``, or one whose ``ds[i][0]`` is the raw image).
        threshold: Hamming threshold (default: ``options.threshold``, else 6).
        options: a :class:`~torch_dedup.options.DedupOptions`; keyword ``settings`` override it.
        distributed: ``"auto"`` (default): a collective when ``torch.distributed`` runs more
            than one process in ``group`` — every rank must call it, each item is hashed
            once across the ranks, and every rank gets the identical plan; ``False``: this
            process alone (e.g. planning on rank 0 only); ``True``: require the collective.
        group: the process group (``None``: the default group).
        **settings: any :class:`~torch_dedup.options.DedupOptions` field: ``method``,
            ``hash_size``, ``policy``, ``per_class``, ``labels``, ``priority``, ``against``,
            ``image_fn``, ``fingerprint``, ``cache_dir``, ``on_error``, ``workers``,
            ``fast_decode``, ``progress``, ``refresh``, ``sweep_max``, ``leak_pairs``, ``memory_limit``.

    Returns:
        The :class:`~torch_dedup.plan.DedupPlan`; its provenance records the fingerprint,
        sidecar path, method, hash size and decode mode.

    Raises:
        TypeError: an unknown setting, or a dataset that cannot be read as images.
        ValueError: a bad option, or ``per_class=True`` for a dataset without labels.
        ImageDecodeError: an undecodable image with ``on_error="raise"`` (on every rank).

    Example:
        >>> import numpy as np, torch
        >>> from torch_dedup.embedded import load_sample
        >>> class Twice(torch.utils.data.Dataset):  # every image appears twice in a row
        ...     data = np.repeat(load_sample(4)[0], 2, axis=0)
        ...     def __len__(self): return 8
        ...     def __getitem__(self, i): return self.data[i], 0
        >>> plan = plan_dataset(Twice(), threshold=0, cache_dir=False, progress=False)
        >>> plan.kept_indices.tolist()
        [0, 2, 4, 6]
    """
    if threshold is not None:
        settings["threshold"] = threshold
    opts = DedupOptions.of(options, **settings)
    return plan_with(ds, opts, distributed=distributed, group=group)


def plan_with(ds, options: DedupOptions, *, distributed: bool | str = "auto", group=None) -> DedupPlan:
    """:func:`plan_dataset` with validated options (what the consumers call).

    Raises:
        As :func:`plan_dataset`.
    """
    t0 = time.perf_counter()
    collective = _use_distributed(distributed, group)
    hasher = _hasher(collective, group)
    # Cheap checks first: a bad option should fail before minutes of hashing.
    labels = options.labels if options.labels is not None else (None if collective else labels_of(ds))
    if not collective:
        labels = check_labels(labels, len(ds), options.per_class, type(ds).__name__)
    if options.embed is not None and options.fuse:
        # both codings of this dataset (the method's fitted first), fused; the against= sets are
        # coded with this dataset's fits and fused with its fusion
        options = _fitter(collective, group)(ds, options)
        dh = _fused(ds, options, collective, group, hasher)
        hasher = partial(_fused, collective=collective, group=group, hasher=hasher, like=dh)
    elif options.embed is not None:
        # the user's model: embedded here, and the against= sets coded with this dataset's fit
        dh = _embedded(ds, options, collective, group)
        hasher = lambda other_ds, other: _embedded(other_ds, other, collective, group, fit=dh.fit)  # noqa: E731
    else:
        # A fitted method's fit is made once, on this dataset, before anything is hashed: the
        # dataset and its against= sets are then coded in the same space.
        options = _fitter(collective, group)(ds, options)
        dh = hasher(ds, options)
    views = None
    if options.views is not None:
        views = _viewer(collective, group)(ds, options)
    # Under DDP every rank runs the steps below by itself on the shared hashes; a failure on
    # one rank (a priority= that raises, out of memory) must reach every rank, never leave
    # the others waiting in their next collective.
    together = _together(collective, group)
    if collective:
        labels = together(lambda: check_labels(options.labels if options.labels is not None else dh.labels,
                                               len(dh), options.per_class, type(ds).__name__), "checking labels")
    against, against_prints = None, []
    if options.against is not None:
        against, against_prints = _hashes_of_against(options.against, options, hasher, dh)  # a collective itself
    plan = together(lambda: plan_from_hashes(dh, options.threshold, policy=options.policy,
                                             per_class=options.per_class, labels=labels, priority=options.priority,
                                             against=against, against_fingerprints=against_prints,
                                             sweep_max=options.sweep_max, leak_pairs=options.leak_pairs,
                                             memory_limit=options.memory_limit, views=views),
                    "planning")
    warn_if_order_strips_classes(plan, type(ds).__name__)
    # DEBUG, not INFO: consumers (DedupSampler, DedupDataset, the CLI) log the one INFO line.
    logger.debug("plan_dataset %s: %d -> %d items (%.1f%% kept), threshold %d, %s, %.2f s, sidecar %s",
                 type(ds).__name__, plan.n, plan.n_kept, 100.0 * plan.n_kept / max(plan.n, 1), options.threshold,
                 options.policy, time.perf_counter() - t0,
                 "hit" if dh.from_cache else ("miss" if dh.sidecar_path else "off"))
    return plan


def _embedded(ds, options: DedupOptions, collective: bool, group=None, fit=None) -> DatasetHashes:
    """``ds`` coded through ``options.embed``: in this process, or once across the group (a collective)."""
    bits = options.embed_bits if options.fuse else options.bits
    kwargs = dict(transform=options.embed_transform, device=options.embed_device, bits=bits, fit=fit,
                  image_fn=options.image_fn, fingerprint=options.fingerprint,
                  embed_fingerprint=options.embed_fingerprint, cache_dir=options.cache_dir,
                  on_error=options.on_error, progress=options.progress, refresh=options.refresh)
    if collective:
        return embed_dataset_distributed(ds, options.embed, group=group, **kwargs)
    return embed_dataset(ds, options.embed, **kwargs)


def _fused(ds, options: DedupOptions, collective: bool, group, hasher, like: FusedHashes | None = None) -> FusedHashes:
    """``ds`` coded with ``options.method`` and with ``options.embed``, fused (``like``'s fits and fusion when given)."""
    hashed = hasher(ds, options)
    embedded = _embedded(ds, options, collective, group, fit=None if like is None else like.embed_fit)
    fused = fuse_hashes(hashed, embedded, method=options.method, hash_size=options.hash_size,
                        bits=method_bits(options.method, options.hash_size),
                        fusion=None if like is None else like.fusion)
    chance = fused.fusion.chance
    if like is None and chance is not None and options.threshold >= chance:
        # the engine's own warning assumes independent bits; repeated parts are not, so measure
        logger.warning("threshold=%d on fused %s codes (%s): at least %.1f%% of random pairs of %s are within "
                       "%d, so images that are not near-duplicates get removed. Keep the threshold below %d; "
                       "sweep_max= and plan.sweep_pairs show the pairs at each threshold (docs/embeddings.md).",
                       options.threshold, options.settings()["method"], fused.fusion.key, 100 * CHANCE_SHARE,
                       type(ds).__name__, chance, chance)
    return fused


def _code_space(dh: DatasetHashes) -> tuple:
    """What makes two sets' codes comparable: method, hash size and, for fitted codes, the fit."""
    return dh.meta.get("method"), dh.meta.get("hash_size"), dh.meta.get("fit") or dh.meta.get("fit_fingerprint")


def _hashes_of_against(against, options: DedupOptions, hasher, mine: DatasetHashes) -> tuple[np.ndarray, list]:
    """``against`` (hashes, DatasetHashes, dataset, or a list of them) → valid hashes, fingerprints.

    A given ``DatasetHashes`` that records its method must be in the dataset's code space
    (``mine``'s method, hash size and fit): codes of another method or fit can have the same
    width and still mean nothing against these.
    """
    items = list(against) if isinstance(against, (list, tuple)) else [against]
    # the other sets are hashed like this one, but never filtered by this one's settings
    other = options.replace(labels=None, priority=None, against=None, image_fn=None, fingerprint=None,
                            sweep_max=None)
    parts, prints = [], []
    for item in items:
        if isinstance(item, np.ndarray):
            parts.append(item)
            prints.append(None)
            continue
        dh = item if isinstance(item, DatasetHashes) else hasher(item, other)
        # (a DatasetHashes built by hand, without provenance, is taken like a raw hash array)
        if "method" in dh.meta and _code_space(dh) != _code_space(mine):
            raise ValueError(f"against= holds hashes of (method, hash_size, fit) {_code_space(dh)}, but the dataset's "
                             f"codes are {_code_space(mine)}: codes of another method or fit are not comparable. "
                             f"Pass the other set itself (it is then coded like the dataset, with its fit)")
        parts.append(dh.hashes[dh.valid])
        prints.append(dh.fingerprint)
    widths = {p.shape[1:] for p in parts}
    if len(widths) > 1:
        raise ValueError(f"against= holds hashes of different widths {sorted(widths)}; hash everything with "
                         f"the same method and hash_size")
    if not parts:
        return np.zeros((0,) + mine.hashes.shape[1:], np.uint64), prints
    return np.concatenate(parts), prints


#: The class-order warning fires when at least this share of near-duplicate removals cross
#: labels, the flow between classes is at least this one-sided, and the per-class removal
#: rates differ by at least this many points.
_ORDER_MIN_CROSS, _ORDER_MIN_ONE_SIDED, _ORDER_MIN_SPREAD = 0.05, 0.6, 0.10


def class_order_bias(plan: DedupPlan) -> dict | None:
    """How far the keep order, rather than the data, decides which classes lose items.

    When near-duplicates cross labels and ``per_class`` is off, the item kept is the one
    first in keep order. With dataset order on class-sorted data (an ``ImageFolder``), the
    class listed first then wins every cross-label pair, and the later classes are
    stripped. Under a keep order unrelated to the labels the wins between two classes are
    about even; a one-sided flow means the order decides.

    Returns:
        ``None`` when there is nothing to say, else ``{"cross_share", "one_sided",
        "removed_pct": {label: percent}}``.
    """
    if plan.labels is None or plan.per_class:
        return None
    removed = plan.removed_indices
    if len(removed) == 0:
        return None
    labels = plan.labels
    own, theirs = labels[removed], labels[plan.representative[removed]]
    cross = own != theirs
    n_cross = int(np.count_nonzero(cross))
    if n_cross < max(20, _ORDER_MIN_CROSS * len(removed)):
        return None
    a, b = theirs[cross], own[cross]              # an item of class b removed for one of class a
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair, inverse = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)
    net = np.abs(np.bincount(inverse.reshape(-1), weights=np.where(a < b, 1.0, -1.0), minlength=len(pair)))
    one_sided = float(net.sum() / n_cross)
    counts = plan.per_class_counts()
    pct = {c: 100.0 * (before - kept) / before for c, (before, kept) in counts.items() if before}
    if one_sided < _ORDER_MIN_ONE_SIDED or (max(pct.values()) - min(pct.values())) < 100 * _ORDER_MIN_SPREAD:
        return None
    return {"cross_share": n_cross / len(removed), "one_sided": one_sided, "removed_pct": pct}


def warn_if_order_strips_classes(plan: DedupPlan, name: str = "the dataset") -> None:
    """Log a WARNING naming the fix when the keep order strips some classes far faster (see :func:`class_order_bias`)."""
    bias = class_order_bias(plan)
    if bias is None:
        return
    pct = bias["removed_pct"]
    worst = sorted(pct, key=lambda c: -pct[c])
    shown = ", ".join(f"{c}: {pct[c]:.0f}%" for c in worst[:3]) + " ... " + \
        ", ".join(f"{c}: {pct[c]:.0f}%" for c in worst[-2:])
    logger.warning(
        "%s: the keep order decides which classes lose images: %.0f%% of the near-duplicates removed have a "
        "representative of another label, and between classes the wins are %.0f%% one-sided; removed per class "
        "(label: %%) %s. Pass per_class=True (duplicates only within a class), or a keep order unrelated to the "
        "labels, e.g. priority=np.random.default_rng(0).random(len(ds)).",
        name, 100 * bias["cross_share"], 100 * bias["one_sided"], shown)


def _priority_array(priority, n: int):
    if priority is None or not callable(priority):
        return priority
    return np.asarray([float(priority(i)) for i in range(n)], dtype=np.float64)


def check_labels(labels, n: int, per_class: bool, name: str = "the dataset") -> np.ndarray | None:
    """Validate per-item labels (``None`` allowed unless ``per_class``) and return them as int64.

    Integer labels are used as they are. Labels of any other kind that compare by equality
    (strings such as ``"cat"``, or other hashable values) are replaced by codes ``0..K-1`` in
    sorted order of their values: only equality matters to dedup, so the plan is the same.

    Raises:
        ValueError: ``per_class`` without labels, labels of the wrong shape, or labels that
            are neither integers nor comparable values (e.g. non-integral floats).
    """
    if per_class and labels is None:
        raise ValueError(f"per_class=True but {name} has no targets/labels; pass labels= "
                         "(one label per item) or use per_class=False")
    if labels is None:
        return None
    if hasattr(labels, "numpy") and callable(labels.numpy):  # a tensor
        labels = labels.numpy()
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"labels has shape {arr.shape} but {name} has {n} items; pass one label per item")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"labels of {name} are floats that are not whole numbers (e.g. {arr[0]!r}); pass "
                             f"one class label per item (ints or strings), not scores or soft labels")
        return arr.astype(np.int64)
    try:
        values, codes = np.unique(arr.astype(str) if arr.dtype.kind == "O" else arr, return_inverse=True)
    except TypeError as exc:
        raise ValueError(f"labels of {name} cannot be compared ({exc}); pass one int or string label per "
                         f"item") from None
    logger.info("labels of %s are %s values; compared as codes 0..%d in sorted order (%s)", name, arr.dtype,
                len(values) - 1, ", ".join(f"{v!s}={i}" for i, v in enumerate(values[:5].tolist()))
                + (", ..." if len(values) > 5 else ""))
    return codes.reshape(-1).astype(np.int64)


def plan_from_hashes(dh: DatasetHashes, threshold: int = 6, *, policy: str = "greedy", per_class: bool = False,
                     labels=None, priority=None, against: np.ndarray | None = None,
                     against_fingerprints: Sequence[str | None] = (), sweep_max: int | None = None,
                     leak_pairs: bool = False, memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
                     views: DatasetViews | None = None) -> DedupPlan:
    """Decide which items of an already hashed dataset to keep (the step after hashing).

    :func:`plan_dataset` ends here in one process and under DDP, so the two cannot drift.

    Args:
        dh: the dataset's hashes.
        threshold, policy, per_class, priority, sweep_max, leak_pairs, memory_limit: as in
            :func:`plan_dataset`.
        labels: per-item labels; ``None`` takes ``dh.labels``.
        against: hashes of other sets (already hashed with the same method and size).
        against_fingerprints: their fingerprints, recorded in the plan's provenance.
        views: the dataset's view codes (:func:`~torch_dedup.dataset_views.dataset_views`):
            plan with :func:`~torch_dedup.hamming.views.find_duplicates_views` (an item is
            valid when its code and its views are).

    Returns:
        The :class:`~torch_dedup.plan.DedupPlan`.

    Raises:
        ValueError: bad options.
    """
    n = len(dh)
    labels = check_labels(labels if labels is not None else dh.labels, n, per_class)
    first = dh.failures[0] if dh.failures else None
    provenance = {**dh.meta, "from_cache": dh.from_cache, "n_failures": len(dh.failures),
                  "first_failure": None if first is None else [int(first[0]), str(first[1]), str(first[2])],
                  "against_fingerprints": list(against_fingerprints), "versions": library_versions()}
    settings = {"method": dh.meta["method"], "hash_size": int(dh.meta["hash_size"]), "decode": dh.meta["decode"]}
    if views is not None:
        provenance.update(views_file=None if views.path is None else str(views.path), views_from_cache=views.from_cache,
                          n_view_failures=len(views.failures))
        return find_duplicates_views(dh.hashes, views.codes, threshold, policy=policy,
                                     priority=_priority_array(priority, n), labels=labels, per_class=per_class,
                                     against=against, valid=dh.valid & views.valid, sweep_max=sweep_max,
                                     leak_pairs=leak_pairs, provenance=provenance,
                                     settings={**settings, "views_name": views.name}, memory_limit=memory_limit)
    return find_duplicates(dh.hashes, threshold, policy=policy, priority=_priority_array(priority, n),
                           labels=labels, per_class=per_class, against=against, valid=dh.valid,
                           sweep_max=sweep_max, provenance=provenance, settings=settings, leak_pairs=leak_pairs,
                           memory_limit=memory_limit)


def plan_dataset_distributed(ds, threshold: int = 6, *, group=None, **settings: Any) -> DedupPlan:
    """Deprecated: :func:`plan_dataset` is DDP-aware by itself (``distributed="auto"``).

    Kept for code written against torch_dedup 0.1; it is ``plan_dataset(ds, threshold,
    distributed=True, group=group, **settings)`` and will be removed in 0.3.
    """
    warnings.warn("plan_dataset_distributed is deprecated: plan_dataset is a collective by itself under DDP "
                  "(distributed='auto'); call plan_dataset(ds, ...) instead.", DeprecationWarning, stacklevel=2)
    return plan_dataset(ds, threshold, distributed=True, group=group, **settings)


# -- what a consumer (sampler, dataset wrapper) gets -------------------------------------------

@dataclass(frozen=True)
class ResolvedPlan:
    """A plan and how it was obtained.

    Attributes:
        plan: the :class:`~torch_dedup.plan.DedupPlan`.
        how: ``"given"``, ``"loaded"`` (from a plan file), ``"sidecar"`` (hashes read from
            a sidecar) or ``"computed"`` (hashes computed now).
        seconds: wall time spent obtaining it.
    """

    plan: DedupPlan
    how: str
    seconds: float


def _check_dataset(ds, owner: str) -> int:
    from torch.utils.data import IterableDataset

    from .hf_datasets import check_not_streaming
    check_not_streaming(ds, owner)
    if isinstance(ds, IterableDataset):
        raise TypeError(
            f"{owner} needs a map-style dataset, but {type(ds).__name__} is an IterableDataset (a stream "
            f"has no length or random access to sample from). Deduplicate streams with the webdataset "
            f"filter torch_dedup.wds, or wrap the data in a map-style Dataset.")
    try:
        n = len(ds)
    except TypeError:
        raise TypeError(
            f"{owner} needs a map-style dataset with __len__ and __getitem__; {type(ds).__name__} has no "
            f"__len__. For streams use the webdataset filter torch_dedup.wds.") from None
    if n == 0:
        raise EmptyDedupError(f"{owner}: {type(ds).__name__} is empty (len 0); there is nothing to sample.")
    return n


def _check_plan_settings(plan: DedupPlan, options: DedupOptions) -> None:
    """Refuse a given plan whose settings contradict settings the caller changed from their defaults.

    A plan decides threshold, policy and the rest by itself; silently following it while the
    caller asked for something else would be the quiet kind of wrong.
    """
    defaults = DedupOptions()
    made = {"threshold": plan.threshold, "policy": plan.policy, "per_class": plan.per_class,
            "method": plan.settings.get("method"), "hash_size": plan.settings.get("hash_size")}
    clash = [f"{k}={getattr(options, k)!r} (the plan has {v!r})" for k, v in made.items()
             if v is not None and getattr(options, k) != getattr(defaults, k) and getattr(options, k) != v
             and not (k == "method" and options.embed is not None)]
    if options.embed is not None and made["method"] is not None and options.settings()["method"] != made["method"]:
        clash.append(f"embed= with fuse={options.fuse!r} makes {options.settings()['method']!r} codes (the plan has "
                     f"{made['method']!r})")
    if options.views is not None and plan.settings.get("views_name") != options.views:
        clash.append(f"views={options.views!r} (the plan has {plan.settings.get('views_name')!r})")
    # a fused plan's "fit" names both halves; its method half's fit is "method_fit"
    plan_fit = plan.provenance.get("method_fit" if "fusion" in plan.provenance else "fit")
    if options.fit is not None and plan_fit != options.fit.fingerprint:
        clash.append(f"fit= with fingerprint {options.fit.fingerprint} (the plan was coded with {plan_fit!r})")
    if clash:
        raise ValueError(f"plan= was made with other settings than the ones given: {'; '.join(clash)}. A given plan "
                         f"is followed as it is: drop those settings, or drop plan= to plan with them.")


def _given_plan(ds, n: int, plan, options: DedupOptions) -> tuple[DedupPlan, str]:
    if isinstance(plan, (str, os.PathLike)):
        plan, how = DedupPlan.load(plan), "loaded"
    elif isinstance(plan, DedupPlan):
        how = "given"
    else:
        raise TypeError(f"plan={plan!r} must be a DedupPlan or the path of a saved one (DedupPlan.save), "
                        f"got {type(plan).__name__}")
    _check_plan_settings(plan, options)
    # Only the fingerprint is read here (cheap: a digest of arrays or of file stats), no image.
    try:
        fingerprint = source_of(ds, options.image_fn, fingerprint=options.fingerprint).fingerprint
    except (TypeError, ValueError) as exc:
        logger.debug("no fingerprint for %s (%s); checking the plan by length only", type(ds).__name__, exc)
        fingerprint = None
    plan.check_compatible(n, fingerprint)
    return plan, how


def resolve_plan(ds, options: DedupOptions, *, plan=None, owner: str = "DedupSampler",
                 distributed: bool | str = "auto") -> ResolvedPlan:
    """Obtain the plan a consumer follows: the given one (checked) or :func:`plan_dataset`'s.

    Args:
        ds: the map-style dataset.
        options: the dedup options (ignored for hashing when ``plan`` is given).
        plan: ``None`` (compute), a :class:`~torch_dedup.plan.DedupPlan`, or a saved plan's path.
        owner: the consumer's name, for messages.
        distributed: as in :func:`plan_dataset`.

    Returns:
        A :class:`ResolvedPlan`.

    Raises:
        TypeError: ``ds`` is an ``IterableDataset``, has no ``__len__``, or ``plan`` is of a bad type.
        EmptyDedupError: ``ds`` is empty, or the plan keeps nothing.
        PlanError: the plan was made for another dataset, or its file is unusable.

    Example:
        >>> resolved = resolve_plan(ds, DedupOptions(threshold=4))  # doctest: +SKIP
        >>> resolved.plan.n_kept, resolved.how  # doctest: +SKIP
    """
    if not isinstance(options, DedupOptions):
        raise TypeError(f"options={options!r} must be a DedupOptions; the option names are {option_names()}")
    n = _check_dataset(ds, owner)
    t0 = time.perf_counter()
    if plan is not None:
        plan, how = _given_plan(ds, n, plan, options)
    else:
        plan = plan_with(ds, options, distributed=distributed)
        how = "sidecar" if plan.provenance.get("from_cache") else "computed"
    seconds = time.perf_counter() - t0
    if plan.n_kept == 0:
        n_failed, n_leaked = int(np.count_nonzero(plan.failed)), int(np.count_nonzero(plan.leaked))
        first = plan.provenance.get("first_failure")
        why = ""
        if n_failed == plan.n and first:
            why = (f" Every item failed to hash, so on_error='skip' cannot help: the first, {first[1]}, failed "
                   f"with: {first[2]}. Give image_fn= that returns each item's raw image (PIL image, uint8 "
                   f"array or path).")
        raise EmptyDedupError(
            f"{owner}: the plan keeps none of the {plan.n} items of {type(ds).__name__} ("
            f"{n_failed} failed to hash, {n_leaked} leaked into against=); fix the failing images, or loosen "
            f"against= / the threshold (now {plan.threshold}).{why}")
    sidecar = {"sidecar": "sidecar hit", "computed": "sidecar miss" if plan.provenance.get("sidecar")
               else "no sidecar", "loaded": "plan file", "given": "plan given"}[how]
    logger.info("%s: %s %d -> %d items kept (%.1f%% removed), threshold %d, %s, %.2f s, %s",
                owner, type(ds).__name__, plan.n, plan.n_kept, 100.0 * plan.ratio, plan.threshold,
                plan.policy, seconds, sidecar)
    return ResolvedPlan(plan, how, seconds)
