#!/usr/bin/env python
"""CE-Dedup trade-off sweep: accuracy vs images removed, dedup vs a random subset of the same size.

For every (policy, threshold) in the grid and every seed, trains the model of
``train_classifier.py`` on the deduplicated training set, on a random subset of the same
size, and (once per seed) on the full set, and appends one CSV row per run. The kept
count of every threshold comes from ONE hash pass and one search per policy
(``hash_dataset`` + ``sweep_thresholds``), written to ``NAME_sweep.csv`` before any
training starts. Rows already in the CSV are skipped, so an interrupted sweep resumes
where it stopped. At the end it writes the plot (accuracy vs removed %, accuracy vs
training time, mean ± sd over seeds) and prints Markdown tables of the results.

Variants beyond the paper: ``--per-class-threshold`` (only same-label images are
duplicates), ``--priority-thresholds`` (keep the highest-contrast image of a group),
``--central-thresholds`` (keep the image with the most near-duplicates first: a medoid of
its group) and ``--shuffled-thresholds`` (a fixed random keep order instead of dataset
order, which on a class-sorted ImageFolder favours the first classes). Training uses
``train_classifier.py --preload`` (images decoded once, batches augmented as tensors)
unless ``--no-preload``.

Examples::

    # Fashion-MNIST (Debian files), 2 seeds, 2 epochs per run:
    python examples/ce_dedup_sweep.py --dataset fashion-mnist --root /tmp/fmnist \\
        --fashion-mnist-from-debian --thresholds 0,2,4,6,8,10,12 --seeds 0,1 --epochs 2 \\
        --out-dir results --name fashion_mnist

    # CIFAR-10 JPEG trees: kept counts and train/test leakage only (no training):
    python examples/ce_dedup_sweep.py --dataset imagefolder --root /tmp/cifar10 --no-train \\
        --leak-thresholds 0,2,4,6,8,10 --out-dir results --name cifar10

    # CIFAR-10 JPEG trees, the grid of docs/results.md (3 epochs, 2 seeds, dedup + random):
    python examples/ce_dedup_sweep.py --dataset imagefolder --root /tmp/cifar10 \\
        --thresholds 0,8,10,12,14,16 --seeds 0,1 --epochs 3 --per-class-threshold 14 \\
        --central-thresholds 12,14 --shuffled-thresholds 14,16 --random-min-removed 3 \\
        --out-dir results --name cifar10

    # Tables and plot again from an existing CSV:
    python examples/ce_dedup_sweep.py --report-only --out-dir results --name fashion_mnist
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_classifier as tc  # the example next to this one

from torch_dedup.hamming.cluster import find_duplicates, sweep_thresholds, sweep_thresholds_by_class
from torch_dedup.hamming.search import hamming_pairs
from torch_dedup.dataset_hashes import hash_dataset

log = logging.getLogger("ce_dedup_sweep")

RUN_FIELDS = ["dataset", "subset", "policy", "per_class", "priority", "threshold", "kept", "n_train", "ratio",
              "removed_pct", "seed", "epochs", "accuracy", "train_seconds", "cpu_seconds", "prep_seconds"]
SWEEP_FIELDS = ["dataset", "policy", "per_class", "priority", "threshold", "kept", "n_train", "removed_pct"]
CLASS_FIELDS = ["dataset", "policy", "threshold", "label", "kept", "n_label"]
LEAK_FIELDS = ["dataset", "threshold", "n_test", "n_train", "test_with_near_dup", "test_pct",
               "test_with_same_label_near_dup", "same_label_pct", "train_items_involved"]


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints (e.g. 0,4,8)") from None


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# ----------------------------------------------------------------------------- CSV helpers
def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict, fields: list[str]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in fields})


def write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in fields} for r in rows)
    tmp.replace(path)


def run_key(row: dict) -> tuple:
    """Identity of a run for resuming; random subsets are shared by every config of the same size."""
    base = (row["dataset"], str(row["n_train"]), str(row["seed"]), str(row["epochs"]), row["subset"])
    if row["subset"] == "dedup":
        return base + (row["policy"], str(row["per_class"]), row["priority"], str(row["threshold"]))
    if row["subset"] == "random":
        return base + (str(row["kept"]),)
    return base


# ----------------------------------------------------------------------------- the grid
def configs(args) -> list[dict]:
    """Every dedup configuration to train: policy x threshold, plus per_class and priority variants."""
    out = []
    for policy in args.policies:
        for t in args.thresholds:
            if policy == "components" and t == 0 and "greedy" in args.policies:
                continue  # at t=0 near-duplicate means identical: both policies keep the same items
            out.append({"policy": policy, "per_class": False, "priority": "index", "threshold": t})
    if args.per_class_threshold is not None:
        for policy in args.policies:
            out.append({"policy": policy, "per_class": True, "priority": "index",
                        "threshold": args.per_class_threshold})
    for t in args.priority_thresholds:
        out.append({"policy": "greedy", "per_class": False, "priority": "contrast", "threshold": t})
    for t in args.central_thresholds:
        out.append({"policy": "greedy", "per_class": False, "priority": "central", "threshold": t})
    for t in args.shuffled_thresholds:
        out.append({"policy": "greedy", "per_class": False, "priority": "shuffled", "threshold": t})
    return out


def kept_counts(args, train_ds, cfgs: list[dict], sweep_csv: Path) -> dict:
    """Kept count of every config from one hash pass and one search per (policy, per_class, priority)."""
    t0 = time.perf_counter()
    h = hash_dataset(train_ds, args.method, cache_dir=args.cache_dir, progress=False)
    log.info("hashed %d training images (%s) in %.1f s", len(h), "sidecar hit" if h.from_cache else "computed",
             time.perf_counter() - t0)
    variants = {(c["policy"], c["per_class"], c["priority"]) for c in cfgs if c["priority"] != "central"}
    variants |= {(p, False, "index") for p in ("greedy", "components")}
    max_t = max([c["threshold"] for c in cfgs] + [args.sweep_max])
    n = len(h)
    counts, rows = {}, []
    for policy, per_class, priority in sorted(variants):
        prio = tc.keep_priority(priority, train_ds, 0, args.method, args.cache_dir)  # not "central": per t
        t0 = time.perf_counter()
        sweep = sweep_thresholds(h.hashes, max_t, policy=policy, per_class=per_class, priority=prio,
                                 labels=h.labels if per_class else None, valid=h.valid)
        log.info("sweep %s per_class=%s priority=%s: t=0..%d from one search in %.2f s",
                 policy, per_class, priority, max_t, time.perf_counter() - t0)
        for t, k in enumerate(sweep.tolist()):
            counts[(policy, per_class, priority, t)] = k
            rows.append({"dataset": args.dataset, "policy": policy, "per_class": per_class, "priority": priority,
                         "threshold": t, "kept": k, "n_train": n, "removed_pct": round(100 * (1 - k / n), 3)})
    for t in sorted({c["threshold"] for c in cfgs if c["priority"] == "central"}):
        # the "central" priority (number of near-duplicates within t) depends on t: one search per t
        k = int(find_duplicates(h.hashes, t, priority=tc.central_scores(train_ds, t, args.method, args.cache_dir),
                                valid=h.valid).keep.sum())
        counts[("greedy", False, "central", t)] = k
        rows.append({"dataset": args.dataset, "policy": "greedy", "per_class": False, "priority": "central",
                     "threshold": t, "kept": k, "n_train": n, "removed_pct": round(100 * (1 - k / n), 3)})
    write_rows(sweep_csv, rows, SWEEP_FIELDS)
    if h.labels is not None:  # which classes lose the most: dedup is not class-blind
        class_rows = []
        for policy in ("greedy", "components"):
            by_class = sweep_thresholds_by_class(h.hashes, max_t, labels=h.labels, policy=policy, valid=h.valid)
            for t in range(max_t + 1):
                for c, k in zip(by_class.classes.tolist(), by_class.kept[t].tolist()):
                    class_rows.append({"dataset": args.dataset, "policy": policy, "threshold": t, "label": c,
                                       "kept": k, "n_label": int(np.sum(h.labels == c))})
        write_rows(sweep_csv.with_name(sweep_csv.name.replace("_sweep", "_class_sweep")), class_rows,
                   CLASS_FIELDS)
    return counts


def leakage(args, train_ds, test_ds, leak_csv: Path) -> list[dict]:
    """Test items with a near-duplicate in the training set, at each threshold (one query search)."""
    ht = hash_dataset(train_ds, args.method, cache_dir=args.cache_dir, progress=False)
    hq = hash_dataset(test_ds, args.method, cache_dir=args.cache_dir, progress=False)
    max_t = max(args.leak_thresholds)
    t0 = time.perf_counter()
    res = hamming_pairs(hq.hashes[hq.valid], max_t, other=ht.hashes[ht.valid])
    log.info("test-vs-train search at t=%d: %d pairs in %.2f s", max_t, len(res.distances), time.perf_counter() - t0)
    qi = np.flatnonzero(hq.valid)[res.pairs[:, 0]]
    ti = np.flatnonzero(ht.valid)[res.pairs[:, 1]]
    same = (hq.labels[qi] == ht.labels[ti]) if hq.labels is not None and ht.labels is not None else None
    rows = []
    for t in sorted(args.leak_thresholds):
        m = res.distances <= t
        row = {"dataset": args.dataset, "threshold": t, "n_test": len(hq), "n_train": len(ht),
               "test_with_near_dup": len(np.unique(qi[m])), "train_items_involved": len(np.unique(ti[m]))}
        row["test_pct"] = round(100 * row["test_with_near_dup"] / len(hq), 3)
        if same is not None:
            row["test_with_same_label_near_dup"] = len(np.unique(qi[m & same]))
            row["same_label_pct"] = round(100 * row["test_with_same_label_near_dup"] / len(hq), 3)
        rows.append(row)
        log.info("t=%d: %d of %d test images (%.2f%%) have a near-duplicate in train", t,
                 row["test_with_near_dup"], len(hq), row["test_pct"])
    write_rows(leak_csv, rows, LEAK_FIELDS)
    return rows


def train_once(args, data, seed: int, *, threshold=None, policy="greedy", per_class=False, priority="index",
               subset_random=None) -> dict:
    argv = ["--dataset", args.dataset, "--root", args.root, "--epochs", str(args.epochs), "--seed", str(seed),
            "--method", args.method, "--policy", policy, "--priority", priority, "--batch-size",
            str(args.batch_size), "--lr", str(args.lr), "--device", args.device, "--workers", str(args.workers),
            "--threads", str(args.threads)] + ([] if args.no_preload else ["--preload"])
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    if threshold is not None:
        argv += ["--threshold", str(threshold)]
    if per_class:
        argv += ["--per-class"]
    if subset_random is not None:
        argv += ["--subset-random", str(subset_random)]
    return tc.train(tc.parse_args(argv), data=data)


def run_grid(args, data, cfgs, counts, runs_csv: Path) -> None:
    train_ds = data[0]
    n = len(train_ds)
    done = {run_key(r) for r in read_rows(runs_csv)}
    base = {"dataset": args.dataset, "n_train": n, "epochs": args.epochs}

    def run(row: dict, **kw) -> None:
        row = {**base, **row}
        if run_key({k: str(v) for k, v in row.items()}) in done:
            log.info("skip (already in CSV): %s",
                     {k: row[k] for k in ("subset", "policy", "threshold", "kept", "seed")})
            return
        res = train_once(args, data, row["seed"], **kw)
        if row["subset"] == "dedup" and res["kept"] != row["kept"]:
            log.warning("sampler kept %d but the sweep said %d (%s)", res["kept"], row["kept"], row)
        row.update(kept=res["kept"], ratio=round(res["kept"] / n, 5),
                   removed_pct=round(100 * (1 - res["kept"] / n), 3), accuracy=round(res["accuracy"], 5),
                   train_seconds=round(res["train_seconds"], 2), cpu_seconds=round(res["cpu_seconds"], 2),
                   prep_seconds=round(res["prep_seconds"], 2))
        append_row(runs_csv, row, RUN_FIELDS)
        done.add(run_key({k: str(v) for k, v in row.items()}))
        log.info("row: %s", row)

    # seeds outermost: an interrupted sweep still has complete curves for the first seeds
    for seed in args.seeds:
        if not args.no_full:
            run({"subset": "full", "policy": "", "per_class": "", "priority": "", "threshold": "", "kept": n,
                 "seed": seed})
        for c in cfgs:
            kept = counts[(c["policy"], c["per_class"], c["priority"], c["threshold"])]
            if kept == 0:
                log.warning("skip %s: nothing kept", c)
                continue
            run({"subset": "dedup", **c, "kept": kept, "seed": seed}, threshold=c["threshold"],
                policy=c["policy"], per_class=c["per_class"], priority=c["priority"])
            if not args.no_random and kept < n and 100 * (1 - kept / n) >= args.random_min_removed:
                run({"subset": "random", **c, "kept": kept, "seed": seed}, subset_random=kept)


# ----------------------------------------------------------------------------- summary
def _stats(vals: list[float]) -> tuple[float, float, int]:
    a = np.asarray(vals, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan"), len(a)


def _pm(m: float, s: float, scale: float = 100.0, digits: int = 2) -> str:
    return f"{scale * m:.{digits}f}" + ("" if math.isnan(s) else f" ± {scale * s:.{digits}f}")


def summarize(rows: list[dict]) -> dict:
    """Group runs: full, each dedup config, and random subsets by size (mean/sd over seeds)."""
    full, dedup, rand = [], defaultdict(list), defaultdict(list)
    for r in rows:
        acc, sec = float(r["accuracy"]), float(r["train_seconds"])
        if r["subset"] == "full":
            full.append((acc, sec))
        elif r["subset"] == "dedup":
            dedup[(r["policy"], r["per_class"] == "True", r["priority"], int(r["threshold"]), int(r["kept"]))].append(
                (acc, sec))
        else:
            rand[int(r["kept"])].append((acc, sec))
    n = int(rows[0]["n_train"]) if rows else 0
    return {"n": n, "full": full, "dedup": dict(dedup), "random": dict(rand)}


def markdown(rows: list[dict]) -> str:
    s = summarize(rows)
    if not rows:
        return "(no runs)\n"
    n, lines = s["n"], []
    fm, fsd, fk = _stats([a for a, _ in s["full"]]) if s["full"] else (float("nan"),) * 2 + (0,)
    # Time: the fastest seed. A busy machine only ever adds time (other jobs, and OpenMP threads
    # spin-waiting inflate even CPU seconds), so the minimum is the best estimate of the true cost.
    ftime = min(t for _, t in s["full"]) if s["full"] else float("nan")
    lines.append(f"Full training set: {n} images, accuracy {_pm(fm, fsd)} % ({fk} seed{'' if fk == 1 else 's'}), "
                 f"training {ftime:.1f} s (wall, fastest seed).\n")
    lines.append("| policy | per_class | keep priority | t | kept | removed % | dedup accuracy % | random subset "
                 "accuracy % | dedup − random (pts) | seeds dedup > random | dedup − full (pts) | "
                 "train s (dedup, fastest seed) | seeds |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    # per seed: does dedup beat the random subset of the same size trained with the same seed?
    rand_by_seed = {(r["seed"], int(r["kept"])): float(r["accuracy"]) for r in rows if r["subset"] == "random"}
    wins = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["subset"] == "dedup" and (r["seed"], int(r["kept"])) in rand_by_seed:
            w = wins[(r["policy"], r["per_class"] == "True", r["priority"], int(r["threshold"]), int(r["kept"]))]
            w[0] += float(r["accuracy"]) > rand_by_seed[(r["seed"], int(r["kept"]))]
            w[1] += 1
    order = sorted(s["dedup"], key=lambda k: (k[1], k[2] != "index", k[0], k[3]))
    for key in order:
        policy, per_class, prio, t, kept = key
        dm, dsd, dk = _stats([a for a, _ in s["dedup"][key]])
        dtime = min(x for _, x in s["dedup"][key])
        if kept in s["random"]:
            rm, rsd, _ = _stats([a for a, _ in s["random"][kept]])
            rtxt, diff = _pm(rm, rsd), f"{100 * (dm - rm):+.2f}"
        else:
            rtxt, diff = "–", "–"
        won = f"{wins[key][0]} of {wins[key][1]}" if key in wins else "–"
        lines.append(f"| {policy} | {'yes' if per_class else 'no'} | {prio} | {t} | {kept} | "
                     f"{100 * (1 - kept / n):.1f} | {_pm(dm, dsd)} | {rtxt} | {diff} | {won} | "
                     f"{100 * (dm - fm):+.2f} | {dtime:.1f} | {dk} |")
    lines.append("")
    lines.append("Paper claims, read off the rows above (index priority, per_class off; mean over seeds):\n")
    for policy in sorted({k[0] for k in order}):
        pts = sorted((100 * (1 - k[4] / n), 100 * (_stats([a for a, _ in v])[0] - fm), k[3])
                     for k, v in s["dedup"].items() if k[0] == policy and not k[1] and k[2] == "index")
        eq = [p for p in pts if p[1] >= -0.5]
        five = [p for p in pts if p[1] >= -5.0]
        best_eq = max(eq, default=None)
        best_five = max(five, default=None)
        lines.append(f"- {policy}: largest removal within 0.5 pt of full accuracy: "
                     + (f"{best_eq[0]:.1f} % (t={best_eq[2]}, {best_eq[1]:+.2f} pts)" if best_eq else "none")
                     + "; largest removal within 5 pts: "
                     + (f"{best_five[0]:.1f} % (t={best_five[2]}, {best_five[1]:+.2f} pts)" if best_five else "none"))
    variants = [k for k in order if k[1] or k[2] != "index"]
    base = sorted([(0.0, fm)] * bool(s["full"]) + [
        (100 * (1 - k[4] / n), _stats([a for a, _ in v])[0]) for k, v in s["dedup"].items()
        if k[0] == "greedy" and not k[1] and k[2] == "index"])
    if variants and len(base) >= 2:
        lines.append("\nVariants against plain greedy (index order, per_class off) at the same removed %, "
                     "read off plain greedy's curve by linear interpolation between its two nearest points "
                     "(where that curve bends down, the chord lies below it and flatters the variant; the "
                     "dedup − random column above is the exact same-size comparison):\n")
        xs, ys = np.array([b[0] for b in base]), np.array([b[1] for b in base])
        for policy, per_class, prio, t, kept in variants:
            x = 100 * (1 - kept / n)
            dm = _stats([a for a, _ in s["dedup"][(policy, per_class, prio, t, kept)]])[0]
            name = f"{policy}{' per_class' if per_class else ''}{'' if prio == 'index' else ' ' + prio} t={t}"
            if xs.min() <= x <= xs.max():
                ref = float(np.interp(x, xs, ys))
                lines.append(f"- {name} ({x:.1f} % removed): {100 * dm:.2f} % vs {100 * ref:.2f} % "
                             f"({100 * (dm - ref):+.2f} pts)")
            else:
                lines.append(f"- {name} ({x:.1f} % removed): outside plain greedy's measured range")
    return "\n".join(lines) + "\n"


def leak_markdown(rows: list[dict]) -> str:
    lines = [("| t | test images with a near-duplicate in train | % of test | same label | % same label | "
              "train images involved |"), "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['threshold']} | {r['test_with_near_dup']} | {float(r['test_pct']):.2f} | "
                     f"{r.get('test_with_same_label_near_dup', '')} | {float(r['same_label_pct']):.2f} | "
                     f"{r['train_items_involved']} |")
    return "\n".join(lines) + "\n"


def sweep_markdown(rows: list[dict], thresholds=None) -> str:
    by = defaultdict(dict)
    for r in rows:
        key = (r["policy"], r["per_class"], r["priority"])
        by[key][int(r["threshold"])] = (int(r["kept"]), float(r["removed_pct"]))
    keys = sorted(by)
    ts = sorted(set().union(*[set(v) for v in by.values()])) if by else []
    if thresholds:
        ts = [t for t in ts if t in thresholds]
    head = "| t | " + " | ".join(f"{p}{' per-class' if pc == 'True' else ''}{'' if pr == 'index' else ' ' + pr}"
                                  f" kept (removed %)" for p, pc, pr in keys) + " |"
    lines = [head, "|---:|" + "---:|" * len(keys)]
    for t in ts:
        lines.append(f"| {t} | " + " | ".join(f"{by[k][t][0]} ({by[k][t][1]:.1f})" if t in by[k] else "–"
                                              for k in keys) + " |")
    return "\n".join(lines) + "\n"


_COLORS = {"greedy": "tab:blue", "components": "tab:orange", "greedy per-class": "tab:green",
           "components per-class": "tab:red", "greedy contrast": "tab:purple", "greedy central": "tab:brown",
           "greedy shuffled": "tab:pink",
           "random subset": "gray"}


def _plot_sweep(ax0, sweep_rows: list[dict]) -> None:
    by = defaultdict(list)
    for r in sweep_rows:
        by[(r["policy"], r["per_class"], r["priority"])].append((int(r["threshold"]), float(r["removed_pct"])))
    for (p, pc, pr), pts in sorted(by.items()):
        pts.sort()
        label = f"{p}{' per-class' if pc == 'True' else ''}{'' if pr == 'index' else ' ' + pr}"
        ax0.plot([t for t, _ in pts], [v for _, v in pts], marker=".", label=label, color=_COLORS.get(label))
    ax0.set(xlabel="Hamming threshold t (64-bit phash)", ylabel="training images removed (%)",
            title="Kept counts: one hash pass + one search")
    ax0.grid(alpha=0.3)
    ax0.legend(fontsize=8)


def class_markdown(rows: list[dict], thresholds) -> str:
    labels = sorted({int(r["label"]) for r in rows})
    lines = ["| policy | t | " + " | ".join(f"class {c}" for c in labels) + " |",
             "|---|---:|" + "---:|" * len(labels)]
    by = {(r["policy"], int(r["threshold"]), int(r["label"])): (int(r["kept"]), int(r["n_label"])) for r in rows}
    for policy in ("greedy", "components"):
        for t in thresholds:
            if (policy, t, labels[0]) in by:
                cells = [f"{100 * by[(policy, t, c)][0] / by[(policy, t, c)][1]:.1f}" for c in labels]
                lines.append(f"| {policy} | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], sweep_rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib); no plot written")
        return None
    if not rows:  # kept counts only (--no-train)
        fig, ax0 = plt.subplots(figsize=(6.5, 4.8))
        _plot_sweep(ax0, sweep_rows)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
    s = summarize(rows)
    n = s["n"]
    fig, (ax0, ax1, ax2, ax3) = plt.subplots(1, 4, figsize=(22, 4.8))
    _plot_sweep(ax0, sweep_rows)

    def series(points):
        pts = sorted(points)
        return ([p[0] for p in pts], [p[1] for p in pts], [0 if math.isnan(p[2]) else p[2] for p in pts],
                [p[3] for p in pts])

    full = _stats([a for a, _ in s["full"]]) if s["full"] else None
    # Training cost = images processed (kept x epochs): deterministic, and what the wall time is
    # proportional to on an idle machine (wall times on a shared machine swing several-fold).
    epochs = int(rows[0]["epochs"])
    full_t = n * epochs
    speed = float(np.median([int(r["kept"]) * int(r["epochs"]) / max(float(r["train_seconds"]), 1e-9) for r in rows]))
    curves = defaultdict(list)
    for (p, pc, pr, t, kept), v in s["dedup"].items():
        name = f"dedup {p}" + (" per-class" if pc else "") + ("" if pr == "index" else f" {pr}")
        m, sd, _ = _stats([a for a, _ in v])
        curves[name].append((100 * (1 - kept / n), 100 * m, 100 * sd, kept * epochs))
    for kept, v in s["random"].items():
        m, sd, _ = _stats([a for a, _ in v])
        curves["random subset"].append((100 * (1 - kept / n), 100 * m, 100 * sd, kept * epochs))
    styles = {"random subset": {"color": "gray", "ls": "--", "marker": "s"}}
    for name, pts in sorted(curves.items()):
        if full is not None and (name in ("dedup greedy", "dedup components", "random subset")):
            pts = pts + [(0.0, 100 * full[0], 100 * (0 if math.isnan(full[1]) else full[1]), full_t)]
        x, y, e, sec = series(pts)
        kw = styles.get(name, {"marker": "o", "ls": "-" if len(pts) > 2 else "none",
                               "color": _COLORS.get(name.removeprefix("dedup "))})
        ax1.errorbar(x, y, yerr=e, capsize=3, label=name, **kw)
        ax2.errorbar(sec, y, yerr=e, capsize=3, label=name, **kw)  # joined in order of removal, like ax1
    # dedup minus the random subset of the same size, paired by seed: the number that says
    # whether dedup picks better images than chance
    rand_by_seed = {(r["seed"], int(r["kept"])): float(r["accuracy"]) for r in rows if r["subset"] == "random"}
    paired = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["subset"] == "dedup" and (r["seed"], int(r["kept"])) in rand_by_seed:
            name = (f"dedup {r['policy']}" + (" per-class" if r["per_class"] == "True" else "")
                    + ("" if r["priority"] == "index" else f" {r['priority']}"))
            paired[name][int(r["kept"])].append(100 * (float(r["accuracy"]) - rand_by_seed[(r["seed"], int(r["kept"]))]))
    floor = -3.0  # the interesting differences are tenths of a point; collapses are drawn at the floor
    for name, by_kept in sorted(paired.items()):
        pts = sorted((100 * (1 - k / n), *_stats(v)[:2]) for k, v in by_kept.items())
        color = _COLORS.get(name.removeprefix("dedup "))
        # a point below the floor breaks the line (NaN) rather than being bridged
        ax3.errorbar([p[0] for p in pts], [p[1] if p[1] >= floor else math.nan for p in pts],
                     yerr=[0 if math.isnan(p[2]) or p[1] < floor else p[2] for p in pts], capsize=3, label=name,
                     marker="o", ls="-" if len(pts) > 2 else "none", color=color)
        for x, m, _ in (p for p in pts if p[1] < floor):
            ax3.plot([x], [floor], marker="v", color=color, ls="none")
            ax3.annotate(f"{m:.1f}", (x, floor), textcoords="offset points", xytext=(0, 6), ha="center",
                         fontsize=7, color=color)
    ax3.set_ylim(bottom=floor - 0.3, top=max(ax3.get_ylim()[1], 0.5))  # keep the zero line in view
    ax3.axhline(0, color="gray", ls="--", lw=1)
    ax3.set(xlabel="training images removed (%)", ylabel="dedup − random subset (accuracy points)",
            title=f"Dedup − random subset, paired by seed (▼: below {floor:.0f})")
    ax3.grid(alpha=0.3)
    ax3.legend(fontsize=8)
    if full is not None:
        for ax in (ax1, ax2):
            ax.axhline(100 * full[0], color="k", lw=0.8, alpha=0.5)
            ax.axhline(100 * full[0] - 5, color="r", lw=0.8, ls=":", alpha=0.6)
    ax1.set(xlabel="training images removed (%)", ylabel="test accuracy (%)",
            title="Accuracy vs removed (mean ± sd over seeds)")
    ax2.set(xlabel=f"training images processed (kept x {epochs} epochs; median {speed:,.0f} images/s here)",
            ylabel="test accuracy (%)", title="Accuracy vs training cost")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=tc.DATASETS, default="fashion-mnist", help="(default: fashion-mnist)")
    p.add_argument("--root", default="data", help="dataset folder, as in train_classifier.py (default: data)")
    p.add_argument("--fashion-mnist-from-debian", action="store_true",
                   help="lay out Debian's Fashion-MNIST files under ROOT first")
    p.add_argument("--thresholds", type=int_list, default=[0, 2, 4, 6, 8, 10, 12],
                   help="comma-separated thresholds to train at (default: 0,2,4,6,8,10,12)")
    p.add_argument("--policies", type=str_list, default=["greedy", "components"],
                   help="comma-separated policies (default: greedy,components)")
    p.add_argument("--seeds", type=int_list, default=[0, 1], help="comma-separated seeds (default: 0,1)")
    p.add_argument("--per-class-threshold", type=int, default=None,
                   help="also train with per_class=True at this threshold, for every policy")
    p.add_argument("--priority-thresholds", type=int_list, default=[],
                   help="also train greedy with the 'contrast' keep priority at these thresholds")
    p.add_argument("--central-thresholds", type=int_list, default=[],
                   help="also train greedy with the 'central' keep priority (most near-duplicates first) at "
                        "these thresholds")
    p.add_argument("--shuffled-thresholds", type=int_list, default=[],
                   help="also train greedy with a fixed random keep order (not dataset order) at these thresholds")
    p.add_argument("--sweep-max", type=int, default=16, help="kept counts are listed for t=0..this (default 16)")
    p.add_argument("--method", default="phash", choices=("phash", "dhash", "ahash", "whash"))
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cache-dir", default=None, help="hash sidecars (default: beside the data)")
    p.add_argument("--limit", type=int, default=None, help="a fixed subset of N training (and test) images")
    p.add_argument("--limit-test", type=int, default=None, help="test images with --limit")
    p.add_argument("--no-random", action="store_true", help="skip the random-subset baseline runs")
    p.add_argument("--random-min-removed", type=float, default=0.0, metavar="PCT",
                   help="skip the random baseline where dedup removes less than PCT %% (default 0: never)")
    p.add_argument("--no-preload", action="store_true",
                   help="read images through the datasets' own transforms instead of train_classifier's --preload")
    p.add_argument("--no-full", action="store_true", help="skip the full-set runs")
    p.add_argument("--no-train", action="store_true", help="only hash, sweep kept counts and (optionally) leakage")
    p.add_argument("--leak-thresholds", type=int_list, default=[],
                   help="count test images with a near-duplicate in train at these thresholds")
    p.add_argument("--report-only", action="store_true", help="no hashing or training: tables and plot from the CSVs")
    p.add_argument("--out-dir", default="ce_dedup_results", help="folder of the CSVs and plot")
    p.add_argument("--name", default=None, help="file name prefix (default: the dataset name)")
    p.add_argument("--plot", default=None, help="plot path (default: OUT_DIR/NAME.png)")
    p.add_argument("--markdown-out", default=None, help="also write the Markdown tables to this file")
    p.add_argument("--table-thresholds", type=int_list, default=[],
                   help="thresholds listed in the kept-count table (default: all 0..--sweep-max)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    bad = [p for p in args.policies if p not in ("greedy", "components")]
    if bad:
        build_parser().error(f"--policies {','.join(bad)}: each must be greedy or components")
    name = args.name or args.dataset.replace("-", "_")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs_csv, sweep_csv, leak_csv = out / f"{name}_runs.csv", out / f"{name}_sweep.csv", out / f"{name}_leak.csv"
    plot_path = Path(args.plot) if args.plot else out / f"{name}.png"

    if not args.report_only:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        if args.dataset == "fashion-mnist" and args.fashion_mnist_from_debian:
            tc.fashion_mnist_from_debian(args.root)
        train_ds, test_ds, in_ch = tc.build_datasets(args.dataset, args.root)
        train_ds = tc.fixed_subset(train_ds, args.limit)
        test_ds = tc.fixed_subset(test_ds, args.limit_test if args.limit_test is not None else args.limit)
        cfgs = configs(args)
        counts = kept_counts(args, train_ds, cfgs, sweep_csv)
        if args.leak_thresholds:
            leakage(args, train_ds, test_ds, leak_csv)
        if not args.no_train:
            run_grid(args, (train_ds, test_ds, in_ch), cfgs, counts, runs_csv)

    report = []
    if sweep_csv.exists():
        report += ["### Kept counts (one hash pass, one search per policy)\n", sweep_markdown(read_rows(sweep_csv), args.table_thresholds)]
    class_csv = out / f"{name}_class_sweep.csv"
    if class_csv.exists() and args.table_thresholds:
        report += ["### Kept per class (% of the class kept)\n",
                   class_markdown(read_rows(class_csv), args.table_thresholds)]
    if leak_csv.exists():
        report += ["### Test images with a near-duplicate in the training set\n", leak_markdown(read_rows(leak_csv))]
    rows = read_rows(runs_csv)
    if rows:
        report += ["### Training runs\n", markdown(rows)]
    if rows or sweep_csv.exists():
        sweep_rows = read_rows(sweep_csv)
        if rows:
            title = (f"CE-Dedup on {name} ({rows[0]['n_train']} training images, {rows[0]['epochs']} "
                     f"epoch{'' if rows[0]['epochs'] == '1' else 's'} per run)")
        else:
            title = f"Kept counts on {name} ({sweep_rows[0]['n_train']} images)"
        made = plot(rows, sweep_rows, plot_path, title)
        if made:
            report.append(f"plot: {made}\n")
    text = "\n".join(report)
    print(text)
    if args.markdown_out:
        Path(args.markdown_out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
