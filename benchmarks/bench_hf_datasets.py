"""Planning a Hugging Face ``datasets.Dataset`` against the same JPEG files as an ``ImageFolder``.

Both read the same CIFAR-10 JPEGs (../shared/data/cifar10-jpg.tar.gz, unpacked to a temp
folder): the ``ImageFolder`` through its file paths, the Hugging Face dataset through its
stored ``Image()`` column (file paths, or the files' bytes embedded in the Arrow table with
``--embed``). Reported in the same run: images/s of a cold plan (hashing + search + keep,
no sidecar), seconds of a warm plan (sidecar hit), and the ratio HF / ImageFolder. The kept
indices must be identical (asserted: it is the correctness claim, not a timing).

Usage::

    python benchmarks/bench_hf_datasets.py                 # 10,000 training JPEGs
    python benchmarks/bench_hf_datasets.py --n 50000 --embed
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


def _unpack(dest: Path, n: int) -> Path:
    with tarfile.open(TAR) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/train/" in f"/{m.name}"]
        members.sort(key=lambda m: m.name)
        step = max(1, len(members) // n)
        tar.extractall(dest, members=members[::step][:n], filter="data")
    return next(p for p in dest.rglob("train") if p.is_dir())


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="training JPEGs to use (default 10000)")
    ap.add_argument("--threshold", type=int, default=6)
    ap.add_argument("--embed", action="store_true", help="store the JPEG bytes in the Arrow table (not paths)")
    args = ap.parse_args()
    if not TAR.exists():
        print(f"{TAR} is absent: this benchmark needs the CIFAR-10 JPEGs from ../shared/data", file=sys.stderr)
        return 2
    import datasets
    import torchvision

    from torch_dedup import plan_dataset

    work = Path(tempfile.mkdtemp(prefix="bench-hf-"))
    try:
        root = _unpack(work / "data", args.n)
        folder = torchvision.datasets.ImageFolder(str(root))
        paths = [p for p, _ in folder.samples]
        labels = [c for _, c in folder.samples]
        features = datasets.Features({"image": datasets.Image(),
                                      "label": datasets.ClassLabel(names=folder.classes)})
        if args.embed:
            rows = {"image": [{"bytes": Path(p).read_bytes(), "path": None} for p in paths], "label": labels}
        else:
            rows = {"image": paths, "label": labels}
        hf = datasets.Dataset.from_dict(rows, features=features)
        n = len(folder)
        common = dict(threshold=args.threshold, progress=False)
        # compile the numba kernels before timing anything (the first plan would pay for it)
        from torch_dedup import find_duplicates, hash_images
        find_duplicates(hash_images(paths[:64]).hashes, args.threshold)
        cache_f, cache_h = work / "cache-folder", work / "cache-hf"
        p_f, cold_f = _timed(lambda: plan_dataset(folder, cache_dir=cache_f, **common))
        p_h, cold_h = _timed(lambda: plan_dataset(hf, cache_dir=cache_h, **common))
        _, warm_f = _timed(lambda: plan_dataset(folder, cache_dir=cache_f, **common))
        w_h, warm_h = _timed(lambda: plan_dataset(hf, cache_dir=cache_h, **common))
        assert p_f.kept_indices.tolist() == p_h.kept_indices.tolist(), "HF and ImageFolder plans differ"
        assert w_h.provenance.get("from_cache"), "the second HF plan was not served from its sidecar"
        storage = "embedded bytes" if args.embed else "file paths"
        print(f"{n} CIFAR-10 JPEGs, threshold {args.threshold}, HF Image() column holding {storage}")
        print(f"{'':24}{'cold img/s':>12}{'warm s':>10}")
        print(f"{'ImageFolder':24}{n / cold_f:12.0f}{warm_f:10.2f}")
        print(f"{'datasets.Dataset':24}{n / cold_h:12.0f}{warm_h:10.2f}")
        print(f"HF / ImageFolder: cold throughput {cold_f / cold_h:.2f}x, warm time {warm_h / warm_f:.2f}x; "
              f"kept {p_h.n_kept} of {n} in both")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
