"""What every data subcommand of ``torch-dedup`` shares: options, opening a TARGET, hashing, lists."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import HASH_METHODS as METHODS
from .._checks import check_method
from ..hashing.views import VIEW_SETS
from ..options import DedupOptions
from ..plan import POLICIES

#: Exit codes of ``torch-dedup`` (documented in docs/cli.md).
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_LEAK = 0, 1, 2, 3

TARGET_HELP = ("'sample' (the embedded Fashion-MNIST), an image folder (ImageFolder or any tree of images), "
               "a .npy/.npz uint8 image array, or NAME:ROOT[:train|:test] with NAME one of fashion-mnist, "
               "mnist, kmnist, cifar10, cifar100, svhn (webdataset shards: see 'torch-dedup wds')")


_FLAGS = ((r"on_error='skip'", "--on-error skip"), (r"on_error='raise'", "--on-error raise"),
          (r"overwrite=True", "--overwrite"), (r"sidecar_dir=", "--sidecar-dir "), (r"refresh=True", "--refresh"),
          (r"drop_failed=False", "--keep-failed"), (r"workers=", "--workers "),
          (r"plan_shards\(\.\.\., out=FILE\)", "--out FILE"), (r"cache_dir=", "--cache-dir "),
          (r"fast_decode=True", "--fast-decode"))


def cli_words(text: str, args) -> str:
    """A library message in the words of the command line: ``--on-error skip`` for
    ``on_error='skip'`` and so on; no advice to pass ``--on-error skip`` when it was given.

    Example:
        >>> cli_words("pass on_error='skip' to go on", argparse.Namespace(on_error="raise"))
        'pass --on-error skip to go on'
    """
    if getattr(args, "on_error", None) == "skip":
        text = re.sub(r",? or pass on_error='skip'[^.;]*", "", text)
    for lib, cli in _FLAGS:
        text = re.sub(r"\b" + lib, cli, text)
    return re.sub(r"  +", " ", text)


def _method_arg(text: str) -> str:
    try:
        return check_method(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("method=", "")) from None


def add_hashing_args(p: argparse.ArgumentParser, *, workers_help: str, on_error_help: str) -> None:
    """--method, --hash-size, --workers and --on-error: shared by the dataset commands and ``wds``."""
    p.add_argument("--method", type=_method_arg, default="phash", metavar="METHOD",
                   help=f"perceptual hash: {', '.join(METHODS)}, or a composite code joined by '+' such as "
                        f"phash+dhash (one decode, summed distance; hash size 8 or 16), or colour_dct (whitened "
                        f"colour DCT codes fitted on the target; use --hash-size 16 --threshold 24; see "
                        f"docs/hashing.md) (default phash)")
    p.add_argument("--hash-size", type=int, default=8, help="hash side: 8 = 64 bits (default), 16 = 256 bits")
    p.add_argument("--workers", type=int, default=None, help=workers_help)
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise", help=on_error_help)


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--json, --quiet/-q and --no-progress: shared by every command."""
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors (and --json output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_hash_options(p: argparse.ArgumentParser) -> None:
    """--method, --hash-size, --cache-dir, --workers, --on-error and the output switches."""
    add_hashing_args(p, workers_help="decode processes for image files (default: all cores)",
                     on_error_help="undecodable images: stop with exit code 2 (default) or record and skip them")
    p.add_argument("--cache-dir", default=None,
                   help="sidecar folder (default: beside the data when writable, else the user cache)")
    add_output_args(p)


def add_plan_options(p: argparse.ArgumentParser, threshold: bool = True, both: bool = False) -> None:
    """--policy, --per-class and (optionally) --threshold, on top of the hash options."""
    add_hash_options(p)
    p.add_argument("--policy", choices=POLICIES + (("both",) if both else ()), default="greedy",
                   help="greedy: no two kept items within the threshold (default); components: one per chain"
                        + ("; both: the two side by side" if both else ""))
    p.add_argument("--per-class", action="store_true", help="only items with the same label can be duplicates")
    p.add_argument("--views", choices=sorted(VIEW_SETS), default=None,
                   help="also code views of every item (shift: 8 small shifts and a centre crop; shift+rotate: "
                        "also 4 small rotations), so shifted, cropped or turned copies are found; the distance is "
                        "the smallest over them (docs/hashing.md, 'Views')")
    if threshold:
        p.add_argument("--threshold", "-t", type=int, default=6, help="Hamming threshold (default 6)")


@dataclass
class Target:
    """An opened TARGET: the dataset, how to read its raw images, its paths and class names."""

    spec: str
    ds: Any
    source: Any
    paths: list[str] | None
    class_names: list[str] | None

    @property
    def image_of(self) -> Callable[[int], Any]:
        return self.source.item


def open_cli_target(spec: str) -> Target:
    """Open a TARGET string (see :mod:`torch_dedup.cli._targets`) with its source, paths and class names."""
    from ..sources import source_of
    from ._targets import class_names_of, open_target
    ds = open_target(spec)
    src = source_of(ds)
    paths = src.paths() if src.kind == "files" else None
    return Target(spec, ds, src, paths, class_names_of(ds))


def options_from_args(args, **changes) -> DedupOptions:
    """The :class:`~torch_dedup.options.DedupOptions` of the command-line settings (validated once).

    Args:
        args: the parsed arguments of a data subcommand.
        **changes: settings that override or add to them (e.g. ``sweep_max``, ``against``).
    """
    given = {"method": args.method, "hash_size": args.hash_size, "cache_dir": args.cache_dir,
             "on_error": args.on_error, "workers": args.workers,
             "progress": not (args.no_progress or args.quiet), "refresh": getattr(args, "refresh", False)}
    if getattr(args, "threshold", None) is not None:
        given["threshold"] = args.threshold
    if getattr(args, "policy", None) not in (None, "both"):
        given["policy"] = args.policy
    if hasattr(args, "per_class"):
        given["per_class"] = args.per_class
    if getattr(args, "views", None) is not None:
        given["views"] = args.views
    return DedupOptions(**{**given, **changes})


def hash_target(args, target: Target):
    """Hash (or read the sidecar of) a target with the command-line settings."""
    from ..dataset_hashes import hash_dataset_with
    return hash_dataset_with(target.ds, options_from_args(args))


def plan_target(args, target: Target, **changes):
    """The :class:`~torch_dedup.plan.DedupPlan` of a target with the command-line settings.

    The command line is one process: it never joins a ``torch.distributed`` collective.
    """
    from ..planning import plan_with
    return plan_with(target.ds, options_from_args(args, **changes), distributed=False)


def label_name(label: int | None, class_names: list[str] | None) -> str:
    if label is None:
        return ""
    if class_names is not None and 0 <= label < len(class_names):
        return class_names[label]
    return str(label)


def write_index_list(path: str, indices: np.ndarray, target: Target, labels: np.ndarray | None = None) -> None:
    """Write item indices to ``path``: one per line (paths for file datasets), or CSV when it ends in .csv.

    The CSV has columns ``index`` and, when known, ``path`` and ``label``.
    """
    idx = np.asarray(indices, dtype=np.int64).tolist()
    paths = target.paths
    with open_out(path) as f:
        if path.endswith(".csv"):
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["index"] + (["path"] if paths else []) + (["label"] if labels is not None else []))
            for i in idx:
                w.writerow([i] + ([paths[i]] if paths else []) + ([int(labels[i])] if labels is not None else []))
        else:
            f.writelines(f"{paths[i] if paths else i}\n" for i in idx)


class _Stdout:
    def __enter__(self):
        return sys.stdout

    def __exit__(self, *exc):
        sys.stdout.flush()
        return False


def open_out(path: str):
    """``-`` is stdout; otherwise a new text file (its folder must exist)."""
    if path == "-":
        return _Stdout()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist; create it first")
    return open(path, "w", newline="", encoding="utf-8")


def emit_json(obj: dict) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))
