"""Deduplicate a webdataset corpus: hash shards -> one global plan -> filter the stream -> rewrite shards.

Runs on generated shards with injected near-duplicates (default), or on your own::

    python examples/webdataset_pipeline.py
    python examples/webdataset_pipeline.py --shards 'data/shard-{000000..000099}.tar' --threshold 6 --work out/

Steps (the same as ``torch-dedup wds hash|plan|rewrite``):

1. ``hash_shards``: one sidecar per shard (skipped next time while the shard is unchanged);
2. ``plan_shards``: near-duplicates across *all* shards; the plan file lists the keys to drop;
3. ``dedup_filter``: the training pipeline drops exactly those samples, before decoding,
   with shuffled shards and DataLoader workers;
4. ``rewrite_shards``: new shards without the duplicates (saves the I/O every epoch).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import tempfile
import warnings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", help="shard paths/URLs as a brace pattern (default: generate demo shards)")
    ap.add_argument("--work", help="folder for generated shards, the plan and the rewritten shards "
                                   "(default: a temporary folder)")
    ap.add_argument("--threshold", type=int, default=6, help="Hamming threshold (default 6)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the filtered stream (default 2)")
    ap.add_argument("--no-rewrite", action="store_true", help="skip writing deduplicated shards")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=ResourceWarning)  # webdataset leaves shard files to the GC

    import torch
    import webdataset as wds

    from torch_dedup.wds import dedup_filter, hash_shards, plan_shards, rewrite_shards
    from torch_dedup.wds.synthetic import make_demo_shards

    work = args.work or tempfile.mkdtemp(prefix="torch-dedup-wds-")
    if args.shards:
        urls = args.shards
    else:
        paths = make_demo_shards(os.path.join(work, "shards"), n_shards=6, per_shard=100, dup_fraction=0.25,
                                 no_image_every=50)
        urls = os.path.join(work, "shards", f"shard-{{000000..{len(paths) - 1:06d}}}.tar")
        print(f"generated {len(paths)} shards in {os.path.dirname(paths[0])}")

    # 1. hash (incremental: run it again and every shard comes from its sidecar)
    h = hash_shards(urls)
    print(f"hashed {len(h.hashed)} shards, {len(h.cached)} from sidecars: {h.n_samples} samples, "
          f"{len(h.no_image)} without an image")

    # 2. one plan across all shards
    plan = plan_shards(h, args.threshold, out=os.path.join(work, "dedup.tdplan"))
    s = plan.summary
    print(f"plan: drop {s['n_dropped']} of {s['n']} samples ({100 * s['ratio']:.1f}%), saved to {plan.path}")
    for g in s["largest_groups"][:3]:
        print(f"  group of {g['size']}: keep {g['kept']}, drop {g['dropped'][:3]}")

    # 3. the filtered stream: shuffled shards, several DataLoader workers, filter before decode
    ds = (wds.WebDataset(urls, shardshuffle=100, seed=0)
          .compose(dedup_filter(plan.path))
          .decode("pil")
          .map(lambda sample: (sample["__url__"], sample["__key__"])))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=args.workers)
    seen = collections.Counter(tuple(x) for x in loader)
    exact = seen == collections.Counter(plan.kept())
    print(f"filtered stream: {sum(seen.values())} samples, equal to the plan's kept set: {exact}")

    # 4. deduplicated shards
    if not args.no_rewrite:
        res = rewrite_shards(plan, os.path.join(work, "dedup-shards"), maxcount=200, overwrite=True)
        print(f"rewrote {res.n_written} samples into {len(res.shards)} shards in {os.path.dirname(res.shards[0])}")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
