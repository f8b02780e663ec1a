"""Dataset → the fit of a fitted method (``colour_dct``), made once and then read from a fit file (layer 3).

A fitted method's codes live in a space learned from the data (issue 16): the whitening and
projection of :mod:`torch_dedup.hashing.colour_dct_fit`. For train and test, every shard and
every rank to be compared in one space, the fit is made **once per dataset** and then
applied to everything compared with it:

* :func:`dataset_fit` is compute-or-load. It fits on a seeded sample of at most
  :data:`FIT_SAMPLE` items of the dataset (of its *base* for a ``Subset``/``random_split``
  view, so every view of one dataset shares one fit and one sidecar), and stores the fit
  in a ``.tdfit`` file beside the dataset's hash sidecars: kind, fit settings, the
  dataset's fingerprint, the hash environment, the arrays and their fingerprint
  (checked on every read: a stale, corrupt or edited file is a WARNING and a refit,
  never used).
* :func:`with_fit` returns the options with ``fit=`` filled in (unchanged for the other
  methods, or when the caller gave a fit). :func:`torch_dedup.planning.plan_dataset` calls it
  before hashing, so the dataset *and its* ``against=`` sets are coded with the same fit;
  the codes' sidecar is keyed on the fit's fingerprint
  (:func:`torch_dedup.dataset_hashes.sidecar_for`).

Under DDP, :func:`torch_dedup.distributed_hashing.with_fit_distributed` fits on rank 0 and
sends the fit's arrays to the other ranks, who rebuild it and check its fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from ._checks import FITTED_METHODS, method_bits
from ._store import read_store_expecting, write_store
from .errors import DedupError, StoreError
from .hashing import read_colour_dct_features
from .hashing.colour_dct import COLOUR_DCT_VERSION
from .hashing.colour_dct_fit import ColourDctFit, fit_colour_dct
from .options import DedupOptions
from .sidecar import hash_environment, sidecar_file
from .sources import ImageSource, source_of

__all__ = ["FIT_SAMPLE", "FIT_SEED", "FIT_SUFFIX", "dataset_fit", "fit_file_for", "fit_sample_indices",
           "fit_source", "load_fit", "needs_fit", "with_fit"]

logger = logging.getLogger(__name__)

#: Items of a dataset a fit is made from at most (a seeded sample above it): enough for
#: stable per-coefficient statistics, and a fixed cost however large the dataset is.
FIT_SAMPLE = 20_000
#: Seed of the sample and of the fit (fixed: the same data always gives the same fit).
FIT_SEED = 0
FIT_SUFFIX = ".tdfit"
_KIND = "colour-dct-fit"


def needs_fit(options: DedupOptions) -> bool:
    """Whether ``options`` name a fitted method and no fit was given (so one must be made)."""
    return options.method in FITTED_METHODS and options.fit is None


def fit_sample_indices(n: int, seed: int = FIT_SEED) -> np.ndarray:
    """The items a fit is made from: all of ``n`` up to :data:`FIT_SAMPLE`, else a seeded sorted sample."""
    if n <= FIT_SAMPLE:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, FIT_SAMPLE, replace=False)).astype(np.int64)


def fit_source(ds, options: DedupOptions) -> ImageSource:
    """The source a dataset's fit is made on: its base for a view (every view shares one fit), else its own."""
    source = source_of(ds, options.image_fn, fingerprint=options.fingerprint)
    base = source.base
    return base if base is not None and base.fingerprint is not None else source


def fit_file_for(source: ImageSource, options: DedupOptions) -> Path | None:
    """Where the fit of ``source`` for ``options`` is stored (``None``: not cached)."""
    if options.cache_dir is False or source.fingerprint is None:
        return None
    key = "\0".join((source.fingerprint, options.method, str(options.hash_size), COLOUR_DCT_VERSION,
                     str(FIT_SAMPLE), str(FIT_SEED)))
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=10).hexdigest()
    name = f"{options.method}{options.hash_size}-fit-{digest}{FIT_SUFFIX}"
    cache_dir = None if options.cache_dir is True else options.cache_dir
    return sidecar_file(name, source.root, cache_dir, class_folders=source.class_folders)


def _expect(source: ImageSource, options: DedupOptions) -> dict:
    return {"fingerprint": source.fingerprint, "method": options.method, "hash_size": options.hash_size,
            "count": source.n, "hash_env": hash_environment()}


