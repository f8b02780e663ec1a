"""The search's plan on real perceptual hashes: ``algorithm="auto"`` against brute force.

Real pHashes have biased, correlated bits, so the index's tables share keys far more often
than the uniform-bits cost model assumes. The data: the embedded Fashion-MNIST sample, 10
noisy variants of each image (pixel noise +-20, seeded), phashed, distinct values kept.
Printed per threshold, same run: the plan ``auto`` chose, its time, brute force's time and the
ratio (below 1: auto chose worse than brute force).

Usage::

    python benchmarks/bench_search_real.py            # t = 6 and 12
    python benchmarks/bench_search_real.py -t 8 10 14
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from torch_dedup.embedded import load_sample
from torch_dedup.hamming import search, unique_hashes, unique_pairs
from torch_dedup.hashing import hash_array


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", "--thresholds", type=int, nargs="+", default=[6, 12])
    ap.add_argument("--variants", type=int, default=10, help="noisy variants per sample image (default 10)")
    args = ap.parse_args()
    x, _ = load_sample()
    rng = np.random.default_rng(0)
    variants = [np.clip(x.astype(np.int16) + rng.integers(-20, 21, x.shape), 0, 255).astype(np.uint8)
                for _ in range(args.variants)]
    u = unique_hashes(hash_array(np.concatenate(variants)))[0]
    unique_pairs(u[:2000], 4)  # compile the kernels before timing
    print(f"{len(u)} distinct 64-bit pHashes")
    print(f"{'t':>3} {'auto plan':>10} {'auto s':>8} {'brute s':>8} {'brute/auto':>11} {'pairs':>12}")
    for t in args.thresholds:
        kind, n_blocks, _ = search._plan(len(u), None, 1, t, "auto", search.default_workers(), u.reshape(-1, 1))
        t0 = time.perf_counter()
        auto = unique_pairs(u, t)
        t_auto = time.perf_counter() - t0
        t0 = time.perf_counter()
        brute = unique_pairs(u, t, algorithm="brute")
        t_brute = time.perf_counter() - t0
        assert len(auto.pairs) == len(brute.pairs)
        plan = "brute" if kind == "brute" else f"mih/{n_blocks}"
        print(f"{t:>3} {plan:>10} {t_auto:8.2f} {t_brute:8.2f} {t_brute / t_auto:10.2f}x {len(auto.pairs):>12,}")


if __name__ == "__main__":
    main()
