"""Exact Hamming range search: our engine against anchors measured in the same run.

Prints, side by side with ratios: search wall time at t=6 for uniform and clustered
64-bit hashes (N = 100k, 1M, 10M), time against N and against t = 0..16, the first
call (numba compile) apart from steady state, peak extra memory per hash, and anchors:
a plain numba brute force, imagededup's search, faiss (IndexBinaryFlat range_search,
IndexBinaryMultiHash) when ``faiss-cpu`` is installed.

Usage:
    python benchmarks/bench_search.py            # full run (10M included, minutes)
    python benchmarks/bench_search.py --quick    # small run (~1 minute)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

from torch_dedup.hamming.search import _plan, hamming_pairs, unique_hashes

TARGETS = {100_000: 0.2, 1_000_000: 3.0, 10_000_000: 60.0}


def uniform(rng, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=n, dtype=np.uint64)


def clustered(rng, n: int) -> np.ndarray:
    """Random hashes; the last 20% are copies of earlier items with 0-4 bits flipped."""
    h = uniform(rng, n)
    k = n // 5
    src = rng.integers(0, n - k, size=k)
    flips = np.zeros(k, np.uint64)
    for _ in range(4):
        on = (rng.random(k) < 0.7).astype(np.uint64)
        flips ^= (np.uint64(1) << rng.integers(0, 64, size=k).astype(np.uint64)) * on
    h[n - k :] = h[src] ^ flips
    return h


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.extra = self.peak - self.base


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def timed_cpu(fn, *args, **kwargs):
    """Wall and CPU seconds (all threads): CPU time shows the work when other jobs share the cores."""
    c0 = time.process_time()
    dt, out = timed(fn, *args, **kwargs)
    return dt, time.process_time() - c0, out


def first_call_seconds() -> tuple[float, float]:
    """First call in a fresh process with an empty numba cache, and with the cache warm."""
    code = (
        "import time, numpy as np; t0 = time.perf_counter();"
        "from torch_dedup.hamming.search import hamming_pairs;"
        "rng = np.random.default_rng(0); h = rng.integers(0, 2**64, size=2000, dtype=np.uint64);"
        "hamming_pairs(h, 6, algorithm='mih'); hamming_pairs(h, 6, algorithm='brute');"
        "hamming_pairs(h, 6, h[:10], algorithm='mih');"
        "print(time.perf_counter() - t0)"
    )
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):  # cold (compile + write cache), then warm (load cache)
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out.append(float(r.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


def imagededup_seconds(h: np.ndarray, t: int) -> tuple[float, int] | None:
    try:
        from imagededup.methods import PHash
    except ImportError:
        return None
    import logging

    logging.getLogger("imagededup").setLevel(logging.ERROR)
    encoding_map = {str(i): format(int(x), "016x") for i, x in enumerate(h)}
    phasher = PHash(verbose=False)
    dt, dup = timed(phasher.find_duplicates, encoding_map=encoding_map, max_distance_threshold=t)
    n_pairs = sum(len(v) for v in dup.values()) // 2
    return dt, n_pairs


def faiss_anchor(h: np.ndarray, t: int, flat: bool, multihash: bool):
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    x = np.ascontiguousarray(h).view(np.uint8).reshape(-1, 8)
    out = {}
    if flat:
        index = faiss.IndexBinaryFlat(64)
        index.add(x)
        dt, (lims, d, i) = timed(index.range_search, x, t + 1)  # radius is exclusive
        out["IndexBinaryFlat"] = (dt, (len(i) - len(h)) // 2)
    if not multihash:
        return out
    # 8 tables of 8-bit substrings, no flips: exact for t < 8 (pigeonhole)
    index = faiss.IndexBinaryMultiHash(64, 8, 8)
    index.nflip = 0
    t0 = time.perf_counter()
    index.add(x)
    lims, d, i = index.range_search(x, t + 1)
    out["IndexBinaryMultiHash(8x8)"] = (time.perf_counter() - t0, (len(i) - len(h)) // 2)
    return out


def row(*cells):
    print("  ".join(f"{c:>14}" if not isinstance(c, str) or len(c) < 14 else c for c in cells))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run: N <= 1M, t sweep at 100k")
    ap.add_argument("--threshold", type=int, default=6)
    ap.add_argument("--sweep-n", type=int, default=None,
                    help="N of the time-vs-threshold table (default 100k quick, 1M full)")
    ap.add_argument("--sweep-max-t", type=int, default=16, help="largest t of that table (default 16)")
    ap.add_argument("--no-faiss-1m", action="store_true", help="skip faiss IndexBinaryFlat at 1M (~5 min)")
    ap.add_argument("--faiss-1m-only", action="store_true",
                    help="run only the faiss IndexBinaryFlat anchor at 1M (what --no-faiss-1m skips)")
    args = ap.parse_args(argv)
    t = args.threshold
    rng = np.random.default_rng(0)
    workers = len(os.sched_getaffinity(0))
    print(f"# bench_search: {workers} cores, threshold {t}, {'quick' if args.quick else 'full'} run, "
          f"load average at start {os.getloadavg()[0]:.1f}")

    if args.faiss_1m_only:
        hf = clustered(rng, 1_000_000)
        hamming_pairs(hf[:3000], t)  # load the kernels from the numba cache before timing
        ours_f, rf = timed(hamming_pairs, hf, t)
        res = faiss_anchor(hf, t, True, False)
        if res is None:
            print("faiss not installed (pip install faiss-cpu): anchor skipped")
            return
        row("N", "anchor", "anchor s", "ours s", "ratio", "anchor pairs", "our pairs")
        for name, (dt, pairs) in res.items():
            row("1,000,000", f"faiss {name}", f"{dt:.3f}", f"{ours_f:.3f}", f"{dt / ours_f:.1f}x", f"{pairs:,}",
                f"{len(rf.pairs):,}")
        return
    cold, warm = first_call_seconds()
    warm_h = uniform(rng, 3000)
    for algorithm in ("mih", "brute"):  # load every kernel from the numba cache before timing
        hamming_pairs(warm_h, t, algorithm=algorithm)
        hamming_pairs(warm_h, t, warm_h[:100], algorithm=algorithm)
    print(f"\nfirst call in a fresh process (import + 3 searches of 2k): {cold:.2f} s with an empty numba cache "
          f"(compile), {warm:.2f} s with the cache written (load); everything below is steady state")

    sizes = [100_000, 1_000_000] + ([] if args.quick else [10_000_000])
    print("\n## search wall time, t=%d, 64-bit (ours; target; ratio target/ours)" % t)
    row("N", "data", "plan", "ours s", "ours cpu s", "target s", "target/ours", "pairs", "extra B/hash")
    results = {}
    for n in sizes:
        for name, gen in (("uniform", uniform), ("clustered", clustered)):
            h = gen(rng, n)
            nu = len(unique_hashes(h)[0])
            kind, blocks, _ = _plan(nu, None, 1, t, "auto", workers)
            with PeakRSS() as mem:
                dt, cpu, r = timed_cpu(hamming_pairs, h, t)
            results[(n, name)] = (dt, len(r.pairs))
            row(f"{n:,}", name, f"{kind}/{blocks}", f"{dt:.3f}", f"{cpu:.3f}", f"{TARGETS[n]:.1f}", f"{TARGETS[n] / dt:.1f}x",
                f"{len(r.pairs):,}", f"{mem.extra / n:.0f}")
            del h, r

    n_sweep = args.sweep_n or (100_000 if args.quick else 1_000_000)
    h = clustered(rng, n_sweep)
    print(f"\n## time vs threshold, N={n_sweep:,} clustered (auto plan)")
    row("t", "plan", "ours s", "ours cpu s", "pairs")
    for tt in range(0, args.sweep_max_t + 1):
        nu = len(unique_hashes(h)[0])
        kind, blocks, _ = _plan(nu, None, 1, tt, "auto", workers)
        dt, cpu, r = timed_cpu(hamming_pairs, h, tt)
        row(str(tt), f"{kind}/{blocks}", f"{dt:.3f}", f"{cpu:.3f}", f"{len(r.pairs):,}")

    print("\n## time vs N, t=%d clustered" % t)
    row("N", "ours s", "s per 1M")
    for n in [10_000, 30_000, 100_000, 300_000, 1_000_000] + ([] if args.quick else [3_000_000, 10_000_000]):
        if (n, "clustered") in results:
            dt = results[(n, "clustered")][0]
        else:
            dt, _ = timed(hamming_pairs, clustered(rng, n), t)
        row(f"{n:,}", f"{dt:.3f}", f"{dt / n * 1e6:.3f}")

    print("\n## anchors (same data, same run; ratio = anchor / ours)")
    row("N", "anchor", "anchor s", "ours s", "ratio", "anchor pairs", "our pairs")
    n = 100_000
    h = clustered(rng, n)
    ours, r = timed(hamming_pairs, h, t)
    dt, rb = timed(hamming_pairs, h, t, algorithm="brute")
    assert np.array_equal(rb.pairs, r.pairs)
    row(f"{n:,}", "numba brute", f"{dt:.3f}", f"{ours:.3f}", f"{dt / ours:.0f}x", f"{len(rb.pairs):,}", f"{len(r.pairs):,}")

    n_idd = 2_000 if args.quick else 10_000
    hi = clustered(rng, n_idd)
    ours_i, ri = timed(hamming_pairs, hi, t)
    res = imagededup_seconds(hi, t)
    if res is None:
        print("imagededup not installed: anchor skipped")
    else:
        row(f"{n_idd:,}", "imagededup", f"{res[0]:.3f}", f"{ours_i:.4f}", f"{res[0] / ours_i:.0f}x", f"{res[1]:,}",
            f"{len(ri.pairs):,}")

    # faiss at 1M: IndexBinaryFlat is N^2 (~100x its 100k time, full run only);
    # IndexBinaryMultiHash range_search measured ~10x slower than Flat at 100k: 100k only
    faiss_runs = [(100_000, True, True)] + ([] if args.quick or args.no_faiss_1m else [(1_000_000, True, False)])
    for n, flat, multihash in faiss_runs:
        hf = clustered(rng, n)
        ours_f, rf = timed(hamming_pairs, hf, t)
        res = faiss_anchor(hf, t, flat, multihash)
        if res is None:
            print("faiss not installed (pip install faiss-cpu): anchor skipped")
            break
        for name, (dt, pairs) in res.items():
            row(f"{n:,}", f"faiss {name}", f"{dt:.3f}", f"{ours_f:.3f}", f"{dt / ours_f:.1f}x", f"{pairs:,}",
                f"{len(rf.pairs):,}")


if __name__ == "__main__":
    main()
