"""``torch-dedup report TARGET --out DIR``: an HTML gallery of the duplicate groups and a PNG contact sheet.

The first page shows the choice of threshold: the borderline pairs (removed at ``t`` or
``t - 1``) and, for a plan computed here (or saved with a sweep), pairs and kept items
at each threshold ``0..T`` (docs/thresholds.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._options import EXIT_OK, add_plan_options, emit_json, open_cli_target, options_from_args, plan_target


def register(sub) -> None:
    p = sub.add_parser("report", help="static HTML gallery of the duplicate groups + a PNG contact sheet")
    p.add_argument("target", metavar="TARGET",
                   help="a dataset TARGET (see 'torch-dedup scan --help'), or webdataset shards: a .tar path or "
                        "brace pattern like 'shards/shard-{000000..000099}.tar' (the same gallery, samples named "
                        "shard:key)")
    add_plan_options(p)
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="report folder (created)")
    p.add_argument("--plan", metavar="FILE", help="show this saved plan (scan --plan-out) instead of computing one")
    p.add_argument("--max-groups", type=int, default=200, help="groups to show at most, largest first (default 200)")
    p.add_argument("--per-page", type=int, default=25, help="groups per HTML page (default 25)")
    p.add_argument("--max-members", type=int, default=48, help="items shown per group at most (default 48)")
    p.add_argument("--thumb-size", type=int, default=96, help="thumbnail side in pixels (default 96)")
    p.add_argument("--inline", action="store_true",
                   help="embed thumbnails in the pages as data: URIs instead of DIR/thumbs/*.png")
    p.add_argument("--sheet-groups", type=int, default=12, help="rows of the contact sheet (default 12)")
    p.add_argument("--borderline", type=int, default=24,
                   help="borderline pairs (removed at distance t or t-1) shown on the first page (default 24; 0: none)")
    p.add_argument("--max-threshold", "-T", type=int, default=None,
                   help="table of near-duplicate pairs and kept items at thresholds 0..T on the first page "
                        "(default: t + max(2, t // 2); same search; not with --plan, which shows the plan's own "
                        "sweep, nor for shards)")
    p.set_defaults(func=cmd_report)


def cmd_report(args, out) -> int:
    from ..plan import DedupPlan
    from ..report import borderline_pairs, write_contact_sheet, write_html_report
    for name in ("max_groups", "per_page", "max_members", "sheet_groups"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.borderline < 0:
        raise ValueError(f"--borderline {args.borderline}: must be >= 0 (0 shows no borderline pairs)")
    if args.max_threshold is not None and args.plan:
        raise ValueError("--max-threshold: a saved plan (--plan) shows the sweep it was saved with; drop one of them")
    if _is_shards(args.target):
        return _report_shards(args, out)
    target = open_cli_target(args.target)
    if args.plan:
        plan = DedupPlan.load(args.plan)
        plan.check_compatible(target.source.n, target.source.fingerprint)
    else:
        bits = options_from_args(args).bits
        top = args.max_threshold
        if top is None:
            top = min(bits, args.threshold + max(2, args.threshold // 2))
        elif not args.threshold <= top <= bits:
            raise ValueError(f"--max-threshold {top}: must be in [{args.threshold}, {bits}] (from the threshold "
                             f"to the {bits} bits of the hash)")
        plan = plan_target(args, target, sweep_max=top)
    title = f"torch_dedup: {args.target}"
    pages = write_html_report(plan, target.image_of, args.out, paths=target.paths, class_names=target.class_names,
                              max_groups=args.max_groups, max_members=args.max_members,
                              groups_per_page=args.per_page, thumb_size=args.thumb_size, inline=args.inline,
                              title=title, max_borderline=args.borderline)
    sheet = write_contact_sheet(plan, target.image_of, Path(args.out) / "contact_sheet.png",
                                max_groups=args.sheet_groups)
    sizes = plan.group_sizes()
    n_dup = int((sizes > 1).sum())
    edge = borderline_pairs(plan)
    info = {"n": plan.n, "n_kept": plan.n_kept, "threshold": plan.threshold, "policy": plan.policy,
            "n_groups_with_duplicates": n_dup, "groups_shown": min(n_dup, args.max_groups),
            "borderline_shown": min(len(edge), args.borderline), "borderline_total": len(edge),
            "sweep_max": None if plan.sweep is None else len(plan.sweep) - 1,
            "sweep_pairs": None if plan.sweep_pairs is None else plan.sweep_pairs.tolist(),
            "pages": [str(p) for p in pages], "contact_sheet": str(sheet)}
    if args.json:
        emit_json(info)
    else:
        out(f"{info['groups_shown']} of {n_dup} duplicate groups on {len(pages)} page(s): {pages[0]}")
        out(f"{info['borderline_shown']} of {len(edge)} borderline pairs (removed at distance "
            f"{plan.threshold}{f' or {plan.threshold - 1}' if plan.threshold else ''}) and "
            + (f"pairs per threshold 0..{info['sweep_max']}" if plan.sweep is not None else "no sweep table")
            + " on the first page")
        out(f"contact sheet: {sheet}")
    return EXIT_OK


def _is_shards(spec: str) -> bool:
    """Whether TARGET names webdataset shards (tar files), not a dataset."""
    return spec.lower().split("::")[0].endswith((".tar", ".tgz", ".tar.gz"))


def _report_shards(args, out) -> int:
    """The same gallery for webdataset shards: the shard plan's DedupPlan, images read from the shards."""
    from ..report import borderline_pairs, duplicate_groups, write_contact_sheet, write_html_report
    from ..wds import ShardPlan, plan_shards
    from ..wds.shard_images import SampleNames, ShardImages
    from ..wds.shard_urls import expand_shard_urls, shard_id

    if args.per_class:
        raise ValueError("--per-class: webdataset shards carry no labels torch_dedup reads; drop --per-class")
    if args.max_threshold is not None:
        raise ValueError("--max-threshold: the per-threshold table is not made for webdataset shards yet; use "
                         "'torch-dedup wds plan' and 'torch-dedup sweep' on a dataset, or drop --max-threshold")
    urls = expand_shard_urls(args.target)
    if args.plan:
        splan = ShardPlan.load(args.plan)
        if [shard_id(u) for u in urls] != [sh["id"] for sh in splan.shards]:
            raise ValueError(f"--plan {args.plan} was made for {len(splan.shards)} other shard(s) (first: "
                             f"{splan.urls[0] if splan.urls else None!r}), not {args.target!r}; pass the shards "
                             "the plan was made for, or make the plan with 'torch-dedup wds plan'")
    else:
        splan = plan_shards(urls, args.threshold, method=args.method, hash_size=args.hash_size, policy=args.policy,
                            sidecar_dir=args.cache_dir, workers=args.workers, on_error=args.on_error,
                            progress=not (args.no_progress or args.quiet), refresh=getattr(args, "refresh", False))
    for url, why in splan.shard_errors:
        print(f"torch-dedup report: warning: shard {url} was left out or read only in part: {why}", file=sys.stderr)
    plan = splan.plan
    wanted = {int(i) for g in duplicate_groups(plan, args.max_groups, args.max_members) for i in g.members}
    wanted |= {int(i) for g in duplicate_groups(plan, args.sheet_groups, 10) for i in g.members}
    wanted |= {int(i) for p in borderline_pairs(plan, args.borderline) for i in (p.kept, p.removed)}
    image_of = ShardImages(splan, wanted)
    pages = write_html_report(plan, image_of, args.out, paths=SampleNames(splan), max_groups=args.max_groups,
                              max_members=args.max_members, groups_per_page=args.per_page,
                              thumb_size=args.thumb_size, inline=args.inline, title=f"torch_dedup: {args.target}",
                              max_borderline=args.borderline)
    sheet = write_contact_sheet(plan, image_of, Path(args.out) / "contact_sheet.png", max_groups=args.sheet_groups)
    n_dup = int((plan.group_sizes() > 1).sum())
    info = {"n": splan.n, "n_kept": splan.n_kept, "n_shards": len(splan.shards), "threshold": plan.threshold,
            "policy": plan.policy, "n_groups_with_duplicates": n_dup, "groups_shown": min(n_dup, args.max_groups),
            "pages": [str(p) for p in pages], "contact_sheet": str(sheet),
            "shard_errors": [list(e) for e in splan.shard_errors]}
    if args.json:
        emit_json(info)
    else:
        out(f"{info['groups_shown']} of {n_dup} duplicate groups over {len(splan.shards)} shards on "
            f"{len(pages)} page(s): {pages[0]}")
        out(f"contact sheet: {sheet}")
    return EXIT_OK
