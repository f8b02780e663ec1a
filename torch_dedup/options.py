"""``DedupOptions``: every dedup setting in one frozen object, validated once (layer 2).

The sampler, the dataset wrapper, :func:`~torch_dedup.planning.plan_dataset`, the CLI and
the webdataset functions all turn their arguments into one ``DedupOptions`` before any
work starts, so a bad value fails in the same words everywhere and before minutes of
hashing. Options are plain data: build them once and pass them around::

    opts = DedupOptions(threshold=8, per_class=True)
    plan = plan_dataset(train, options=opts)
    sampler = DedupSampler(train, plan=plan)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any, Callable

from ._checks import (
    FITTED_METHODS,
    check_bool,
    check_choice,
    check_hash_size,
    check_int,
    check_method,
    check_on_error,
    check_threshold,
    check_workers,
    method_bits,
)
from .hamming.cluster import DEFAULT_MEMORY_LIMIT
from .hashing import check_fit
from .hashing.fusion import MAX_REPEAT
from .hashing.hyperplanes import check_bits
from .hashing.views import view_count
from .plan import POLICIES

__all__ = ["DedupOptions", "option_names", "options_from"]


@dataclass(frozen=True)
class DedupOptions:
    """How to hash, compare and keep: the settings every consumer shares.

    Attributes:
        threshold: items within this many differing bits are near-duplicates; it counts
            bits of the whole hash, so scale it with ``hash_size`` (``[0, hash_size**2]``).
        method: ``"phash"`` (default), ``"dhash"``, ``"ahash"``, ``"whash"``, a composite
            code of several joined by ``+`` (``"phash+dhash"``: one decode, concatenated bits,
            the summed Hamming distance), or ``"colour_dct"``: whitened colour DCT codes,
            fitted once on the dataset (see ``fit``) and finding more near-duplicates
            (docs/hashing.md, "Which method").
        hash_size: hash side (8: 64-bit hashes, 16: 256-bit); ``colour_dct`` codes have
            ``hash_size**2`` bits too (8, 16, 24 or 32).
        embed: bring your own embedding (torch_dedup.embedding): a torch module or callable
            mapping a batch ``(B, C, H, W)`` float tensor to ``(B, D)`` embeddings, run in
            batches under ``torch.inference_mode``; its embeddings become seeded
            random-hyperplane codes of ``hash_size**2`` bits fitted on the dataset (``against=``
            sets are coded with the same fit), cached under the model's weights fingerprint.
            ``threshold`` then stands for a cosine (``cos(pi * t / bits)``; see
            ``threshold_for_cosine``). Leave ``method`` at its default. Under DDP each rank
            embeds a share and every rank gets the same codes.
        embed_transform: ``transform(pil_image) -> CHW tensor`` for ``embed`` (default: RGB
            in [0, 1]); give ``embed_fingerprint`` with it to cache the embeddings.
        embed_device: where ``embed`` runs (``"cpu"``, ``"cuda"``, ...); the model is not moved.
        embed_fingerprint: a string naming the model and transform (needed for a plain
            callable, or to cache with a custom ``embed_transform``).
        fuse: with ``embed``, fuse its codes with ``method``'s (any method, ``colour_dct``
            included, at ``hash_size``): the two codes side by side, each repeated so that
            its 1 % random-pair distance is on one scale (:mod:`torch_dedup.hashing.fusion`);
            ``threshold`` counts bits of that fused code (docs/embeddings.md, "Fusion").
        embed_bits: the embedding part's code length with ``fuse=True`` (a multiple of 64
            in [64, 1024]; default 256).
        views: ``"shift"`` gives every item the codes of 9 views of it too (8 shifts by
            1/16 of the side, a 10 % centre crop; ``"shift+rotate"``: 8 shifts by 3/32, the
            crop and 4 small rotations), with the same method: two items' distance is the
            smallest between one's own code and the other's own code or views, so copies
            shifted, cropped or turned a little are found (docs/hashing.md, "Views"). About
            10x the hashing work after the decode (under DDP each rank codes a share); no
            ``fast_decode`` or ``embed``.
        fit: for ``method="colour_dct"``, the :class:`~torch_dedup.hashing.ColourDctFit`
            to code with; ``None`` (default) fits on the dataset once and stores the fit
            beside its sidecars (``against=`` sets are always coded with the dataset's fit).
            Pass a fit to code several datasets in one space you chose.
        policy: ``"greedy"`` (no two kept items within the threshold) or ``"components"``
            (one item per connected component).
        per_class: only items with the same label can be duplicates of each other
            (never restricts leaks into ``against``).
        labels: per-item labels overriding the dataset's own.
        priority: per-item keep scores (array, or ``priority(i) -> score``); higher first.
        against: another set (dataset, hashes, ``DatasetHashes``, or a list of them);
            items near-duplicating any of its items are removed (the leakage filter).
        image_fn: ``image_fn(i) -> raw image of item i`` for datasets with no fast path.
        fingerprint: a string that changes whenever the data does (needed to cache the
            hashes of ``image_fn``/``ds[i]`` datasets).
        cache_dir: sidecar folder; ``None`` picks one beside the data; ``False``: no cache.
        on_error: ``"raise"`` or ``"skip"`` undecodable images.
        workers: decode processes for image files (``None``: automatic; 0: in-process).
        fast_decode: JPEG draft decoding (faster; changes some bits; cached separately).
        progress: progress bars on long work.
        refresh: ignore existing sidecars, hash again and rewrite them.
        sweep_max: also record the kept count at every threshold ``0..sweep_max``.
        leak_pairs: record every pair between the dataset and ``against`` in the plan
            (``plan.leak_pairs``), not only each leaked item's nearest.
        memory_limit: bytes of near-duplicate pairs the keep decision may hold at once
            (default 1 GiB); past it the decision streams (same result), and the pair lists
            that cannot stream (label conflicts, ``leak_pairs``) are refused with the
            estimate. ``None`` lifts the cap.

    Raises:
        ValueError: any field out of range (the message names it, its value and the fix).

    Example:
        >>> opts = DedupOptions(threshold=4, method="dhash")
        >>> opts.bits, opts.replace(threshold=2).threshold
        (64, 2)
    """

    threshold: int = 6
    method: str = "phash"
    hash_size: int = 8
    policy: str = "greedy"
    per_class: bool = False
    labels: Any = None
    priority: Any = None
    against: Any = None
    image_fn: Callable[[int], Any] | None = None
    fingerprint: str | None = None
    cache_dir: str | os.PathLike | None | bool = None
    on_error: str = "raise"
    workers: int | None = None
    fast_decode: bool = False
    progress: bool = True
    refresh: bool = False
    sweep_max: int | None = None
    leak_pairs: bool = False
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT
    fit: Any = None
    embed: Any = None
    embed_transform: Any = None
    embed_device: Any = "cpu"
    embed_fingerprint: str | None = None
    fuse: bool = False
    embed_bits: int | None = None
    views: str | None = None

    def __post_init__(self) -> None:
        check_method(self.method)
        check_hash_size(self.hash_size, self.method)
        check_fit(self.method, int(self.hash_size), self.fit, required=False)
        if self.embed is not None:
            if not callable(self.embed):
                raise ValueError(f"embed={self.embed!r} must be a torch module or a callable mapping a (B, C, H, W) "
                                 f"image batch to (B, D) embeddings")
            check_bool("fuse", self.fuse)
            if self.fuse:
                object.__setattr__(self, "embed_bits", check_bits(256 if self.embed_bits is None else self.embed_bits))
            else:
                if self.method != "phash" or self.fit is not None or self.fast_decode:
                    raise ValueError(f"embed= gives the codes itself, so method={self.method!r}, fit= and fast_decode= "
                                     f"do not apply; leave them at their defaults (the code length is hash_size**2 "
                                     f"bits), or pass fuse=True to fuse the embedding with {self.method!r}")
                if self.embed_bits is not None:
                    raise ValueError(f"embed_bits={self.embed_bits!r} sets the embedding part of a fused code "
                                     f"(fuse=True); without fuse the code length is hash_size**2 bits")
                if (self.hash_size * self.hash_size) % 64 or self.hash_size > 32:
                    raise ValueError(f"hash_size={self.hash_size!r} gives {self.hash_size ** 2}-bit embedding codes; "
                                     f"use hash_size 8 (64 bits), 16 (256), 24 (576) or 32 (1024)")
        elif (self.embed_transform, self.embed_device, self.embed_fingerprint, self.fuse, self.embed_bits) != (
                None, "cpu", None, False, None):
            raise ValueError("embed_transform=, embed_device=, embed_fingerprint=, fuse= and embed_bits= apply to "
                             "embed= only; pass embed=<your model> or drop them")
        if self.embed_transform is not None and not callable(self.embed_transform):
            raise ValueError(f"embed_transform={self.embed_transform!r} must be a callable pil_image -> CHW tensor")
        if self.embed_fingerprint is not None and not isinstance(self.embed_fingerprint, str):
            raise ValueError(f"embed_fingerprint={self.embed_fingerprint!r} must be a string naming the model and "
                             f"transform")
        if self.fast_decode and self.method in FITTED_METHODS:
            raise ValueError(f"fast_decode=True applies to the imagehash methods; method={self.method!r} decodes "
                             f"images fully (its fit and codes are made from exact pixels). Drop fast_decode.")
        if self.views is not None:
            view_count(self.views)  # a known view set, or the names
            if self.embed is not None or self.fast_decode:
                raise ValueError(f"views={self.views!r} codes views of the images with method={self.method!r}; it "
                                 f"does not take {'embed=' if self.embed is not None else 'fast_decode=True'} (views "
                                 f"are made from fully decoded pixels). Drop one of them.")
        bits = self.bits
        check_threshold(self.threshold, bits, self.method)
        check_choice("policy", self.policy, POLICIES)
        check_on_error(self.on_error)
        check_workers(self.workers)
        for name in ("per_class", "fast_decode", "progress", "refresh", "leak_pairs"):
            check_bool(name, getattr(self, name))
        if self.memory_limit is not None:
            check_int("memory_limit", self.memory_limit, 1 << 20, hint="bytes; None lifts the cap")
        if self.sweep_max is not None:
            check_int("sweep_max", self.sweep_max, 0, bits, hint="the largest threshold to count kept items at")
        if self.fingerprint is not None and not isinstance(self.fingerprint, str):
            raise ValueError(f"fingerprint={self.fingerprint!r} must be a string that changes whenever the data does")
        if self.image_fn is not None and not callable(self.image_fn):
            raise ValueError(f"image_fn={self.image_fn!r} must be a callable image_fn(i) -> raw image of item i")
        if not (self.cache_dir is None or isinstance(self.cache_dir, (bool, str, os.PathLike))):
            raise ValueError(f"cache_dir={self.cache_dir!r} must be a folder path, None (beside the data) or "
                             f"False (no cache)")
        # normalise numpy ints so that options compare and print as plain data
        for name in ("threshold", "hash_size"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def bits(self) -> int:
        """Bits per hash (``hash_size ** 2`` per part of ``method``).

        With ``fuse=True`` the fused code's length depends on the data (each part is
        repeated 1..4 times, :mod:`torch_dedup.hashing.fusion`): this is its upper bound,
        and the search checks the threshold against the real length.
        """
        if self.embed is not None and self.fuse:
            return MAX_REPEAT * (method_bits(self.method, self.hash_size) + self.embed_bits)
        return method_bits(self.method, self.hash_size)

    def replace(self, **changes: Any) -> DedupOptions:
        """A copy with ``changes`` applied (validated again).

        Raises:
            TypeError: a name that is not an option (the message lists the options).
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown dedup option(s) {unknown}; the options are {option_names()}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, options: DedupOptions | None = None, **changes: Any) -> DedupOptions:
        """``options`` (default: the defaults) with ``changes`` applied; the one way entry points build them.

        Raises:
            TypeError: ``options`` is not a ``DedupOptions``, or a change names no option.
            ValueError: a value out of range.
        """
        if options is None:
            options = cls()
        elif not isinstance(options, DedupOptions):
            raise TypeError(f"options={options!r} must be a torch_dedup.DedupOptions, got {type(options).__name__}")
        return options.replace(**changes) if changes else options

    def settings(self) -> dict[str, Any]:
        """The JSON-able settings that decide a plan (what a saved plan records and is compared on)."""
        out = {"threshold": self.threshold, "method": self.method, "hash_size": self.hash_size,
               "policy": self.policy, "per_class": self.per_class, "fast_decode": self.fast_decode}
        if self.fit is not None:
            out["fit"] = self.fit.fingerprint
        if self.embed is not None:
            out["method"] = f"{self.method}+embed" if self.fuse else "embed"
        if self.views is not None:
            out["views"] = self.views
        return out


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    # only plain scalars compare by value (arrays and datasets never equal a default)
    return isinstance(value, (bool, int, str)) and type(value) is type(default) and value == default


def options_from(options: DedupOptions | None, given: dict[str, Any], owner: str) -> DedupOptions:
    """The options of a consumer that takes both ``options=`` and the individual settings.

    Args:
        options: the ``options=`` argument, or ``None``.
        given: the individual settings as the caller received them (their defaults
            included); with ``options``, every one must still be at its default.
        owner: the consumer's name, for the message.

    Raises:
        TypeError: ``options`` together with a setting changed from its default (which of
            the two should win is not for the library to guess).
        ValueError: a value out of range.
    """
    if options is None:
        return DedupOptions(**given)
    defaults = DedupOptions()
    clash = sorted(k for k, v in given.items() if not _is_default(v, getattr(defaults, k)))
    if clash:
        raise TypeError(f"{owner}: pass either options= or the individual settings, not both; got options= and "
                        f"{', '.join(f'{k}={given[k]!r}' for k in clash)}. Use options.replace({clash[0]}=...) "
                        f"to change a setting of an options object.")
    return DedupOptions.of(options)


def option_names() -> list[str]:
    """The names of every :class:`DedupOptions` field, in declaration order."""
    return [f.name for f in fields(DedupOptions)]
