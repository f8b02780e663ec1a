"""Bring your own embedding: a model's image embeddings as seeded random-hyperplane codes (layer 3).

Any ``torch.nn.Module`` or callable that maps a batch of images ``(B, C, H, W)`` to a batch of
vectors becomes a near-duplicate signal that :mod:`torch_dedup.hamming` searches exactly, like
a perceptual hash:

1. :func:`embed_images` (in :mod:`torch_dedup.model_embeddings`, re-exported here) runs the
   model batched on the device the caller picks, under ``torch.inference_mode()``, with the
   module switched to ``eval()`` for the call (and every submodule's training flag restored
   afterwards, also on error).
2. :func:`fit_embeddings` and :class:`EmbeddingFit` (numpy only, in
   :mod:`torch_dedup.hashing.hyperplanes`, re-exported here) centre the unit-length embeddings
   and turn them into seeded random-hyperplane sign codes, packed like every hash.
3. :func:`embed_dataset` is compute-or-load for a dataset: the float32 embeddings are kept in a
   checksummed sidecar keyed on the data's fingerprint, the model's weights fingerprint
   (:func:`model_fingerprint`, also from :mod:`torch_dedup.model_embeddings`) and the
   transform, and the codes come back as a :class:`~torch_dedup.dataset_hashes.DatasetHashes`
   that planning uses like phash hashes.
   :func:`embed_dataset_distributed` is the same as a ``torch.distributed`` collective: each
   item embedded once in the group, one fit, the same codes on every rank.

See docs/embeddings.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ._checks import check_bool, check_int, check_on_error
from ._store import pack_strings, read_store_expecting, unpack_strings, write_store
from .dataset_hashes import DatasetHashes
from .distributed_hashing import agree
from .errors import DedupError, EmptyDedupError, ImageDecodeError, SidecarError
from .hashing.hyperplanes import (
    DEFAULT_BITS,
    EMBED_VERSION,
    EmbeddingFit,
    check_bits,
    fit_embeddings,
)
from .model_embeddings import (
    _DEFAULT_TRANSFORM,
    _array_rgb,
    _eval_mode,
    _progress_bar,
    _Runner,
    _uint8_tensor,
    embed_images,
    model_fingerprint,
)
from .sidecar import (
    SIDECAR_SUFFIX,
    hash_environment,
    library_versions,
    remove_stale_temp_files,
    sidecar_file,
)
from .sources import source_of

__all__ = ["DEFAULT_BITS", "EMBED_VERSION", "EmbeddingFit", "EmbeddingHashes", "embed_dataset",
           "embed_dataset_distributed", "embed_images", "fit_embeddings", "model_fingerprint"]

logger = logging.getLogger(__name__)

_KIND = "embedding-sidecar"


# --------------------------------------------------------------------------- datasets and sidecars


@dataclass(frozen=True, eq=False)
class EmbeddingHashes(DatasetHashes):
    """A :class:`~torch_dedup.dataset_hashes.DatasetHashes` whose ``hashes`` are embedding codes.

    Attributes (besides the base class's):
        embeddings: float32 ``(N, D)`` model outputs (rows of invalid items are 0).
        fit: the :class:`EmbeddingFit` the codes were made with (pass it as ``fit=`` to code
            another set in this set's space).
    """

    embeddings: np.ndarray | None = None
    fit: EmbeddingFit | None = None


def _cache_name(data_fp: str, model_fp: str, transform_id: str) -> str:
    key = f"{EMBED_VERSION}\0{data_fp}\0{model_fp}\0{transform_id}"
    return f"embed-{hashlib.blake2b(key.encode('utf-8'), digest_size=10).hexdigest()}{SIDECAR_SUFFIX}"


def _read_cache(path: Path, expect: dict):
    """``(embeddings, valid, failures, fit | None, meta)`` of a current, intact file; else None (WARNING if bad)."""
    if not path.exists():
        return None
    try:
        meta, arrays = read_store_expecting(path, _KIND, expect, SidecarError)
        try:
            emb, valid, index = arrays["embeddings"], arrays["valid"], arrays["failure_index"]
            n = int(meta["count"])
            if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] != n or valid.shape != (n,) \
                    or valid.dtype != np.bool_ or not np.isfinite(emb).all():
                raise ValueError("array shapes do not match the count")
            sources = unpack_strings(arrays["failure_source"], arrays["failure_source_offsets"])
            reasons = unpack_strings(arrays["failure_reason"], arrays["failure_reason_offsets"])
            if not len(index) == len(sources) == len(reasons) or (index.size and not 0 <= index.min() <= index.max() < n):
                raise ValueError("failure arrays are inconsistent")
            fit = EmbeddingFit.from_arrays(arrays, meta["fit"]) if meta.get("fit") else None
        except (KeyError, TypeError, ValueError) as exc:
            raise SidecarError(str(path), f"inconsistent contents ({exc})") from None
    except SidecarError as exc:
        logger.warning("ignoring embedding sidecar %s: %s; the embeddings will be recomputed", path, exc.reason)
        return None
    return emb, valid, tuple(zip(index.tolist(), sources, reasons)), fit, meta


def _write_cache(path: Path, emb, valid, failures, fit: EmbeddingFit | None, meta: dict) -> Path | None:
    src_blob, src_off = pack_strings([f[1] for f in failures])
    why_blob, why_off = pack_strings([f[2] for f in failures])
    arrays = {"embeddings": emb, "valid": valid, "failure_index": np.array([f[0] for f in failures], np.int64),
              "failure_source": src_blob, "failure_source_offsets": src_off, "failure_reason": why_blob,
              "failure_reason_offsets": why_off}
    fit_meta = None
    if fit is not None:
        fit_arrays, fit_meta = fit.to_arrays()
        arrays.update(fit_arrays)
    try:
        if path.parent.is_dir():
            remove_stale_temp_files(path.parent)
        return write_store(path, _KIND, {**meta, "fit": fit_meta,
                                         "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}, arrays)
    except OSError as exc:
        logger.warning("could not write embedding sidecar %s (%s); the embeddings will be recomputed next time. "
                       "Pass cache_dir= to a writable folder.", path, exc)
        return None


def _embed_range(source, runner: _Runner, start: int, stop: int, batch_size: int, on_error: str, progress: bool):
    """Embeddings of items ``start..stop-1`` of a source: ``(rows (stop-start, D) float32, valid, failures)``.

    ``failures`` hold the items' dataset indices. ``start`` should be a multiple of
    ``batch_size`` (as :func:`_batch_slice` gives): the batches are then the one-process
    run's own, so a model whose output depends on the batch's composition gives the same rows.
    """
    n = stop - start
    done: list[tuple[np.ndarray, np.ndarray]] = []
    failures: list = []
    with _eval_mode(runner.module), _progress_bar(n, progress, "embedding") as bar:
        for b0 in range(start, stop, batch_size):
            b1 = min(stop, b0 + batch_size)
            if source.kind == "array" and runner.transform is None:  # pixels already in memory: one vectorised batch
                rgb = _array_rgb(source.array_batch(b0, b1), f"{source.description} items {b0}..{b1 - 1}", True)
                batch = _uint8_tensor(rgb).permute(0, 3, 1, 2)
                done.append((np.arange(b0, b1), runner.run(batch, [f"item {i}" for i in range(b0, b1)])))
                bar.update(b1 - b0)
                continue
            paths = source.paths(b0, b1) if source.kind == "files" else None
            tensors, where = [], []
            for i in range(b0, b1):
                try:
                    pixels = runner.read(paths[i - b0] if paths is not None else source.item(i), f"item {i}")
                except Exception as exc:
                    src = exc.source if isinstance(exc, ImageDecodeError) else f"item {i}"
                    why = exc.reason if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"
                    if on_error == "raise":
                        raise ImageDecodeError(src, why, i) from exc
                    failures.append((i, src, why))
                    continue
                tensors.append(runner.tensor(pixels, f"item {i}"))  # a transform's error is no image's fault
                where.append(i)
            if tensors:
                names = [f"item {i}" for i in where]
                done.append((np.asarray(where), runner.run(runner.stack(tensors, names), names)))
            bar.update(b1 - b0)
    emb = np.zeros((n, runner.dims or 0), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    for idx, rows in done:
        emb[idx - start] = rows
        valid[idx - start] = True
    return emb, valid, sorted(failures)


def _batch_slice(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous items: whole batches of the one-process run, ``[r*B//W, (r+1)*B//W)`` of its B."""
    batches = -(-n // batch_size)
    return min(n, rank * batches // world * batch_size), min(n, (rank + 1) * batches // world * batch_size)


def _zero_codes(n: int, bits: int) -> np.ndarray:
    return np.zeros((n,) if bits == 64 else (n, bits // 64), dtype=np.uint64)


@dataclass(frozen=True)
class _Job:
    """One ``embed_dataset`` call, checked: the runner, the settings, the data and its sidecar."""

    runner: _Runner
    batch_size: int
    on_error: str
    progress: bool
    refresh: bool
    bits: int
    seed: int
    fit: EmbeddingFit | None
    model_fp: str
    transform_id: str | None
    source: Any
    dataset: str
    path: Path | None
    expect: dict


@dataclass
class _Embedded:
    """A dataset's embeddings, read from its sidecar (``cached``) or computed."""

    emb: np.ndarray
    valid: np.ndarray
    failures: list
    stored_fit: EmbeddingFit | None = None
    created: str | None = None
    cached: bool = False


def _prepare(ds, embed, *, transform, device, batch_size, bits, seed, fit, image_fn, fingerprint, embed_fingerprint,
             cache_dir, on_error, progress, refresh) -> _Job:
    """Check ``embed_dataset``'s arguments and find the data and the sidecar (nothing embedded, nothing read)."""
    runner = _Runner(embed, transform, device)
    batch_size = check_int("batch_size", batch_size, 1)
    on_error = check_on_error(on_error)
    check_bool("progress", progress)
    check_bool("refresh", refresh)
    if fit is not None and not isinstance(fit, EmbeddingFit):
        raise TypeError(f"fit={fit!r:.80} must be an EmbeddingFit (e.g. embed_dataset(train, ...).fit) or None")
    bits, seed = (fit.bits, fit.seed) if fit is not None else (check_bits(bits), check_int("seed", seed, 0, 2**63 - 1))
    if cache_dir is not None and not isinstance(cache_dir, (bool, str, os.PathLike)):
        raise ValueError(f"cache_dir={cache_dir!r} must be a folder, None (automatic) or False (no cache)")
    model_fp = model_fingerprint(embed, embed_fingerprint)
    if fit is not None and fit.model_fingerprint != model_fp:
        raise ValueError(f"fit= was made for model {fit.model_fingerprint or 'unknown'!r} but embed= is "
                         f"{model_fp!r}: codes of different models (or weights, or embed_fingerprint=) are not "
                         f"comparable. Embed both sets with the same embed= and embed_fingerprint=")
    transform_id = _DEFAULT_TRANSFORM if transform is None else ("user" if embed_fingerprint is not None else None)
    source = source_of(ds, image_fn, fingerprint=fingerprint)
    path = None
    if cache_dir is not False:
        if source.fingerprint is None:
            logger.info("%s has no cheap content fingerprint; its embeddings are not cached. Pass fingerprint='...' "
                        "(a string that changes when the data does) to cache them.", source.description)
        elif transform_id is None:
            logger.info("transform= cannot be fingerprinted, so the embeddings of %s are not cached. Pass "
                        "embed_fingerprint='...' (a string that changes whenever the transform or model does) to "
                        "cache them.", source.description)
        else:
            path = sidecar_file(_cache_name(source.fingerprint, model_fp, transform_id), source.root,
                                None if cache_dir is True else cache_dir, class_folders=source.class_folders)
    expect = {"embed_version": EMBED_VERSION, "fingerprint": source.fingerprint, "model_fingerprint": model_fp,
              "transform": transform_id, "count": source.n, "hash_env": hash_environment()}
    return _Job(runner, batch_size, on_error, progress, refresh, bits, seed, fit, model_fp, transform_id, source,
                type(ds).__name__, path, expect)


def _look_up(job: _Job) -> _Embedded | None:
    """The sidecar's embeddings when it is current and intact (and not ``refresh``), else None.

    Raises:
        ImageDecodeError: the sidecar records a failure and ``on_error="raise"``.
    """
    cached = None if job.path is None or job.refresh else _read_cache(job.path, job.expect)
    if cached is None:
        return None
    emb, valid, failures, stored_fit, stored = cached
    if failures and job.on_error == "raise":
        i, src, why = failures[0]
        raise ImageDecodeError(src, f"{why} (recorded in sidecar {job.path})", i)
    return _Embedded(emb, valid, list(failures), stored_fit, stored.get("created"), True)


def _checked(job: _Job, found: _Embedded) -> _Embedded:
    """``found`` checked against ``fit=``; with ``fit=`` and nothing embedded, zero rows of the fit's width."""
    fit = job.fit
    if fit is not None and found.valid.any() and found.emb.shape[1] != fit.dims:
        raise ValueError(f"fit= is for {fit.dims}-dimensional embeddings but embed= gives {found.emb.shape[1]}; "
                         f"pass the fit made with this model")
    if fit is not None and not found.valid.any():
        found.emb = np.zeros((job.source.n, fit.dims), dtype=np.float32)
    return found


def _code(job: _Job, found: _Embedded) -> tuple[np.ndarray, EmbeddingFit, Path | None]:
    """Fit (or reuse the stored fit), rewrite the sidecar when it changed, code: ``(codes, fit used, sidecar)``.

    Raises:
        EmptyDedupError: nothing was embedded and no ``fit=`` was given.
    """
    emb, valid = found.emb, found.valid
    # The fit of this dataset itself is stored with its embeddings (it costs a mean and a seeded draw):
    # reused when it has the settings asked for, made again (and the file rewritten) when not.
    own = found.stored_fit
    if valid.any() and (own is None or (job.fit is None and (own.bits, own.seed) != (job.bits, job.seed))):
        own = fit_embeddings(emb[valid], bits=job.bits, seed=job.seed, model_fingerprint=job.model_fp)
    use = job.fit if job.fit is not None else own
    if use is None:
        failures, source = found.failures, job.source
        first = f" The first failure, {failures[0][1]}: {failures[0][2]}." if failures else ""
        raise EmptyDedupError(f"{source.description}: no item was embedded ({source.n} items, {len(failures)} "
                              f"failed), so there is nothing to fit the hyperplanes on.{first}")
    written = job.path if found.cached else None
    if job.path is not None and (not found.cached or own is not found.stored_fit):
        written = _write_cache(job.path, emb, valid, found.failures, own,
                               {**job.expect, "dims": int(emb.shape[1]), "source": job.source.description,
                                "n_failures": len(found.failures),
                                "versions": {**library_versions(), "torch": torch.__version__}})
    codes = _zero_codes(job.source.n, job.bits)
    if valid.any():
        codes[valid] = use.codes(emb[valid])
    return codes, use, written


def _result(job: _Job, found: _Embedded, codes: np.ndarray, use: EmbeddingFit, written: Path | None) -> EmbeddingHashes:
    bits, source = job.bits, job.source
    side = math.isqrt(bits)
    meta = {"method": "embed", "hash_size": side if side * side == bits else None, "bits": bits, "decode": "exact",
            "embed_version": EMBED_VERSION, "model_fingerprint": job.model_fp, "fit_fingerprint": use.fingerprint,
            "fit_seed": use.seed, "transform": job.transform_id or "user (not fingerprinted)",
            "dims": int(found.emb.shape[1]), "fingerprint": source.fingerprint, "source": source.description,
            "dataset": job.dataset, "n": source.n, "versions": {**library_versions(), "torch": torch.__version__},
            "sidecar": None if written is None else str(written), "created": found.created}
    return EmbeddingHashes(codes, found.valid, tuple(found.failures), source.labels, source.fingerprint, meta,
                           written, found.cached, embeddings=found.emb, fit=use)


def embed_dataset(ds, embed, *, transform: Callable | None = None, device: str | torch.device = "cpu",
                  batch_size: int = 64, bits: int = DEFAULT_BITS, seed: int = 0, fit: EmbeddingFit | None = None,
                  image_fn: Callable[[int], Any] | None = None, fingerprint: str | None = None,
                  embed_fingerprint: str | None = None, cache_dir: str | os.PathLike | None | bool = None,
                  on_error: str = "raise", progress: bool = True, refresh: bool = False) -> EmbeddingHashes:
    """Embedding codes of every item of a map-style dataset, the embeddings computed once and then read from a sidecar.

    The raw images are read as hashing reads them (:func:`~torch_dedup.sources.source_of`: no
    dataset transform, wrappers looked through), embedded by :func:`embed_images`'s rules, and
    coded by a fit: ``fit=None`` fits on this dataset's valid items; ``fit=train.fit`` codes
    this dataset in another's space (how an ``against=`` test set is coded). The float32
    embeddings, and the fit made on them, are stored in a checksummed, pickle-free sidecar
    (``embed-<digest>.tdhash``, where hash sidecars go: :func:`~torch_dedup.sidecar.sidecar_file`)
    keyed on the data's fingerprint, :func:`model_fingerprint` and the transform; a stale or
    corrupt one logs a WARNING and is recomputed. A ``Subset`` is cached as its own dataset.
    Under ``torch.distributed``, :func:`embed_dataset_distributed` embeds each item once in the group.

    Args:
        ds: the dataset (as for :func:`~torch_dedup.dataset_hashes.hash_dataset`).
        embed: an ``nn.Module``, a method bound to one (``model.encode_image``), or a callable
            (then ``embed_fingerprint=`` is required).
        transform: ``None`` (RGB ``to_tensor``: [0, 1], the images' own size) or one PIL RGB
            image -> CHW tensor (the model's preprocessing). It cannot be fingerprinted: the
            embeddings are cached only when ``embed_fingerprint=`` names it.
        device, batch_size: as in :func:`embed_images`.
        bits: code length (multiple of 64 in [64, 1024]); ignored when ``fit`` is given.
        seed: the hyperplanes' seed; ignored when ``fit`` is given.
        fit: an :class:`EmbeddingFit` to apply instead of fitting (it must be of this model).
        image_fn, fingerprint: as in :func:`~torch_dedup.dataset_hashes.hash_dataset` (the data's identity).
        embed_fingerprint: a string that changes whenever the embedding does in a way the
            library cannot see: the weights of a plain callable, the ``transform``, the code
            of a module's ``forward``. Mixed into :func:`model_fingerprint`.
        cache_dir: sidecar folder; ``None`` picks one as for hashes; ``False``: no cache.
        on_error: ``"raise"`` or ``"skip"`` (recorded in ``failures``, ``valid`` False) for
            images that cannot be read; model errors always raise.
        progress: tqdm bar while embedding (1,000 items or more).
        refresh: ignore an existing sidecar, recompute and rewrite it.

    Returns:
        An :class:`EmbeddingHashes`: ``hashes`` the packed codes (``uint64`` ``(N,)`` for 64
        bits, else ``(N, bits // 64)``), ``embeddings``, ``fit``, and ``meta`` with
        ``method="embed"``, ``hash_size`` and ``bits`` (both the code length), ``decode``,
        ``model_fingerprint``, ``fit_fingerprint``, ``transform``, the data fingerprint.

    Raises:
        ValueError: a bad option, a plain callable without ``embed_fingerprint=``, a ``fit``
            of another model or dimension, or :func:`embed_images`' errors.
        EmptyDedupError: no item could be embedded, so there is nothing to fit on.
        ImageDecodeError: an unreadable image with ``on_error="raise"``.

    Example:
        >>> import torch, torchvision
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> train = torchvision.datasets.FashionMNIST("data", train=True)  # doctest: +SKIP
        >>> test = torchvision.datasets.FashionMNIST("data", train=False)  # doctest: +SKIP
        >>> tr = embed_dataset(train, net, bits=256)  # doctest: +SKIP
        >>> te = embed_dataset(test, net, fit=tr.fit)  # doctest: +SKIP
    """
    job = _prepare(ds, embed, transform=transform, device=device, batch_size=batch_size, bits=bits, seed=seed, fit=fit,
                   image_fn=image_fn, fingerprint=fingerprint, embed_fingerprint=embed_fingerprint,
                   cache_dir=cache_dir, on_error=on_error, progress=progress, refresh=refresh)
    found = _look_up(job)
    if found is None:
        found = _Embedded(*_embed_range(job.source, job.runner, 0, job.source.n, job.batch_size, job.on_error,
                                        job.progress))
    found = _checked(job, found)
    return _result(job, found, *_code(job, found))


# --------------------------------------------------------------------------- under torch.distributed


def _all_gather(obj, group) -> list:
    out: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _joined(parts: list, n: int) -> _Embedded:
    """The ranks' slices as one dataset's embeddings (a slice with nothing embedded has no width yet)."""
    widths = {p[0].shape[1] for p in parts if p[1].any()}
    if len(widths) > 1:
        raise ValueError(f"embed returned rows of different lengths on different ranks ({sorted(widths)}): images "
                         f"of different sizes reach a model without global pooling; pass transform= with a Resize "
                         f"so that every image has one size")
    dims = widths.pop() if widths else 0
    emb = np.zeros((n, dims), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    at = 0
    for rows, ok, _ in parts:
        if ok.any():
            emb[at:at + len(ok)] = rows
        valid[at:at + len(ok)] = ok
        at += len(ok)
    return _Embedded(emb, valid, sorted(f for p in parts for f in p[2]))


def embed_dataset_distributed(ds, embed, *, group=None, transform: Callable | None = None,
                              device: str | torch.device = "cpu", batch_size: int = 64, bits: int = DEFAULT_BITS,
                              seed: int = 0, fit: EmbeddingFit | None = None,
                              image_fn: Callable[[int], Any] | None = None, fingerprint: str | None = None,
                              embed_fingerprint: str | None = None,
                              cache_dir: str | os.PathLike | None | bool = None, on_error: str = "raise",
                              progress: bool = True, refresh: bool = False) -> EmbeddingHashes:
    """:func:`embed_dataset` for a process group: each item embedded once in the group, the same codes on every rank.

    A collective: every rank of ``group`` calls it with the same dataset, the same model
    (same weights: build it after ``torch.manual_seed`` or load one checkpoint) and the same
    arguments; ``device`` may differ per rank (``f"cuda:{local_rank}"``). When every rank can
    read the current sidecar, each does. Otherwise rank ``r`` embeds its contiguous share of
    the one-process run's batches (items ``[r*B//W*batch_size, (r+1)*B//W*batch_size)`` of
    ``B = ceil(N / batch_size)`` batches, so every batch is the one a single process would run),
    the embeddings are all-gathered, rank 0 fits (or applies ``fit=``), writes the sidecar and
    codes, sends the fit and the codes to every rank, and all wait at a barrier. Every rank
    gets the same result, bit for bit; with the same software, kind of device and thread count
    it equals :func:`embed_dataset`'s in one process.
    A failure on any rank (an unreadable image with ``on_error="raise"``, a model that raises)
    is raised on every rank, as :func:`~torch_dedup.distributed_hashing.agree` does.

    Args:
        ds, embed, transform, device, batch_size, bits, seed, fit, image_fn, fingerprint,
        embed_fingerprint, cache_dir, on_error, refresh: as in :func:`embed_dataset`.
        progress: tqdm bar on rank 0 while embedding.
        group: the process group (``None``: the default group).

    Returns:
        An :class:`EmbeddingHashes`, identical on every rank (``embeddings`` included: every
        rank holds all N rows).

    Raises:
        RuntimeError: ``torch.distributed`` is not initialised.
        DedupError: ranks see different data (length, fingerprint), models (weights) or ``fit=``.
        As :func:`embed_dataset`, on every rank.

    Example:
        >>> dist.init_process_group("gloo")  # doctest: +SKIP
        >>> torch.manual_seed(0); net = build_model()  # doctest: +SKIP
        >>> h = embed_dataset_distributed(train, net, device=f"cuda:{local_rank}")  # doctest: +SKIP
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("embed_dataset_distributed needs torch.distributed initialised (dist.init_process_group); "
                           "use torch_dedup.embedding.embed_dataset in one process")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    job = agree(lambda: _prepare(ds, embed, transform=transform, device=device, batch_size=batch_size, bits=bits,
                                 seed=seed, fit=fit, image_fn=image_fn, fingerprint=fingerprint,
                                 embed_fingerprint=embed_fingerprint, cache_dir=cache_dir, on_error=on_error,
                                 progress=progress, refresh=refresh),
                "checking embed_dataset's arguments", group)
    found = agree(lambda: _look_up(job), "reading the embedding sidecar", group)
    # the shares, the fit and the codes assume one dataset, one model and one set of settings
    ident = (job.source.n, job.source.fingerprint, job.model_fp, None if job.fit is None else job.fit.fingerprint,
             job.batch_size, job.bits, job.seed, job.on_error)
    seen = _all_gather((ident, found is not None), group)
    if len({s[0] for s in seen}) != 1:
        raise DedupError(f"ranks see different data, models or settings (length, data fingerprint, model "
                         f"fingerprint, fit fingerprint, batch_size, bits, seed, on_error) per rank: "
                         f"{[s[0] for s in seen]}; every rank must pass the same data, the same weights "
                         f"(torch.manual_seed before building the model, or one checkpoint) and the same arguments")
    if not all(s[1] for s in seen):
        start, stop = _batch_slice(job.source.n, job.batch_size, rank, world)
        part = agree(lambda: _embed_range(job.source, job.runner, start, stop, job.batch_size, job.on_error,
                                          job.progress and rank == 0), "embedding", group)
        found = _joined(_all_gather(part, group), job.source.n)
    found = agree(lambda: _checked(job, found), "checking the embeddings", group)
    # Rank 0 alone fits, writes and codes; the others take its fit and codes as they are, so every
    # rank holds the very same bits whatever its CPU's float rounding.
    done = agree(lambda: _code(job, found) if rank == 0 else None, "fitting and coding the embeddings", group)
    box = [None]
    if rank == 0:
        codes, use, written = done
        box = [(codes, use.to_arrays(), None if written is None else str(written))]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    dist.barrier(group=group)
    if rank == 0:
        return _result(job, found, *done)
    codes, (arrays, fit_meta), written = box[0]
    use = job.fit if job.fit is not None else EmbeddingFit.from_arrays(arrays, fit_meta)
    return _result(job, found, codes, use, None if written is None else Path(written))
