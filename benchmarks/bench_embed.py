"""Bring-your-own embedding: images/s of the embedding path on CPU, next to phash measured in the same run.

    python benchmarks/bench_embed.py                   # small CNN, 2,000 images (~1 min on 2 cores)
    python benchmarks/bench_embed.py --model resnet18  # torchvision resnet18, random weights (weights=None)
    python benchmarks/bench_embed.py -n 5000 --batch-size 128

Images: the CIFAR-10 JPEGs under /tmp/cifar (``train/<class>/*.jpg``) when present, else the
shared tarball unpacked to a temp folder, else the embedded Fashion-MNIST sample written as PNGs.
Nothing is downloaded: the models are built here with random weights (speed does not depend
on the weights' values).

Rows (best of ``--repeat``; images/s and the ratio to phash of the same input):

1. files: ``hash_images(paths, "phash")`` (the anchor) against ``embed_images(paths, model)``
   (decode in this process, default transform, batched forward);
2. in memory (a decoded uint8 stack): ``hash_array(stack, "phash")`` against
   ``embed_images(stack, model)`` (the model alone, no decode);
3. codes: ``fit_embeddings`` + ``EmbeddingFit.codes`` (256 bits) of the embeddings;
4. ``embed_dataset`` of an array dataset, cold (embeddings computed, sidecar written) and
   warm (sidecar read: no model call).
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from torch_dedup.embedded import load_sample
from torch_dedup.embedding import embed_dataset, embed_images, fit_embeddings
from torch_dedup.hashing import hash_array, hash_images

CIFAR_DIR = Path("/tmp/cifar")
CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


class SmallCNN(torch.nn.Module):
    """Four 3x3 conv layers (32-64-128-256 channels, stride 2 from the second), global average pooling: D=256."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layers, c = [], 3
        for k, width in enumerate((32, 64, 128, 256)):
            layers += [torch.nn.Conv2d(c, width, 3, stride=1 if k == 0 else 2, padding=1), torch.nn.ReLU()]
            c = width
        self.net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        return self.net(x)


def _model(name: str) -> torch.nn.Module:
    if name == "cnn":
        return SmallCNN()
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()  # the 512-d pooled features
    return net


def _paths(n: int, tmp: str) -> tuple[list[str], str]:
    roots = [CIFAR_DIR / "train"] if (CIFAR_DIR / "train").is_dir() else []
    if not roots and CIFAR_TAR.exists():
        with tarfile.open(CIFAR_TAR) as tar:
            tar.extractall(tmp, filter="data")
        roots = [p for p in Path(tmp).rglob("train") if p.is_dir()]
    if roots:
        files = sorted(str(p) for p in roots[0].rglob("*.jpg"))
        pick = np.random.default_rng(0).choice(len(files), size=min(n, len(files)), replace=False)
        return [files[i] for i in sorted(pick)], f"CIFAR-10 JPEGs 32x32 ({roots[0]})"
    images = load_sample(min(n, 10000))[0]
    out = []
    for k, img in enumerate(images):
        out.append(str(Path(tmp) / f"{k:05d}.png"))
        Image.fromarray(img).save(out[-1])
    return out, "embedded Fashion-MNIST sample as PNGs 28x28"


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


class ArrayDataset(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--model", choices=("cnn", "resnet18"), default="cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    model = _model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        paths, what = _paths(args.n, tmp)
        n = len(paths)
        stack = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        print(f"{n} images: {what}; model {args.model} ({sum(p.numel() for p in model.parameters()):,} parameters), "
              f"batch {args.batch_size}, torch {torch.__version__} with {torch.get_num_threads()} threads, CPU")
        embed_images(stack[:args.batch_size], model, batch_size=args.batch_size)  # warm-up (allocator, oneDNN)
        hash_images(paths[:64], "phash")
        rows = []
        t_phash = _best(lambda: hash_images(paths, "phash"), args.repeat)
        t_embed = _best(lambda: embed_images(paths, model, batch_size=args.batch_size), args.repeat)
        rows.append(("files: phash (anchor)", n / t_phash, 1.0))
        rows.append(("files: embed_images", n / t_embed, t_phash / t_embed))
        t_phash_mem = _best(lambda: hash_array(stack, "phash"), args.repeat)
        t_embed_mem = _best(lambda: embed_images(stack, model, batch_size=args.batch_size), args.repeat)
        rows.append(("memory: hash_array phash (anchor)", n / t_phash_mem, 1.0))
        rows.append(("memory: embed_images", n / t_embed_mem, t_phash_mem / t_embed_mem))
        emb = embed_images(stack, model, batch_size=args.batch_size)
        t_codes = _best(lambda: fit_embeddings(emb, bits=256).codes(emb), args.repeat)
        rows.append((f"codes: fit + codes, 256 bits, D={emb.shape[1]}", n / t_codes, t_phash_mem / t_codes))
        ds = ArrayDataset(stack)
        cache = Path(tmp) / "cache"
        t0 = time.perf_counter()
        cold = embed_dataset(ds, model, cache_dir=cache, batch_size=args.batch_size, progress=False)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = embed_dataset(ds, model, cache_dir=cache, batch_size=args.batch_size, progress=False)
        t_warm = time.perf_counter() - t0
        assert warm.from_cache and not cold.from_cache and np.array_equal(warm.hashes, cold.hashes)
        rows.append(("embed_dataset cold (array dataset)", n / t_cold, t_phash_mem / t_cold))
        rows.append(("embed_dataset warm (sidecar hit)", n / t_warm, t_phash_mem / t_warm))
        width = max(len(r[0]) for r in rows)
        print(f"{'':{width}}  {'images/s':>10}  {'x phash':>8}  {'phash is':>10}")
        for name, rate, ratio in rows:
            print(f"{name:{width}}  {rate:10,.0f}  {ratio:8.3g}  {1 / ratio:8,.0f} x")


if __name__ == "__main__":
    main()
