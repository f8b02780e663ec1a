"""``torch-dedup demo``: CE-Dedup on the embedded sample (sweep, train with and without dedup, plot)."""

from __future__ import annotations

from ._options import EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("demo", help="CE-Dedup on the embedded sample: sweep, train with/without dedup, plot")
    p.add_argument("--out", default="torch_dedup_demo", help="output folder (default ./torch_dedup_demo)")
    p.add_argument("--thresholds", default="6,10", help="comma-separated thresholds to train at (default 6,10)")
    p.add_argument("--max-threshold", type=int, default=16, help="sweep kept counts over 0..T (default 16)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=8000, help="embedded images to train on (default 8000)")
    p.add_argument("--n-eval", type=int, default=2000, help="embedded images held out (default 2000)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: half the cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args, out) -> int:
    from ..demo import run_demo
    try:
        thresholds = tuple(int(t) for t in args.thresholds.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--thresholds {args.thresholds!r}: expected comma-separated integers like 6,10") from None
    run_demo(args.out, thresholds=thresholds, max_threshold=args.max_threshold, epochs=args.epochs, seed=args.seed,
             n_train=args.n_train, n_eval=args.n_eval, device=args.device, threads=args.threads,
             progress=not args.no_progress, echo=out)
    return EXIT_OK
