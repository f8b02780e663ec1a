"""``torch-dedup hash``, ``scan`` and ``sweep``: hash a dataset, summarise its duplicates, pick a threshold."""

from __future__ import annotations

import time

import numpy as np

from ._options import (
    EXIT_OK,
    add_hash_options,
    add_plan_options,
    emit_json,
    hash_target,
    label_name,
    open_cli_target,
    options_from_args,
    plan_target,
    write_index_list,
)


def register(sub) -> None:
    p = sub.add_parser("hash", help="compute (or refresh) the hash sidecar of TARGET")
    p.add_argument("target", metavar="TARGET")
    add_hash_options(p)
    p.add_argument("--refresh", action="store_true", help="recompute even when a valid sidecar exists")
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser("scan", help="find near-duplicates in TARGET and summarise them")
    p.add_argument("target", metavar="TARGET")
    add_plan_options(p)
    p.add_argument("--plan-out", metavar="FILE", help="save the DedupPlan to FILE (load it with DedupPlan.load)")
    p.add_argument("--keep-list", metavar="FILE", help="write kept indices (paths for files) to FILE; .csv for CSV")
    p.add_argument("--drop-list", metavar="FILE", help="write removed indices (paths for files) to FILE; .csv for CSV")
    p.add_argument("--top", type=int, default=5, help="largest groups and label conflicts to list (default 5)")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("sweep", help="near-duplicate pairs, kept count and ratio at every threshold 0..T "
                                     "(one search), table and plot")
    p.add_argument("target", metavar="TARGET")
    add_plan_options(p, threshold=False, both=True)
    p.add_argument("--max-threshold", "-T", type=int, default=16, help="largest threshold (default 16)")
    p.add_argument("--threshold", "-t", type=int, default=None,
                   help="mark this threshold (the one you mean to use) in the table, the JSON and the plot")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw kept %% and near-duplicate pairs against threshold (needs the plot extra)")
    p.set_defaults(func=cmd_sweep)


