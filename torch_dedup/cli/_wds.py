"""``torch-dedup wds``: hash shards, plan across them, rewrite deduplicated shards.

:func:`register` adds the ``wds`` subcommand (with ``hash``, ``plan`` and ``rewrite``)
to the main parser's subparsers; each handler takes ``(args, out)`` and returns the exit
code, like the other commands of :mod:`torch_dedup.cli`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

from ._options import add_hashing_args, add_output_args, cli_words

__all__ = ["register"]


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", nargs="+", metavar="SHARD",
                   help="shard paths or URLs; brace patterns like 'data/shard-{000000..000099}.tar' are expanded")
    add_hashing_args(p, workers_help="processes hashing shards (default: one per core, at most one per shard; "
                                     "0, in this process, below 256 MB of local shards, where starting "
                                     "processes costs more than it saves)",
                     on_error_help="damaged shards and undecodable images: stop (default) or record and go on")
    p.add_argument("--image-exts", default="jpg;jpeg;png;webp;ppm;bmp",
                   help="suffixes holding the image, in order of preference (default jpg;jpeg;png;webp;ppm;bmp)")
    p.add_argument("--sidecar-dir", default=None,
                   help="folder for shard sidecars (default: beside local shards, user cache for remote URLs)")
    p.add_argument("--fast-decode", action="store_true", help="JPEG draft decoding (faster, some bits differ)")
    p.add_argument("--refresh", action="store_true", help="hash again even where a valid sidecar exists")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where shards are hashed: worker processes here (default) or one Ray task per shard "
                        "(needs pip install 'torch_dedup[ray]')")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --engine ray: the cluster ('auto', 'ray://head:10001'); default RAY_ADDRESS or a "
                        "new local cluster")
    add_output_args(p)



def register(subparsers) -> argparse.ArgumentParser:
    """Add ``wds hash|plan|rewrite`` to ``subparsers`` (from ``parser.add_subparsers()``).

    Returns:
        The ``wds`` parser.

    Example:
        >>> parser = argparse.ArgumentParser(prog="torch-dedup")
        >>> _ = register(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["wds", "plan", "a.tar", "--out", "p.tdplan"]).threshold
        6
    """
    wds = subparsers.add_parser("wds", help="webdataset shards: hash, plan across shards, rewrite without duplicates",
                                description="Deduplicate webdataset shards: 'hash' writes a sidecar per shard, "
                                            "'plan' decides across all shards which samples to drop, 'rewrite' "
                                            "writes new shards without them.")
    sub = wds.add_subparsers(dest="wds_command", required=True)

    p = sub.add_parser("hash", help="hash every shard without a valid sidecar (incremental, resumable)")
    _shard_args(p)
    p.set_defaults(func=_cli_errors(_cmd_hash))

    p = sub.add_parser("plan", help="hash what is missing, then decide across all shards which samples to drop")
    _shard_args(p)
    p.add_argument("--threshold", "-t", type=int, default=6, help="Hamming threshold (default 6)")
    p.add_argument("--policy", choices=("greedy", "components"), default="greedy")
    p.add_argument("--keep-failed", action="store_true", help="pass samples whose image could not be hashed")
    p.add_argument("--out", "-o", required=True, help="plan file to write (e.g. shards/dedup.tdplan)")
    p.add_argument("--drop-list", help="also write the dropped samples as 'url<TAB>key' lines to this file")
    p.add_argument("--against", nargs="+", metavar="SHARD", default=None,
                   help="shards of another set (e.g. the test set): samples within the threshold of any of its "
                        "images are dropped as leaked; hashed like SHARD (with colour_dct: in the fit of SHARD)")
    p.set_defaults(func=_cli_errors(_cmd_plan))

    p = sub.add_parser("rewrite", help="write the samples a plan keeps into new shards")
    p.add_argument("--plan", required=True, help="plan file from 'torch-dedup wds plan'")
    p.add_argument("--out", "-o", required=True, help="output folder (must not hold a source shard)")
    p.add_argument("--pattern", default="shard-%06d.tar", help="new shard names (default shard-%%06d.tar)")
    p.add_argument("--maxcount", type=int, default=100_000, help="samples per new shard at most (default 100000)")
    p.add_argument("--maxsize", type=float, default=3e9, help="bytes per new shard at most (default 3e9)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="hostile member names and damaged shards: stop (default) or record and go on")
    p.add_argument("--overwrite", action="store_true", help="allow existing shards named like --pattern in --out")
    p.add_argument("--no-sidecars", action="store_true", help="do not write sidecars for the new shards")
    add_output_args(p)
    p.set_defaults(func=_cli_errors(_cmd_rewrite))
    return wds


# library words -> command-line words, for messages that name a fix
def _cli_errors(cmd):
    """Run a ``wds`` handler; a bad input or argument becomes one line on stderr and exit code 2."""
    from ..errors import DedupError

    @functools.wraps(cmd)
    def run(args, out) -> int:
        try:
            return cmd(args, out)
        except ImportError as exc:
            return _engine_missing(args, exc)
        except (DedupError, ValueError, OSError) as exc:
            print(f"torch-dedup wds {args.wds_command}: error: {cli_words(str(exc), args)}", file=sys.stderr)
            return 2
    return run


def _warn_skipped(args, errors) -> None:
    """Name every missing or damaged shard on stderr (also with --quiet and --json: data was left out)."""
    for url, why in errors:
        print(f"torch-dedup wds {args.wds_command}: warning: shard {url} was left out or read only in part: "
              f"{cli_words(why, args)}", file=sys.stderr)


def _urls(args) -> list[str]:
    from ..wds.shard_urls import expand_shard_urls

    return [u for spec in args.shards for u in expand_shard_urls(spec)]


def _hash_kwargs(args) -> dict:
    return {"image_exts": args.image_exts, "sidecar_dir": args.sidecar_dir, "workers": args.workers,
            "on_error": args.on_error, "fast_decode": args.fast_decode, "refresh": args.refresh,
            "progress": not (args.no_progress or args.quiet), "engine": args.engine, "ray_address": args.ray_address}


def _engine_missing(args, exc: ImportError) -> int:
    print(f"torch-dedup wds {args.wds_command}: error: {exc}", file=sys.stderr)
    return 2  # usage error: the engine asked for is not installed


def _cmd_hash(args, out) -> int:
    from ..wds import hash_shards

    t0 = time.perf_counter()
    h = hash_shards(_urls(args), args.method, args.hash_size, **_hash_kwargs(args))
    _warn_skipped(args, h.errors)
    info = {"shards": len(h.urls), "hashed": len(h.hashed), "cached": len(h.cached), "samples": h.n_samples,
            "images_hashed": int(sum(int(sc.valid.sum()) for sc in h.sidecars)), "no_image": len(h.no_image),
            "failures": len(h.failures), "shard_errors": [list(e) for e in h.errors],
            "method": args.method, "hash_size": args.hash_size, "engine": args.engine,
            "fit": h.settings.get("fit"), "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        print(json.dumps(info))
        return 0
    out(f"{info['shards']} shards ({info['hashed']} hashed, {info['cached']} from sidecars): {info['samples']} "
        f"samples, {info['images_hashed']} images hashed, {info['no_image']} without an image, "
        f"{info['failures']} failed, in {info['seconds']} s")
    if info["fit"]:
        out(f"  {args.method} codes in the space of fit {info['fit']} (fitted on these shards)")
    for url, key in h.no_image[:10]:
        out(f"  no image: {url} {key}")
    for url, why in h.errors:
        out(f"  shard error: {url}: {why}")
    return 0


def _cmd_plan(args, out) -> int:
    from ..wds import plan_shards

    against = None
    if args.against:
        from ..wds.shard_urls import expand_shard_urls

        against = [u for spec in args.against for u in expand_shard_urls(spec)]
    plan = plan_shards(_urls(args), args.threshold, method=args.method, hash_size=args.hash_size,
                       policy=args.policy, drop_failed=not args.keep_failed, out=args.out, against=against,
                       **_hash_kwargs(args))
    _warn_skipped(args, plan.shard_errors)
    if args.drop_list:
        with open(args.drop_list, "w", encoding="utf-8") as f:
            for url, key in plan.dropped():
                f.write(f"{url}\t{key}\n")
    s = plan.summary
    if args.json:
        print(json.dumps({**s, "plan": plan.path}))
        return 0
    missing = len(plan.shard_errors) - sum(1 for url, _ in plan.shard_errors if url in set(plan.urls))
    out(f"{s['n']} samples in {s['n_shards']} shards" + (f" ({missing} more left out)" if missing else "") +
        f", threshold {args.threshold} ({args.policy}): dropping "
        f"{s['n_removed']} ({100 * s['ratio']:.1f}%): {s['n_duplicates']} near-duplicates, "
        + (f"{s['n_leaked']} leaked into --against, " if against else "")
        + f"{s['n_failed']} failed; {s['n_no_image']} samples without an image pass")
    if plan.settings.get("fit"):
        out(f"  {args.method} codes in the space of fit {plan.settings['fit']}"
            + (f" ({plan.plan.provenance['fit_file']})" if plan.plan.provenance.get("fit_file") else ""))
    if plan.shard_errors:
        out(f"  {len(plan.shard_errors)} shard(s) missing or damaged, left out or planned up to the damage:")
        for url, why in plan.shard_errors:
            out(f"  left out or cut: {url}: {cli_words(why, args)}")
    for g in s["largest_groups"][:5]:
        out(f"  group of {g['size']}: keeps {g['kept'][0]} {g['kept'][1]}")
    out(f"plan: {plan.path}")
    return 0


def _cmd_rewrite(args, out) -> int:
    from ..wds import rewrite_shards

    t0 = time.perf_counter()
    res = rewrite_shards(args.plan, args.out, pattern=args.pattern, maxcount=args.maxcount, maxsize=args.maxsize,
                         on_error=args.on_error, overwrite=args.overwrite, write_sidecars=not args.no_sidecars)
    info = {"shards": res.shards, "sidecars": res.sidecars, "written": res.n_written, "dropped": res.n_dropped,
            "skipped": [list(s) for s in res.skipped], "seconds": round(time.perf_counter() - t0, 3)}
    for url, key, why in res.skipped:
        print(f"torch-dedup wds rewrite: warning: {url}" + (f" sample {key}" if key else "") +
              f" not written: {cli_words(why, args)}", file=sys.stderr)
    if args.json:
        print(json.dumps(info))
        return 0
    out(f"wrote {res.n_written} samples into {len(res.shards)} shards in {args.out} ({res.n_dropped} dropped, "
        f"{len(res.skipped)} skipped) in {info['seconds']} s")
    return 0