def load_fit(path: Path | None, source: ImageSource, options: DedupOptions) -> ColourDctFit | None:
    """The fit stored at ``path`` when it was made for ``source`` and ``options``, else ``None``.

    A stale, corrupt or edited file logs a WARNING naming it (the caller refits and rewrites).
    """
    if path is None or not Path(path).exists():
        return None
    try:
        meta, arrays = read_store_expecting(path, _KIND, _expect(source, options))
        fit = ColourDctFit.from_arrays(arrays, meta["fit"])
    except (StoreError, KeyError, TypeError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        logger.warning("ignoring fit file %s: %s; the fit will be made again", path, reason)
        return None
    want = method_bits(options.method, options.hash_size)
    if fit.bits != want:
        logger.warning("ignoring fit file %s: it makes %d-bit codes, %d wanted", path, fit.bits, want)
        return None
    return fit


def _store_fit(path: Path | None, fit: ColourDctFit, source: ImageSource, options: DedupOptions,
               n_sample: int) -> Path | None:
    if path is None:
        return None
    arrays, fit_meta = fit.to_arrays()
    meta = {**_expect(source, options), "fit": fit_meta, "sample": int(n_sample), "source": source.description}
    try:
        return write_store(path, _KIND, meta, arrays)
    except OSError as exc:
        logger.warning("could not write fit file %s (%s); the fit will be made again next time (the same fit: "
                       "it is deterministic). Pass cache_dir= to a writable folder.", path, exc)
        return None


def _sample_items(source: ImageSource, idx: np.ndarray):
    """The sampled items as the hashing reads them: a stacked array, or paths / ``image_fn`` results."""
    if source.kind == "array":
        if len(idx) == source.n:
            return source.array_batch(0, source.n)
        return np.stack([source.array_batch(i, i + 1)[0] for i in idx.tolist()])
    if source.kind == "files":
        paths = source.paths()
        return [paths[i] for i in idx.tolist()]
    out = []
    for i in idx.tolist():
        try:
            out.append(source.item(i))
        except Exception as exc:  # noqa: BLE001 - an unreadable item is reported by the hashing that follows
            logger.debug("fit sample: item %d of %s unreadable (%s: %s)", i, source.description,
                         type(exc).__name__, exc)
    return out


def dataset_fit(ds, options: DedupOptions) -> ColourDctFit:
    """The fit of ``ds`` for ``options``'s fitted method: read from its fit file, or made and stored.

    Args:
        ds: the map-style dataset (a view is fitted on its base).
        options: the options (``method`` a fitted method; ``hash_size`` sets the code length;
            ``cache_dir``, ``refresh``, ``image_fn``, ``fingerprint`` as for hashing).

    Returns:
        The :class:`~torch_dedup.hashing.ColourDctFit`.

    Raises:
        DedupError: no sampled item could be read.
        ValueError: an item the fit cannot read (an array of a bad dtype or shape).
    """
    source = fit_source(ds, options)
    path = fit_file_for(source, options)
    fit = None if options.refresh else load_fit(path, source, options)
    if fit is not None:
        logger.debug("fit file hit: %s", path)
        return fit
    idx = fit_sample_indices(source.n)
    try:
        # the exact features of the sampled items, as the codes will read them; unreadable ones
        # are left out here and reported by the hashing that follows
        feats, valid, _ = read_colour_dct_features(_sample_items(source, idx), on_error="skip",
                                                   progress=options.progress and len(idx) >= 1000,
                                                   desc=f"{options.method} fit sample")
    except ValueError as exc:
        raise ValueError(f"fitting method={options.method!r} on {len(idx)} sampled items of "
                         f"{source.description}: {exc}") from exc
    n_read = int(np.count_nonzero(valid))
    if n_read == 0:
        raise DedupError(f"none of the {len(idx)} items sampled from {source.description} to fit "
                         f"method={options.method!r} could be read; check the data (hash it with on_error='skip' "
                         f"to list the failures), or pass fit= made on readable images")
    if n_read < len(idx):
        logger.info("fit sample of %s: %d of %d sampled items could not be read and were left out of the fit",
                    source.description, len(idx) - n_read, len(idx))
    fit = fit_colour_dct(feats[valid], bits=method_bits(options.method, options.hash_size), seed=FIT_SEED)
    written = _store_fit(path, fit, source, options, n_read)
    logger.debug("fitted %s on %d items of %s (fingerprint %s), stored in %s", options.method, n_read,
                 source.description, fit.fingerprint, written)
    return fit


def with_fit(ds, options: DedupOptions) -> DedupOptions:
    """``options`` with ``fit=`` made on ``ds`` when its method needs one and none was given (else unchanged)."""
    if not needs_fit(options):
        return options
    return options.replace(fit=dataset_fit(ds, options))
