"""``torch-dedup leak TRAIN TEST``: train/test near-duplicates (ciFAIR-style lists), a CI gate, a clean split."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..dataset_fits import with_fit
from ..dataset_hashes import hash_dataset_with
from ._options import (
    EXIT_LEAK,
    EXIT_OK,
    add_plan_options,
    emit_json,
    label_name,
    open_cli_target,
    open_out,
    options_from_args,
    plan_target,
    write_index_list,
)


def register(sub) -> None:
    p = sub.add_parser("leak", help="near-duplicate pairs between a training and a test set; CI gate; clean split")
    p.add_argument("train", metavar="TRAIN", help="the training set (TARGET syntax)")
    p.add_argument("test", metavar="TEST", help="the test set (TARGET syntax)")
    add_plan_options(p)
    p.add_argument("--csv", metavar="FILE", help="write every pair to FILE ('-': stdout): test_index, test_path, "
                                                  "test_label, train_index, train_path, train_label, distance")
    p.add_argument("--max-leak-pct", type=float, default=None, metavar="X",
                   help="exit with code 3 when more than X%% of the test items have a near-duplicate in TRAIN")
    p.add_argument("--keep-list", metavar="FILE", help="write the clean training indices (paths for files) to FILE")
    p.add_argument("--write-clean", metavar="DIR",
                   help="write the clean training split to DIR (new or empty): files are hard-linked (copied "
                        "across devices) under their class folders; arrays go to DIR/train.npz")
    p.add_argument("--copy", action="store_true", help="with --write-clean: copy files instead of hard-linking")
    p.add_argument("--dedup", action="store_true",
                   help="the clean split also drops near-duplicates within TRAIN (--threshold, --policy, "
                        "--per-class); labels never restrict which pairs count as leaks")
    p.add_argument("--top", type=int, default=5, help="pairs to show in the text summary (default 5)")
    p.set_defaults(func=cmd_leak)


def _check_args(args) -> None:
    if args.max_leak_pct is not None and not 0.0 <= args.max_leak_pct <= 100.0:
        raise ValueError(f"--max-leak-pct {args.max_leak_pct}: must be a percentage in [0, 100]")
    if args.top < 0:
        raise ValueError(f"--top {args.top}: must be >= 0")
    if args.copy and not args.write_clean:
        raise ValueError("--copy only applies with --write-clean DIR")
    if args.write_clean and os.path.exists(args.write_clean) and (
            not os.path.isdir(args.write_clean) or os.listdir(args.write_clean)):
        raise ValueError(f"--write-clean {args.write_clean}: exists and is not an empty folder; pick a new one")


def cmd_leak(args, out) -> int:
    _check_args(args)
    train, test = open_cli_target(args.train), open_cli_target(args.test)
    # A fitted method (colour_dct) codes TEST with TRAIN's fit: one space for both sets.
    fit = with_fit(train.ds, options_from_args(args)).fit
    test_h = hash_dataset_with(test.ds, options_from_args(args, fit=fit))
    # The leak check is a plan of TRAIN with against=TEST, exactly what DedupSampler(train,
    # against=test) follows: the same removed set, and labels never restrict a leak.
    plan = plan_target(args, train, against=test_h, leak_pairs=True, fit=fit)
    test_rows = np.flatnonzero(test_h.valid)  # plan rows of `against` -> test item indices
    lp = plan.leak_pairs
    rows = np.stack([test_rows[lp[:, 1]], lp[:, 0], lp[:, 2]], axis=1).reshape(-1, 3).astype(np.int64)
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    contaminated = np.unique(rows[:, 0])
    leaked_train = np.flatnonzero(plan.leaked)
    n_test = int(test_h.valid.sum())
    n_train_valid = plan.n - int(plan.failed.sum())
    pct = 100.0 * len(contaminated) / n_test if n_test else 0.0
    exceeded = args.max_leak_pct is not None and pct > args.max_leak_pct
    # --dedup: the plan's keep set (leaks out first, then near-duplicates within TRAIN);
    # without it, only leaked (and unreadable) items leave the clean split
    clean = plan.kept_indices if args.dedup else np.flatnonzero(~(plan.leaked | plan.failed)).astype(np.int64)
    train_labels = plan.labels

    if args.csv:
        _write_pairs(args.csv, rows, train, test, train_labels, test_h.labels)
    if args.keep_list:
        write_index_list(args.keep_list, clean, train, train_labels)
    written = _write_clean(args.write_clean, clean, train, train_labels, args.copy) if args.write_clean else None

    if args.json:
        emit_json({"threshold": args.threshold, "per_class": args.per_class,
                   "n_train": plan.n, "n_test": len(test_h), "n_train_valid": n_train_valid,
                   "n_test_valid": n_test, "n_pairs": len(rows), "contaminated_test": len(contaminated),
                   "leak_pct": round(pct, 6), "leaked_train": len(leaked_train), "n_clean": len(clean),
                   "max_leak_pct": args.max_leak_pct, "gate_exceeded": exceeded,
                   "pairs": rows.tolist() if args.csv != "-" else None, "write_clean": written})
    else:
        out(f"{len(rows)} near-duplicate pairs within threshold {args.threshold} "
            f"({args.method}/{args.hash_size}; labels never restrict a leak)")
        out(f"  test items with a near-duplicate in train: {len(contaminated)} of {n_test} ({pct:.2f}%)")
        out(f"  train items near a test item: {len(leaked_train)} of {n_train_valid}; "
            f"clean training split: {len(clean)} items" + (" (also deduplicated)" if args.dedup else ""))
        closest = rows[np.lexsort((rows[:, 1], rows[:, 0], rows[:, 2]))[:args.top]]
        for t_i, r_i, d in closest.tolist():
            out(f"  test {_describe(t_i, test, test_h.labels)} ~ train {_describe(r_i, train, train_labels)}"
                f"  d={d}")
        if len(rows) > args.top:
            out(f"  ... {len(rows) - args.top} more" + ("" if args.csv else " (--csv FILE lists them all)"))
        for what, path in (("pairs", args.csv if args.csv != "-" else None), ("keep list", args.keep_list),
                           ("clean split", written)):
            if path:
                out(f"  wrote {what}: {path}")
    if exceeded:
        print(f"torch-dedup leak: gate failed: {pct:.2f}% of test items have a near-duplicate in train "
              f"(more than --max-leak-pct {args.max_leak_pct:g})", file=sys.stderr)
        return EXIT_LEAK
    return EXIT_OK


def _describe(i: int, target, labels) -> str:
    s = f"#{i}"
    if target.paths:
        s += f" {target.paths[i]}"
    if labels is not None:
        s += f" [{label_name(int(labels[i]), target.class_names)}]"
    return s


def _write_pairs(path: str, rows: np.ndarray, train, test, train_labels, test_labels) -> None:
    with open_out(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["test_index", "test_path", "test_label", "train_index", "train_path", "train_label", "distance"])
        for t_i, r_i, d in rows.tolist():
            w.writerow([t_i, test.paths[t_i] if test.paths else "",
                        label_name(None if test_labels is None else int(test_labels[t_i]), test.class_names),
                        r_i, train.paths[r_i] if train.paths else "",
                        label_name(None if train_labels is None else int(train_labels[r_i]), train.class_names), d])


def _write_clean(folder: str, keep: np.ndarray, train, labels, copy: bool) -> str:
    out = Path(folder)
    src = train.source
    if src.kind == "files":
        root = Path(src.root) if src.root is not None else None
        out.mkdir(parents=True, exist_ok=True)
        for i in keep.tolist():
            p = Path(train.paths[i])
            rel = p.relative_to(root) if root is not None and p.is_relative_to(root) else Path(p.name)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(p, dest)
            else:
                try:
                    os.link(p, dest)
                except OSError:  # another device, or links not allowed: copy
                    shutil.copy2(p, dest)
        return str(out)
    if src.kind == "array":
        chunks, step = [], 8192
        for s in range(0, src.n, step):
            sel = keep[(keep >= s) & (keep < s + step)]
            if len(sel):
                chunks.append(src.array_batch(s, min(s + step, src.n))[sel - s])
        shape = src.array_batch(0, 1).shape[1:] if src.n else (0, 0)
        images = np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.uint8)
        arrays = {"images": images, "indices": keep.astype(np.int64)}
        if labels is not None:
            arrays["labels"] = labels[keep]
        if train.class_names:
            arrays["classes"] = np.array(train.class_names)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "train.npz", **arrays)
        return str(out / "train.npz")
    raise ValueError(f"--write-clean: TRAIN {train.spec!r} is neither image files nor an array; "
                     "use --keep-list FILE instead")
