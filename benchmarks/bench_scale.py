"""Scale figures: search time and memory per hash vs N, shard hashing on the local and Ray
engines, and the distributed-plan simulation against the single-node plan.

Prints, from one run on this machine:

* ``hamming_pairs`` + ``find_duplicates`` (components) at t=6 on clustered 64-bit hashes,
  N = 10^5 .. 10^7: wall and CPU seconds, ns per hash (CPU), peak extra RSS per hash;
  these are the per-core rates ``docs/scaling.md`` extrapolates from;
* shard hashing samples/s: local engine in this process, local engine with worker
  processes, Ray engine (local cluster, same CPUs), on the same shards (ratio Ray/local);
* the Ray shuffle-verify-components simulation (``torch_dedup.engines.ray_plan``):
  rows shuffled, pairs verified, time, and equality with ``find_duplicates``.

Usage::

    python benchmarks/bench_scale.py            # N up to 10^7 (minutes), 8 shards x 400 samples
    python benchmarks/bench_scale.py --quick    # N up to 10^6, 4 x 100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_search import PeakRSS, clustered, timed_cpu

warnings.filterwarnings("ignore", category=ResourceWarning)


def row(*cells):
    print("  ".join(f"{c:>13}" for c in cells))


def search_scale(sizes, t: int) -> None:
    from torch_dedup.hamming.cluster import find_duplicates
    from torch_dedup.hamming.search import _plan, hamming_pairs, unique_hashes

    workers = len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)
    hamming_pairs(clustered(rng, 5000), t)  # load kernels from the numba cache
    find_duplicates(clustered(rng, 5000), t, policy="components")
    print(f"\n## search + plan vs N, t={t}, clustered 64-bit, {workers} threads")
    row("N", "plan", "pairs s", "pairs cpu s", "ns/hash cpu", "pairs B/hash", "plan s", "plan cpu s",
        "plan B/hash", "pairs")
    for n in sizes:
        h = clustered(rng, n)
        kind, blocks, _ = _plan(len(unique_hashes(h)[0]), None, 1, t, "auto", workers)
        with PeakRSS() as m1:
            dt, cpu, r = timed_cpu(hamming_pairs, h, t)
        n_pairs = len(r.pairs)
        del r
        with PeakRSS() as m2:
            dt2, cpu2, _ = timed_cpu(find_duplicates, h, t, policy="components")
        row(f"{n:,}", f"{kind}/{blocks}", f"{dt:.2f}", f"{cpu:.2f}", f"{cpu / n * 1e9:.0f}", f"{m1.extra / n:.0f}",
            f"{dt2:.2f}", f"{cpu2:.2f}", f"{m2.extra / n:.0f}", f"{n_pairs:,}")
        del h


def hashing_engines(n_shards: int, per_shard: int, size: int, cpus: int) -> None:
    import ray

    from torch_dedup.wds.shards import hash_shards
    from torch_dedup.wds.synthetic import make_demo_shards

    tmp = tempfile.mkdtemp(prefix="bench-scale-")
    urls = make_demo_shards(os.path.join(tmp, "shards"), n_shards=n_shards, per_shard=per_shard, size=size)
    n = n_shards * per_shard
    print(f"\n## shard hashing, {n_shards} shards x {per_shard} JPEGs of {size}x{size} (refresh: every shard hashed)")
    row("engine", "s", "samples/s", "vs local-1")
    t0 = time.perf_counter()
    hash_shards(urls, sidecar_dir=os.path.join(tmp, "l0"), workers=0, progress=False)
    base = time.perf_counter() - t0
    row("local, 1 proc", f"{base:.2f}", f"{n / base:.0f}", "1.00x")
    t0 = time.perf_counter()
    hash_shards(urls, sidecar_dir=os.path.join(tmp, "l2"), workers=cpus, progress=False)
    dt = time.perf_counter() - t0
    row(f"local, {cpus} procs", f"{dt:.2f}", f"{n / dt:.0f}", f"{base / dt:.2f}x")
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t0
    t0 = time.perf_counter()
    hash_shards(urls, sidecar_dir=os.path.join(tmp, "r1"), engine="ray", progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    hash_shards(urls, sidecar_dir=os.path.join(tmp, "r2"), engine="ray", progress=False)
    dt = time.perf_counter() - t0
    row(f"ray, {cpus} CPUs", f"{dt:.2f}", f"{n / dt:.0f}", f"{base / dt:.2f}x")
    print(f"(ray.init {init:.1f} s and a first call with cold workers {first:.2f} s, not counted above)")


def simulation(n: int, t: int) -> None:
    from torch_dedup.engines.ray_plan import _tables, distributed_plan
    from torch_dedup.hamming.cluster import find_duplicates
    from torch_dedup.hamming.search import unique_hashes, unique_pairs

    h = clustered(np.random.default_rng(1), n)
    u = unique_hashes(h)[0]
    tables = len(_tables(t + 2, t))
    print(f"\n## distributed plan simulation on Ray, N={n:,}, t={t}: {tables} tables (n_blocks={t + 2}), "
          f"{tables * len(u):,} rows shuffled ({tables * len(u) * 16 / 1e6:.1f} MB at 16 B/row)")
    row("policy", "ray s", "1-node s", "equal", "kept", "pairs")
    for policy in ("components", "greedy"):
        t0 = time.perf_counter()
        keep, rep = distributed_plan(h, t, policy=policy, n_parts=8, n_mappers=4)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = find_duplicates(h, t, policy=policy)
        dt1 = time.perf_counter() - t0
        same = np.array_equal(keep, plan.keep) and np.array_equal(rep, plan.representative)
        row(policy, f"{dt:.2f}", f"{dt1:.3f}", str(same), f"{int(keep.sum()):,}", f"{len(unique_pairs(u, t).pairs):,}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run")
    ap.add_argument("--threshold", type=int, default=6)
    ap.add_argument("--max-n", type=float, default=None, help="largest N of the search table")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: search,hashing,simulation")
    args = ap.parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    skip = set(filter(None, args.skip.split(",")))
    print(f"# bench_scale: {cpus} cores, load average {os.getloadavg()[0]:.1f}, "
          f"{'quick' if args.quick else 'full'} run")
    max_n = int(args.max_n or (1e6 if args.quick else 1e7))
    sizes = [s for s in (100_000, 300_000, 1_000_000, 3_000_000, 10_000_000) if s <= max_n]
    if "search" not in skip:
        search_scale(sizes, args.threshold)
    if "simulation" not in skip or "hashing" not in skip:
        import ray
    if "hashing" not in skip:
        hashing_engines(*((4, 100, 96) if args.quick else (8, 400, 128)), cpus)
    if "simulation" not in skip:
        simulation(20_000 if args.quick else 100_000, args.threshold)


if __name__ == "__main__":
    main()
