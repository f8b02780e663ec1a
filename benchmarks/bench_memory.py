"""Peak memory of clustering at large thresholds: streamed pairs against the materialise-all-pairs anchor.

Issue 14, item 2. Real-ish data: the embedded Fashion-MNIST sample (10,000 images)
repeated with Gaussian pixel noise (sigma 6) and pHashed (64 bits), so that copies
of an image are near-duplicates of it and the classes overlap as real data does.
Each case runs in its own subprocess and reports its peak RSS (``ru_maxrss``);
next to it, in the same run: the RSS of a process that only loads the hashes
(imports included), and the anchor, the materialised path (``memory_limit=None``)
measured on a subsample that fits, scaled by the pair count of the full case.

Usage:
    python benchmarks/bench_memory.py            # 50,000 at t=24 and 1,000,000 at t=12 (minutes)
    python benchmarks/bench_memory.py --quick    # 50,000 at t=24 only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_hashes(n: int, seed: int = 0) -> np.ndarray:
    from torch_dedup.embedded import load_sample
    from torch_dedup.hashing import hash_array

    x, _ = load_sample()
    rng = np.random.default_rng(seed)
    out = []
    for r in range(-(-n // len(x))):
        noisy = x if r == 0 else np.clip(x + rng.normal(0, 6, x.shape), 0, 255).astype(np.uint8)
        out.append(hash_array(noisy))
    return np.concatenate(out)[:n]


def run_case(path: str, t: int, mode: str, limit: int | None) -> dict:
    """In the subprocess: one clustering call, its time and this process's peak RSS."""
    from torch_dedup.hamming.cluster import find_duplicates, sweep_thresholds
    from torch_dedup.hamming.search import _pair_fraction, unique_hashes

    h = np.load(path)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    out = {"n": len(h), "t": t, "mode": mode, "memory_limit": limit, "rss_loaded_mb": rss0}
    if mode == "load":
        pass
    elif mode == "pairs":  # distinct-value pairs within t: sampled estimate (and exact when asked)
        u = unique_hashes(h)[0]
        out["distinct"] = len(u)
        out["pairs_est"] = _pair_fraction(u, None, t) * len(u) * (len(u) - 1) / 2
    elif mode.startswith("sweep"):
        out["kept"] = sweep_thresholds(h, t, policy=mode.split("-")[1], memory_limit=limit).tolist()
    else:
        plan = find_duplicates(h, t, policy=mode, memory_limit=limit)
        out["kept"] = plan.n_kept
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def case(path, t, mode, limit="default"):
    args = [sys.executable, __file__, "--case", path, str(t), mode, str(limit)]
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        path, t, mode, limit = args.case
        from torch_dedup.hamming.cluster import DEFAULT_MEMORY_LIMIT
        lim = None if limit == "None" else DEFAULT_MEMORY_LIMIT if limit == "default" else int(limit)
        print(json.dumps(run_case(path, int(t), mode, lim)))
        return
    sizes = [(50_000, 24, 10_000)] + ([] if args.quick else [(1_000_000, 12, 100_000)])
    with tempfile.TemporaryDirectory() as tmp:
        for n, t, sub in sizes:
            path, sub_path = os.path.join(tmp, f"h{n}.npy"), os.path.join(tmp, f"s{n}.npy")
            h = make_hashes(n)
            np.save(path, h)
            np.save(sub_path, h[:sub])
            base = case(path, t, "load")
            pairs = case(path, t, "pairs")
            sub_pairs = case(sub_path, t, "pairs")
            anchor = case(sub_path, t, "greedy", "None")
            per_pair = (anchor["peak_rss_mb"] - anchor["rss_loaded_mb"]) * 2**20 / max(sub_pairs["pairs_est"], 1)
            projected = base["peak_rss_mb"] + pairs["pairs_est"] * per_pair / 2**20
            print(f"\n{n:,} hashes ({pairs['distinct']:,} distinct), t={t}: ~{pairs['pairs_est']:.3g} distinct pairs "
                  f"(sampled); process with the hashes loaded: {base['peak_rss_mb']:.0f} MB")
            print(f"  anchor: materialised (memory_limit=None) on {sub:,}: {anchor['peak_rss_mb']:.0f} MB peak, "
                  f"{per_pair:.0f} B/pair -> projected {projected:,.0f} MB for {n:,}")
            for mode in ("greedy", "components") + (("sweep-greedy",) if n <= 50_000 else ()):
                r = case(path, t, mode)
                print(f"  {mode:12s} memory_limit=1 GiB: peak RSS {r['peak_rss_mb']:.0f} MB "
                      f"(+{r['peak_rss_mb'] - base['peak_rss_mb']:.0f} over loaded), {r['seconds']:.1f} s, "
                      f"kept {r['kept'] if mode != 'sweep-greedy' else r['kept'][-1]}; "
                      f"projected/peak = {projected / r['peak_rss_mb']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
