"""``torch-dedup``: the command line.

Subcommands: ``demo`` (the README's main job), ``hash`` (compute/refresh the sidecar),
``scan`` (find duplicates, print a summary, save the plan and keep/drop lists),
``sweep`` (kept count at every threshold 0..T from one search).

Exit codes: 0 success; 2 a usage error or bad input (one clean line on stderr, no
traceback); 1 an unexpected internal error (traceback, please report it).

Layer 5: the only module besides the demo that writes to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

from .errors import DedupError
from .hashing.api import METHODS

__all__ = ["build_parser", "main"]


def _common(p: argparse.ArgumentParser, threshold: bool = True) -> None:
    p.add_argument("target", help="'sample', an image folder, a .npy/.npz array, or NAME:ROOT[:train|:test] "
                                   "(fashion-mnist, mnist, kmnist, cifar10, cifar100, svhn)")
    p.add_argument("--method", choices=METHODS, default="phash", help="perceptual hash (default phash)")
    p.add_argument("--hash-size", type=int, default=8, help="hash side: 8 = 64 bits (default), 16 = 256 bits")
    p.add_argument("--cache-dir", default=None, help="sidecar folder (default: beside the data, else the user cache)")
    p.add_argument("--workers", type=int, default=None, help="decode processes for image files (default: all cores)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="undecodable images: stop (default) or record and skip them")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (and --json output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if threshold:
        p.add_argument("--policy", choices=("greedy", "components"), default="greedy")
        p.add_argument("--per-class", action="store_true", help="only items with the same label can be duplicates")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torch-dedup", description="Near-duplicate image removal for PyTorch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="CE-Dedup on the embedded sample: sweep, train with/without dedup, plot")
    p.add_argument("--out", default="torch_dedup_demo", help="output folder (default ./torch_dedup_demo)")
    p.add_argument("--thresholds", default="6,10", help="comma-separated thresholds to train at (default 6,10)")
    p.add_argument("--max-threshold", type=int, default=16, help="sweep kept counts over 0..T (default 16)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=8000, help="embedded images to train on (default 8000)")
    p.add_argument("--n-eval", type=int, default=2000, help="embedded images held out (default 2000)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("hash", help="compute (or refresh) the hash sidecar of TARGET")
    _common(p, threshold=False)
    p.add_argument("--refresh", action="store_true", help="recompute even when a valid sidecar exists")

    p = sub.add_parser("scan", help="find near-duplicates in TARGET and summarise them")
    _common(p)
    p.add_argument("--threshold", "-t", type=int, default=6, help="Hamming threshold (default 6)")
    p.add_argument("--plan-out", help="save the DedupPlan to this file")
    p.add_argument("--keep-list", help="write kept indices (or paths) to this text/CSV file")
    p.add_argument("--drop-list", help="write removed indices (or paths) to this text/CSV file")

    p = sub.add_parser("sweep", help="kept count at every threshold 0..T (one search)")
    _common(p)
    p.add_argument("--max-threshold", "-T", type=int, default=16)
    return parser


def _dataset(args):
    from .targets import open_target
    return open_target(args.target)


def _hash(args, ds):
    from .index import hash_dataset
    return hash_dataset(ds, args.method, args.hash_size, cache_dir=args.cache_dir, on_error=args.on_error,
                        workers=args.workers, progress=not args.no_progress, refresh=getattr(args, "refresh", False))


def _write_list(path: str, indices: np.ndarray, ds) -> None:
    samples = getattr(ds, "samples", None)
    with open(path, "w") as f:
        if path.endswith(".csv"):
            f.write("index,path\n" if samples else "index\n")
        for i in indices.tolist():
            if samples and path.endswith(".csv"):
                f.write(f"{i},{samples[i][0]}\n")
            else:
                f.write(f"{samples[i][0] if samples else i}\n")


def _cmd_demo(args, out) -> int:
    from .demo import run_demo
    try:
        thresholds = tuple(int(t) for t in args.thresholds.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--thresholds {args.thresholds!r}: expected comma-separated integers like 6,10") from None
    run_demo(args.out, thresholds=thresholds, max_threshold=args.max_threshold, epochs=args.epochs, seed=args.seed,
             n_train=args.n_train, n_eval=args.n_eval, device=args.device, progress=not args.no_progress, echo=out)
    return 0


def _cmd_hash(args, out) -> int:
    ds = _dataset(args)
    t0 = time.perf_counter()
    h = _hash(args, ds)
    info = {"n": int(len(h.hashes)), "valid": int(h.valid.sum()), "failures": len(h.failures),
            "method": args.method, "hash_size": args.hash_size, "from_cache": bool(h.from_cache),
            "sidecar": None if h.sidecar_path is None else str(h.sidecar_path),
            "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        print(json.dumps(info))
    else:
        out(f"{info['n']} items hashed ({info['valid']} valid, {info['failures']} failed) with "
            f"{args.method}/{args.hash_size} in {info['seconds']} s "
            f"({'sidecar hit' if info['from_cache'] else 'computed'}); sidecar: {info['sidecar']}")
    return 0


def _cmd_scan(args, out) -> int:
    from .hamming.cluster import find_duplicates
    ds = _dataset(args)
    h = _hash(args, ds)
    plan = find_duplicates(h.hashes, args.threshold, policy=args.policy, labels=h.labels,
                           per_class=args.per_class, valid=h.valid,
                           settings={"method": args.method, "hash_size": args.hash_size},
                           provenance={"fingerprint": h.fingerprint, "target": args.target})
    if args.plan_out:
        plan.save(args.plan_out)
    if args.keep_list:
        _write_list(args.keep_list, plan.kept_indices, ds)
    if args.drop_list:
        _write_list(args.drop_list, plan.removed_indices, ds)
    if args.json:
        print(json.dumps(plan.summary_dict()))
    else:
        out(plan.summary())
    return 0


def _cmd_sweep(args, out) -> int:
    from .hamming.cluster import sweep_thresholds
    ds = _dataset(args)
    h = _hash(args, ds)
    kept = sweep_thresholds(h.hashes, args.max_threshold, policy=args.policy, labels=h.labels,
                            per_class=args.per_class, valid=h.valid)
    n = int(h.valid.sum())
    rows = [{"threshold": t, "kept": int(k), "removed_pct": round(100 * (1 - k / n), 3) if n else 0.0}
            for t, k in enumerate(kept.tolist())]
    if args.json:
        print(json.dumps({"n": n, "policy": args.policy, "sweep": rows}))
    else:
        out(f"{n} valid items, policy {args.policy}")
        out(f"{'threshold':>9}  {'kept':>9}  {'removed':>8}")
        for r in rows:
            out(f"{r['threshold']:>9}  {r['kept']:>9}  {r['removed_pct']:>7.2f}%")
    return 0


_COMMANDS = {"demo": _cmd_demo, "hash": _cmd_hash, "scan": _cmd_scan, "sweep": _cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-dedup`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet = getattr(args, "quiet", False)
    out = (lambda line: None) if quiet else print
    try:
        return _COMMANDS[args.command](args, out)
    except (DedupError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"torch-dedup {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
