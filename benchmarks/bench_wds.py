"""Shard dedup speed: hashing samples/s against decoding alone, and the filter's overhead.

Anchors measured in the same run, on the same shards:

* hashing: ``hash_shards`` (read tar, decode, hash, write sidecars) against a
  decode-only pass (``wds.WebDataset(urls).decode("pil")``, every image decoded);
  both in this process, and hashing also with worker processes;
* filter: an unfiltered pipeline that decodes images (``WebDataset -> decode("pil") ->
  to_tuple``) against the same with ``dedup_filter`` placed before ``decode``, for a plan
  that drops nothing (pure overhead; target <= 5%) and for the real plan (dropped samples
  are never decoded, so it is faster).

Usage::

    python benchmarks/bench_wds.py            # 8 shards x 500 samples of 256x256 JPEGs
    python benchmarks/bench_wds.py --quick    # 4 x 150 at 128x128
    python benchmarks/bench_wds.py --shards 'data/shard-{000000..000009}.tar'
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", category=ResourceWarning)


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run")
    ap.add_argument("--shards", help="existing shards (brace pattern) instead of generated ones")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="hashing processes for the parallel run")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    args = ap.parse_args(argv)

    import numpy as np
    import webdataset as wds

    from torch_dedup.wds import dedup_filter, hash_shards, plan_shards
    from torch_dedup.wds.shard_urls import expand_shard_urls
    from torch_dedup.wds.synthetic import make_demo_shards

    tmp = tempfile.mkdtemp(prefix="bench-wds-")
    if args.shards:
        urls = expand_shard_urls(args.shards)
    else:
        n_shards, per_shard, size = (4, 150, 128) if args.quick else (8, 500, 256)
        urls = make_demo_shards(os.path.join(tmp, "shards"), n_shards, per_shard, dup_fraction=0.2, size=size)
    side = os.path.join(tmp, "side")
    h = hash_shards(urls, workers=0, progress=False, sidecar_dir=side)  # warm-up (numba cache, page cache)
    n = h.n_samples
    n_img = int(sum(int(sc.has_image.sum()) for sc in h.sidecars))
    print(f"{len(urls)} shards, {n} samples ({n_img} images)")

    def decode_only():
        for _ in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
            pass

    t_dec = _best(decode_only, args.repeat)
    t_hash = _best(lambda: hash_shards(urls, workers=0, progress=False, sidecar_dir=side, refresh=True), args.repeat)
    t_par = _best(lambda: hash_shards(urls, workers=args.workers, progress=False, sidecar_dir=side, refresh=True), 1)
    print("hashing (samples/s):")
    print(f"  decode-only baseline, 1 process : {n / t_dec:9.0f}")
    print(f"  hash_shards, 1 process         : {n / t_hash:9.0f}   ratio to decode-only {t_dec / t_hash:.2f}")
    print(f"  hash_shards, {args.workers} workers        : {n / t_par:9.0f}   ratio to decode-only {t_dec / t_par:.2f}")

    plan = plan_shards(h, 6)
    # the same plan with nothing dropped: every sample is looked up and passed (pure overhead)
    nodrop = dataclasses.replace(plan, drop=np.zeros(plan.n, dtype=bool), path=None)

    def pipeline(stage=None):
        ds = wds.WebDataset(urls, shardshuffle=False)
        if stage is not None:
            ds = ds.compose(stage)
        count = 0
        for _ in ds.decode("pil").to_tuple("__key__", "jpg;png;jpeg;webp;ppm;bmp;txt"):
            count += 1
        return count

    t_plain = _best(pipeline, args.repeat)
    t_nodrop = _best(lambda: pipeline(dedup_filter(nodrop, verify=True)), args.repeat)
    t_plan = _best(lambda: pipeline(dedup_filter(plan)), args.repeat)
    print("filter (pipeline that decodes images):")
    print(f"  unfiltered                      : {n / t_plain:9.0f} samples/s")
    print(f"  dedup_filter, plan drops 0      : {n / t_nodrop:9.0f} samples/s   overhead "
          f"{100 * (t_nodrop / t_plain - 1):+.1f}% (target <= 5%)")
    print(f"  dedup_filter, threshold 6 plan  : {n / t_plan:9.0f} samples/s in, {plan.n_kept} of {n} out; "
          f"time {t_plan / t_plain:.2f}x the unfiltered pipeline")

    raw = list(wds.WebDataset(urls, shardshuffle=False))
    f = dedup_filter(nodrop)
    t_raw = _best(lambda: sum(1 for _ in f(iter(raw))), args.repeat)
    print(f"  filter alone, in-memory samples : {1e9 * t_raw / len(raw):9.0f} ns per sample")


if __name__ == "__main__":
    main()