def cmd_hash(args, out) -> int:
    target = open_cli_target(args.target)
    t0 = time.perf_counter()
    h = hash_target(args, target)
    info = {"n": len(h.hashes), "valid": int(h.valid.sum()), "failures": len(h.failures),
            "method": args.method, "hash_size": args.hash_size, "from_cache": bool(h.from_cache),
            "sidecar": None if h.sidecar_path is None else str(h.sidecar_path),
            "fingerprint": h.fingerprint, "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        emit_json(info)
    else:
        out(f"{info['n']} items hashed ({info['valid']} valid, {info['failures']} failed) with "
            f"{args.method}/{args.hash_size} in {info['seconds']} s "
            f"({'sidecar hit' if info['from_cache'] else 'computed'}); sidecar: {info['sidecar']}")
        for i, src, why in h.failures[:5]:
            out(f"  failed #{i} {src}: {why}")
    return EXIT_OK


def cmd_scan(args, out) -> int:
    if args.top < 0:
        raise ValueError(f"--top {args.top}: must be >= 0")
    target = open_cli_target(args.target)
    plan = plan_target(args, target)
    if args.plan_out:
        plan.save(args.plan_out)
    if args.keep_list:
        write_index_list(args.keep_list, plan.kept_indices, target, plan.labels)
    if args.drop_list:
        write_index_list(args.drop_list, plan.removed_indices, target, plan.labels)
    top = plan.largest_groups(args.top)
    top = [(k, m) for k, m in top if len(m) > 1]
    names = target.class_names
    lc, lcd = plan.label_conflicts, plan.label_conflict_distances.astype(np.int64)
    closest = np.lexsort((lc[:, 1], lc[:, 0], lcd))[:args.top]  # closest first
    conflicts = [(int(i), int(j), int(d)) for (i, j), d in zip(lc[closest].tolist(), lcd[closest].tolist())]
    if args.json:
        d = plan.summary_dict()
        d["target"] = args.target
        d["class_names"] = names
        d["largest_groups"] = [{"kept": k, "size": len(m), "members": m.tolist(),
                                "paths": [target.paths[i] for i in m.tolist()] if target.paths else None}
                               for k, m in top]
        d["label_conflicts"] = [{"i": i, "j": j, "distance": dist,
                                 "label_i": int(plan.labels[i]), "label_j": int(plan.labels[j])}
                                for i, j, dist in conflicts]
        emit_json(d)
        return EXIT_OK
    out(plan.summary())
    if top:
        out("  largest groups (kept item first):")
        for k, m in top:
            shown = ", ".join(_item(i, target) for i in m[:8].tolist())
            out(f"    {len(m):>5} items: {shown}{', ...' if len(m) > 8 else ''}")
    if plan.labels is not None:
        out("  per class (before -> kept):")
        for lab, (before, after) in plan.per_class_counts().items():
            out(f"    {label_name(lab, names)[:20]:<20} {before:>7} -> {after:<7} "
                f"({100 * (before - after) / max(before, 1):.1f}% removed)")
        for i, j, dist in conflicts:
            out(f"  label conflict: {_item(i, target)} [{label_name(int(plan.labels[i]), names)}] ~ "
                f"{_item(j, target)} [{label_name(int(plan.labels[j]), names)}] at distance {dist}")
    for what, path in (("plan", args.plan_out), ("keep list", args.keep_list), ("drop list", args.drop_list)):
        if path:
            out(f"  wrote {what}: {path}")
    return EXIT_OK


def _item(i: int, target) -> str:
    return f"#{i} {target.paths[i]}" if target.paths else f"#{i}"


def cmd_sweep(args, out) -> int:
    from ..report import threshold_cosines
    bits = options_from_args(args).bits
    if not 0 <= args.max_threshold <= bits:
        raise ValueError(f"--max-threshold {args.max_threshold}: must be in [0, {bits}] for {bits}-bit hashes")
    chosen = args.threshold
    if chosen is not None and not 0 <= chosen <= args.max_threshold:
        raise ValueError(f"--threshold {chosen}: must be in [0, {args.max_threshold}] (the swept range); "
                         f"raise --max-threshold to at least {chosen} to see it")
    target = open_cli_target(args.target)
    policies = ("greedy", "components") if args.policy == "both" else (args.policy,)
    # one plan per policy, each recording kept counts and pairs at every threshold 0..T from one search
    plans = {p: plan_target(args, target, threshold=args.max_threshold, sweep_max=args.max_threshold, policy=p)
             for p in policies}
    any_plan = plans[policies[0]]
    n = any_plan.n - int(any_plan.failed.sum())
    kept = {p: plan.sweep for p, plan in plans.items()}
    pairs_at = any_plan.sweep_pairs.tolist()
    pairs_within = any_plan.sweep_pairs_within.tolist()
    method = str(any_plan.settings.get("method", args.method))
    bits = int(any_plan.settings.get("hash_bits", bits))
    cosines = threshold_cosines(any_plan, args.max_threshold)  # None unless a threshold stands for a cosine
    if args.plot:
        _plot(kept, n, pairs_within, chosen, args.plot, args.target)

    def row(t: int, k: int) -> dict:
        r = {"threshold": t, "kept": int(k), "removed_pct": round(100 * (1 - k / n), 3) if n else 0.0,
             "pairs_at": pairs_at[t], "pairs_within": pairs_within[t]}
        if cosines is not None:
            r["cosine"] = round(cosines[t], 6)
        return r

    by_policy = {p: [row(t, k) for t, k in enumerate(v.tolist())] for p, v in kept.items()}
    if args.json:
        emit_json({"n": n, "method": method, "hash_size": args.hash_size, "bits": bits, "policy": args.policy,
                   "per_class": args.per_class, "threshold": chosen, "sweep": by_policy[policies[0]],
                   "by_policy": by_policy, "plot": args.plot})
        return EXIT_OK
    out(f"{n} valid items, {method}/{args.hash_size} ({bits} bits)" + (", per class" if args.per_class else "")
        + (f"; threshold t ~ cosine cos(pi t / {bits})" if cosines is not None else ""))
    out(f"{'threshold':>9}" + (f"  {'cosine':>6}" if cosines is not None else "")
        + f"  {'pairs at d':>11}  {'pairs within t':>14}"
        + "".join(f"  {p + ' kept':>16}  {'removed':>8}" for p in policies))
    for t in range(args.max_threshold + 1):
        out(f"{t:>9}" + (f"  {cosines[t]:>6.3f}" if cosines is not None else "")
            + f"  {pairs_at[t]:>11}  {pairs_within[t]:>14}"
            + "".join(f"  {by_policy[p][t]['kept']:>16}  {by_policy[p][t]['removed_pct']:>7.2f}%" for p in policies)
            + ("  <- --threshold" if t == chosen else ""))
    if args.plot:
        out(f"wrote plot: {args.plot}")
    return EXIT_OK


def _plot(kept: dict, n: int, pairs_within: list, chosen: int | None, path: str, title: str) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("--plot needs matplotlib, which is not installed: pip install 'torch_dedup[plot]'") \
            from None
    fig = Figure(figsize=(6.5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for policy, v in kept.items():
        ax.plot(np.arange(len(v)), 100.0 * v / max(n, 1), marker="o", label=f"{policy} kept %")
    ax.set_xlabel("Hamming threshold")
    ax.set_ylabel(f"kept items (% of {n})")
    ax.set_title(f"torch-dedup sweep: {title}")
    ax.grid(True, alpha=0.3)
    # pair counts span orders of magnitude (tens at t=0, millions past the noise floor): symlog keeps 0 drawable
    ax2 = ax.twinx()
    ax2.plot(np.arange(len(pairs_within)), pairs_within, color="tab:gray", marker="s", markersize=3,
             linestyle="--", label="pairs within t")
    ax2.set_yscale("symlog", linthresh=1)
    ax2.set_ylabel("near-duplicate pairs within t")
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", alpha=0.6, label=f"--threshold {chosen}")
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left")
    fig.tight_layout()
    fig.savefig(path, format="png")
