"""Hashing throughput: torch_dedup vs imagehash, same run, same images, bits checked.

    python benchmarks/bench_hashing.py           # full (~2-3 min on 2 cores)
    python benchmarks/bench_hashing.py --quick   # small
    python benchmarks/bench_hashing.py --pool    # only: in-process vs worker processes by file count

Single-core figures: BLAS/OpenMP threads are limited to 1 with threadpoolctl and numba
to 1 thread, so "img/s" is per core; the "2 cores" column reruns ours with 2 numba
threads (the prange kernels). Sections:

1. stacked in-memory 32x32 RGB (real CIFAR-10 JPEGs decoded to an array when the shared
   tarball exists, else the embedded Fashion-MNIST sample resized to 32x32 as RGB);
2. JPEG files (CIFAR-10 files unpacked to a temp dir, and generated 500x375 JPEGs):
   imagehash (open + hash) vs hash_images(paths) with workers=0 and workers=2 (each call
   starts and ends its worker processes, so their start-up is in the figure), the decode-only ceiling (open + decode to an array), and
   fast_decode=True with the share of identical hashes and the mean bit difference;
3. phash/whash exact-fallback rates on the embedded sample and CIFAR;
4. (``--pool``) the pool threshold: hash_images(paths, workers=0) against workers=2 on
   growing numbers of CIFAR-10 JPEG files (``hashing.POOL_MIN_FILES`` is set from this).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import imagehash
import numba
import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from torch_dedup.hashing import _methods
from torch_dedup.hashing import api as hashing_api
from torch_dedup.hashing._resample import resize_stack, rgb_to_l
from torch_dedup.hashing.api import METHODS, hash_array, hash_images, to_hex
from torch_dedup.embedded import load_sample

ORACLE = {"ahash": imagehash.average_hash, "dhash": imagehash.dhash, "phash": imagehash.phash, "whash": imagehash.whash}
CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


def _rate(fn, n: int, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def load_cifar_array(limit: int) -> np.ndarray | None:
    """Decode up to ``limit`` CIFAR-10 training JPEGs from the tarball into (N, 32, 32, 3)."""
    if not CIFAR_TAR.exists():
        return None
    out = []
    with tarfile.open(CIFAR_TAR) as tar:
        for member in tar:
            if member.isfile() and member.name.startswith("train/") and member.name.endswith(".jpg"):
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    out.append(np.asarray(im.convert("RGB")))
                if len(out) >= limit:
                    break
    return np.stack(out)


def bench_stacked(stack: np.ndarray, n_oracle: int, label: str) -> None:
    print(f"\n## stacked in-memory {stack.shape[1]}x{stack.shape[2]} RGB ({label}), N={len(stack)}, hash_size 8")
    print(f"{'method':8s} {'imagehash img/s':>16s} {'ours img/s':>12s} {'ratio':>8s} {'ours 2 cores':>13s}  bits")
    pil = [Image.fromarray(a) for a in stack[:n_oracle]]
    for method in METHODS:
        hash_array(stack[:64], method)  # warm up numba / caches
        ref_rate = _rate(lambda: [ORACLE[method](im) for im in pil], len(pil))
        ours_rate = _rate(lambda: hash_array(stack, method), len(stack), repeat=3)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        with threadpool_limits(limits=2):
            hash_array(stack[:4096], method)  # compile / warm the parallel kernels
            two_rate = _rate(lambda: hash_array(stack, method), len(stack), repeat=3)
        numba.set_num_threads(1)
        same = to_hex(hash_array(stack[:n_oracle], method)) == [str(ORACLE[method](im)) for im in pil]
        print(f"{method:8s} {ref_rate:16,.0f} {ours_rate:12,.0f} {ours_rate / ref_rate:7.1f}x {two_rate:13,.0f}  "
              f"{'identical' if same else 'DIFFERENT'} ({n_oracle} checked)")


def bench_files(paths: list[Path], label: str) -> None:
    print(f"\n## JPEG files: {label}, N={len(paths)}, hash_size 8 (decode-bound)")
    print(f"{'method':8s} {'imagehash/core':>15s} {'ours w=0':>10s} {'ratio':>7s} {'ours w=2':>10s}  "
          f"{'fast_decode':>11s} {'fd same':>8s} {'fd bits':>8s}")

    def oracle(method):
        out = []
        for p in paths:
            with Image.open(p) as im:
                out.append(str(ORACLE[method](im)))
        return out

    def decode_only():
        for p in paths:
            with Image.open(p) as im:
                np.asarray(im)

    ceiling = _rate(decode_only, len(paths), repeat=2)
    print(f"decode-only ceiling (Image.open + np.asarray, per core): {ceiling:,.0f} files/s")
    for method in ("phash", "dhash", "ahash", "whash"):
        t = time.perf_counter()
        ref = oracle(method)
        ref_rate = len(paths) / (time.perf_counter() - t)
        t = time.perf_counter()
        ours = hash_images(paths, method)
        r0 = len(paths) / (time.perf_counter() - t)
        t = time.perf_counter()
        with _pool_from(1):
            ours2 = hash_images(paths, method, workers=2)
        r2 = len(paths) / (time.perf_counter() - t)
        t = time.perf_counter()
        fast = hash_images(paths, method, fast_decode=True)
        rf = len(paths) / (time.perf_counter() - t)
        assert to_hex(ours) == ref and to_hex(ours2) == ref, f"{method}: bits differ from imagehash"
        diff = np.bitwise_xor(fast.hashes, ours.hashes)
        bits = np.array([bin(int(x)).count("1") for x in diff.ravel()]).reshape(len(paths), -1).sum(1)
        print(f"{method:8s} {ref_rate:15,.0f} {r0:10,.0f} {r0 / ref_rate:6.1f}x {r2:10,.0f}  {rf:11,.0f} "
              f"{(bits == 0).mean():8.1%} {bits.mean():8.2f}")


@contextlib.contextmanager
def _pool_from(n_files: int):
    """Let ``hash_images`` start its worker processes from ``n_files`` files on (to time the pool itself)."""
    saved, hashing_api.POOL_MIN_FILES = hashing_api.POOL_MIN_FILES, n_files
    try:
        yield
    finally:
        hashing_api.POOL_MIN_FILES = saved


def bench_pool(paths: list[Path], sizes: list[int], workers: int = 2, repeat: int = 2) -> None:
    """Seconds for N files in this process vs in ``workers`` processes started and ended by the call."""
    print(f"\n## pool threshold: CIFAR-10 32x32 JPEG files, phash, best of {repeat}; workers={workers} "
          f"includes starting and ending the processes; this process's numba kernels already loaded")
    print(f"{'files':>7s} {'in-process s':>13s} {'workers s':>10s} {'ratio':>7s}")
    hash_images(paths[:64], "phash")  # load this process's kernels once, as any earlier call would
    rows = []
    for n in sizes:
        part = paths[:n]
        t0 = min(_timed(lambda: hash_images(part, "phash")) for _ in range(repeat))
        with _pool_from(1):
            tw = min(_timed(lambda: hash_images(part, "phash", workers=workers)) for _ in range(repeat))
        rows.append((n, t0, tw))
        print(f"{n:7,d} {t0:13.3f} {tw:10.3f} {tw / t0:6.2f}x")
    faster = [n for n, t0, tw in rows if tw < t0]
    print(f"smallest N where workers={workers} beat in-process: {faster[0] if faster else 'none measured'}; "
          f"hashing.POOL_MIN_FILES = {hashing_api.POOL_MIN_FILES}")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fallback_rates(gray: np.ndarray, label: str) -> None:
    parts = []
    for method, size in (("phash", 8), ("phash", 16), ("whash", 8), ("whash", 16)):
        tw, th = _methods.resize_target(method, size, gray.shape[2], gray.shape[1])
        small = resize_stack(gray, tw, th)
        fn = _methods.phash_words if method == "phash" else _methods.whash_bits
        _, fb = fn(small, size)
        parts.append(f"{method}/{size}: {fb}/{len(gray)} ({fb / len(gray):.2%})")
    print(f"exact-fallback rate on {label}: " + ", ".join(parts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (~30 s)")
    ap.add_argument("--pool", action="store_true", help="only the pool threshold section (~2 min)")
    args = ap.parse_args(argv)
    if args.pool:
        return main_pool()
    n_stack, n_oracle, n_files, n_big = (5000, 500, 600, 60) if args.quick else (50000, 2000, 3000, 200)

    numba.set_num_threads(1)
    with threadpool_limits(limits=1):
        print("single core: BLAS/OpenMP threads limited to 1 (threadpoolctl); numba kernels are serial")
        cifar = load_cifar_array(n_stack)
        if cifar is not None:
            stack, label = cifar, "real CIFAR-10 JPEGs decoded"
        else:
            x = resize_stack(load_sample()[0], 32, 32)
            stack = np.stack([x, x[:, ::-1], x[:, :, ::-1]], -1)
            stack, label = np.resize(stack, (n_stack,) + stack.shape[1:]), "embedded sample as RGB"
        bench_stacked(stack, n_oracle, label)

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if CIFAR_TAR.exists():
                with tarfile.open(CIFAR_TAR) as tar:
                    members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
                    members = members[:: max(1, len(members) // n_files)][:n_files]
                    tar.extractall(tmp / "cifar", members=members, filter="data")
                bench_files(sorted((tmp / "cifar").rglob("*.jpg")), "CIFAR-10 32x32 JPEGs")
            rng = np.random.default_rng(0)
            big = []
            sample = load_sample(n_big)[0]
            for i in range(n_big):
                base = Image.fromarray(sample[i]).resize((500, 375), Image.Resampling.BICUBIC)
                noise = rng.integers(0, 40, (375, 500, 3), dtype=np.uint8)
                rgb = np.clip(np.asarray(base)[..., None].astype(int) + noise, 0, 255).astype(np.uint8)
                p = tmp / f"big{i}.jpg"
                Image.fromarray(rgb).save(p, quality=90)
                big.append(p)
            bench_files(big, "generated 500x375 JPEGs")

        print()
        fallback_rates(load_sample()[0], "embedded sample (10,000 x 28x28)")
        if cifar is not None:
            fallback_rates(rgb_to_l(cifar), f"CIFAR-10 ({len(cifar)} x 32x32)")
    return 0


def main_pool() -> int:
    if not CIFAR_TAR.exists():
        print(f"{CIFAR_TAR} not found: the pool threshold is measured on the CIFAR-10 JPEGs")
        return 1
    sizes = [1000, 2000, 4000, 8000, 16000, 32000]
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(CIFAR_TAR) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")][:sizes[-1]]
            tar.extractall(tmp, members=members, filter="data")
        bench_pool(sorted(Path(tmp).rglob("*.jpg")), sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
