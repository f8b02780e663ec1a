#!/usr/bin/env python
"""Train a small image classifier, with or without near-duplicate removal (CE-Dedup).

A plain PyTorch training script of the kind most projects already have. Deduplication
is one line: the training DataLoader gets ``sampler=DedupSampler(train_ds, threshold=...)``
instead of ``shuffle=True``. Everything else (model, optimiser, transforms, evaluation)
is unchanged, so the test accuracy and the training time of the two runs compare fairly.

Examples::

    # Fashion-MNIST from Debian's package (apt-get install dataset-fashion-mnist):
    python examples/train_classifier.py --dataset fashion-mnist --root data/fmnist \\
        --fashion-mnist-from-debian --epochs 2                         # full training set
    python examples/train_classifier.py --dataset fashion-mnist --root data/fmnist \\
        --epochs 2 --threshold 8                                       # deduplicated (phash, t=8)
    python examples/train_classifier.py --dataset fashion-mnist --root data/fmnist \\
        --epochs 2 --subset-random 40000                               # random subset baseline

    # Any ImageFolder with train/ and test/ subfolders, e.g. the CIFAR-10 JPEG trees:
    python examples/train_classifier.py --dataset imagefolder --root /tmp/cifar10 --threshold 6
    # ... about twice as fast on a small CPU: decode once, augment whole batches as tensors
    python examples/train_classifier.py --dataset imagefolder --root /tmp/cifar10 --threshold 6 --preload

Nothing is downloaded: torchvision datasets must already be under ``--root``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset, SubsetRandomSampler
from torchvision import datasets, transforms

from torch_dedup import DedupSampler

log = logging.getLogger("train_classifier")

DATASETS = ("fashion-mnist", "mnist", "cifar10", "svhn", "imagefolder")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Per-dataset normalisation (mean, std) of the training split.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagefolder": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


# ----------------------------------------------------------------------------- models
class LeNet(nn.Module):
    """LeNet-style CNN for 28x28 grayscale images (about 0.1 M parameters)."""

    def __init__(self, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(32 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class SmallResNet(nn.Module):
    """A ResNet-8 (three stages of one basic block, 16/32/64 channels) for 32x32 RGB images."""

    def __init__(self, in_channels: int = 3, classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- data
def fashion_mnist_from_debian(root: str | os.PathLike, source: Path = DEBIAN_FASHION_MNIST) -> Path:
    """Lay Debian's Fashion-MNIST files out as ``ROOT/FashionMNIST/raw/`` (decompressed) for torchvision.

    The same as these two shell lines::

        mkdir -p ROOT/FashionMNIST/raw
        for f in /usr/share/datasets/fashion-mnist/*.gz; do
            gunzip -c "$f" > ROOT/FashionMNIST/raw/$(basename "$f" .gz); done
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    missing = [f for f in FASHION_FILES if not (source / f"{f}.gz").exists()]
    if missing:
        sys.exit(f"error: {source} lacks {', '.join(m + '.gz' for m in missing)}; "
                 "install Debian's package: apt-get install dataset-fashion-mnist")
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        dst = raw / name
        if dst.exists():
            continue
        tmp = dst.with_suffix(".tmp")
        with gzip.open(source / f"{name}.gz", "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst)
    return raw


def build_datasets(name: str, root: str, *, image_size: int = 32, augment: bool = True):
    """Return ``(train_ds, test_ds, in_channels)``; exits with a clear message when data is missing."""
    mean, std = STATS[name]
    norm = transforms.Normalize(mean, std)
    if name in ("fashion-mnist", "mnist"):
        cls = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
        tf = transforms.Compose([transforms.ToTensor(), norm])
        try:
            return (cls(root, train=True, transform=tf, download=False),
                    cls(root, train=False, transform=tf, download=False), 1)
        except RuntimeError as exc:
            hint = " (or pass --fashion-mnist-from-debian)" if name == "fashion-mnist" else ""
            sys.exit(f"error: {cls.__name__} not found under --root {root}: {exc}. Place the raw IDX files in "
                     f"{Path(root) / cls.__name__ / 'raw'}{hint}; nothing is downloaded.")
    crop = [transforms.RandomCrop(32, padding=4)] if augment else []
    flip = [transforms.RandomHorizontalFlip()] if augment and name != "svhn" else []  # digits do not flip
    test_tf = transforms.Compose([transforms.ToTensor(), norm])
    if name == "cifar10":
        try:
            return (datasets.CIFAR10(root, train=True, download=False,
                                     transform=transforms.Compose(crop + flip + [transforms.ToTensor(), norm])),
                    datasets.CIFAR10(root, train=False, download=False, transform=test_tf), 3)
        except RuntimeError as exc:
            sys.exit(f"error: CIFAR-10 (python version) not found under --root {root}: {exc}. Unpack "
                     "cifar-10-python.tar.gz there (cifar-10-batches-py/); nothing is downloaded. For JPEG "
                     "folders use --dataset imagefolder.")
    if name == "svhn":
        try:
            return (datasets.SVHN(root, split="train", download=False,
                                  transform=transforms.Compose(crop + [transforms.ToTensor(), norm])),
                    datasets.SVHN(root, split="test", download=False, transform=test_tf), 3)
        except RuntimeError as exc:
            sys.exit(f"error: SVHN not found under --root {root}: {exc}. Put train_32x32.mat and "
                     "test_32x32.mat there; nothing is downloaded.")
    # imagefolder: ROOT/train/<class>/*, ROOT/test/<class>/*
    for split in ("train", "test"):
        if not (Path(root) / split).is_dir():
            sys.exit(f"error: --dataset imagefolder needs {Path(root) / split}/ with one folder per class "
                     f"(--root {root} has no {split}/ folder)")
    size = [transforms.Resize((image_size, image_size))]
    crop = [transforms.RandomCrop(image_size, padding=image_size // 8)] if augment else []
    return (datasets.ImageFolder(str(Path(root) / "train"),
                                 transform=transforms.Compose(size + crop + flip + [transforms.ToTensor(), norm])),
            datasets.ImageFolder(str(Path(root) / "test"),
                                 transform=transforms.Compose(size + [transforms.ToTensor(), norm])), 3)


def fixed_subset(ds, n: int | None):
    """The same ``n`` items of ``ds`` on every run (spread over the set), or ``ds`` itself."""
    if n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(12345).choice(len(ds), size=n, replace=False))
    return Subset(ds, idx.tolist())


class InMemory(torch.utils.data.Dataset):
    """A dataset's raw images decoded once into one uint8 tensor ``(N, C, H, W)``, with its labels.

    Item ``i`` is item ``i`` of the original dataset, so a ``DedupSampler`` built on the original
    drives a DataLoader over this copy unchanged. Augmentation and normalisation run on whole
    batches (:class:`BatchTransform`) instead of per image, which on a small CPU is about
    half of the time of a small ResNet's epoch (``--preload``).
    """

    def __init__(self, ds, image_size: int | None = None):
        from torch_dedup.sources import labels_of, source_of
        src = source_of(ds)
        if src.kind == "array":
            arr = src.array_batch(0, src.n)
        elif src.kind == "files":
            from PIL import Image
            imgs = []
            for path in src.paths():
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    if image_size is not None and im.size != (image_size, image_size):
                        im = im.resize((image_size, image_size), Image.BILINEAR)  # as transforms.Resize
                    imgs.append(np.asarray(im))
            arr = np.stack(imgs)
        else:
            sys.exit(f"error: --preload needs a dataset of arrays or files; {src.description} is neither")
        arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
        self.x = torch.from_numpy(np.ascontiguousarray(arr))
        self.y = torch.from_numpy(np.asarray(labels_of(ds), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class BatchTransform:
    """``RandomCrop(size, padding=pad)`` + ``RandomHorizontalFlip`` + ``Normalize`` on a uint8 batch.

    The same distribution as the per-image torchvision transforms of :func:`build_datasets`
    (zero padding, independent crop offsets and flips per image), drawn from torch's global RNG.
    """

    def __init__(self, mean, std, *, pad: int = 0, flip: bool = False):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.pad, self.flip = pad, flip

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        if train and self.pad:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))
            dy, dx = torch.randint(0, 2 * p + 1, (n,)), torch.randint(0, 2 * p + 1, (n,))
            rows = (dy[:, None] + torch.arange(h)).to(x.device)
            cols = (dx[:, None] + torch.arange(w)).to(x.device)
            x = padded[torch.arange(n, device=x.device)[:, None, None, None],
                       torch.arange(c, device=x.device)[None, :, None, None], rows[:, None, :, None],
                       cols[:, None, None, :]]
        if train and self.flip:
            flip = (torch.rand(n) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = x.float().div_(255)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


_PRELOADED: dict[int, tuple] = {}


def preloaded(ds, image_size: int) -> InMemory:
    """``InMemory(ds)``, decoded once per dataset object (the sweep trains many times on one dataset)."""
    hit = _PRELOADED.get(id(ds))
    if hit is None or hit[0] is not ds:
        t0 = time.perf_counter()
        hit = _PRELOADED[id(ds)] = (ds, InMemory(ds, image_size))
        log.info("preloaded %d images into memory (%.0f MB) in %.1f s", len(ds), hit[1].x.numel() / 2**20,
                 time.perf_counter() - t0)
    return hit[1]


def central_scores(ds, threshold: int, method: str, cache_dir=None) -> np.ndarray:
    """Per-item number of near-duplicates within ``threshold`` (a keep priority: the most central first).

    With greedy, keeping the image with the most near-duplicates first keeps a "medoid" of
    each cluster: the image that stands for the most others.
    """
    from torch_dedup import hamming_pairs, hash_dataset
    h = hash_dataset(ds, method, cache_dir=cache_dir, progress=False)
    valid = np.flatnonzero(h.valid) if h.valid is not None else np.arange(len(h.hashes))
    pairs = hamming_pairs(h.hashes[valid], threshold).pairs
    degree = np.zeros(len(h.hashes), np.int64)
    degree[valid] = np.bincount(pairs.ravel(), minlength=valid.size)
    return degree


def shuffled_scores(n: int, seed: int = 12345) -> np.ndarray:
    """A fixed random keep order (the same for every training seed): which image of a group is
    kept no longer depends on where it sits in the dataset (an ImageFolder is sorted by class)."""
    return np.random.default_rng(seed).permutation(n).astype(np.float64)


def keep_priority(name: str, ds, threshold: int, method: str, cache_dir=None) -> np.ndarray | None:
    """The score array for ``--priority NAME`` (higher kept first), or ``None`` for dataset order."""
    if name == "contrast":
        return contrast_scores(ds)
    if name == "central":
        return central_scores(ds, threshold, method, cache_dir)
    if name == "shuffled":
        return shuffled_scores(len(ds))
    return None


def contrast_scores(ds) -> np.ndarray:
    """Per-item pixel standard deviation of the raw image (a keep priority: higher is kept first)."""
    from torch_dedup.sources import source_of
    src = source_of(ds)
    out = np.empty(src.n, np.float64)
    if src.kind == "array":
        for b in range(0, src.n, 4096):
            out[b:b + 4096] = src.array_batch(b, min(src.n, b + 4096)).reshape(min(src.n, b + 4096) - b, -1).std(1)
        return out
    from PIL import Image
    for i, path in enumerate(src.paths()):
        with Image.open(path) as im:
            out[i] = np.asarray(im.convert("L"), dtype=np.float64).std()
    return out


# ----------------------------------------------------------------------------- training
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, prep=None) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            pred = model(x if prep is None else prep(x, train=False)).argmax(1).cpu()
            correct += (pred == y).sum().item()
            total += len(y)
    return correct / max(total, 1)


def train(args: argparse.Namespace, data=None) -> dict:
    """Train and evaluate once; return the metrics as a dict.

    Args:
        args: options as parsed by :func:`parse_args`.
        data: optional ``(train_ds, test_ds, in_channels)`` to reuse across calls (the sweep
            script builds the datasets once).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.dataset == "fashion-mnist" and args.fashion_mnist_from_debian:
        fashion_mnist_from_debian(args.root)
    train_ds, test_ds, in_ch = data or build_datasets(args.dataset, args.root, image_size=args.image_size)
    train_ds = fixed_subset(train_ds, args.limit)
    test_ds = fixed_subset(test_ds, args.limit_test if args.limit_test is not None else args.limit)
    n_full = len(train_ds)
    torch.manual_seed(args.seed)

    # --- the one line CE-Dedup adds: a sampler over the kept items instead of shuffle=True ---
    t_prep = time.perf_counter()
    if args.threshold is not None:
        priority = keep_priority(args.priority, train_ds, args.threshold, args.method, args.cache_dir)
        sampler = DedupSampler(train_ds, threshold=args.threshold, method=args.method, policy=args.policy,
                               per_class=args.per_class, priority=priority, cache_dir=args.cache_dir,
                               seed=args.seed, progress=False)
        n_used = len(sampler)
    elif args.subset_random is not None:  # the baseline: a random subset of the same size
        if not 1 <= args.subset_random <= n_full:
            sys.exit(f"error: --subset-random {args.subset_random} must be in [1, {n_full}] (the training set size)")
        keep = np.random.default_rng(args.seed).choice(n_full, size=args.subset_random, replace=False)
        sampler = SubsetRandomSampler(keep.tolist(), generator=torch.Generator().manual_seed(args.seed))
        n_used = args.subset_random
    else:
        sampler, n_used = None, n_full
    prep_seconds = time.perf_counter() - t_prep  # hashing (or reading the sidecar) + search + keep decision
    prep = None  # --preload: images decoded once, augmented per batch (the sampler's indices are unchanged)
    if args.preload:
        mean, std = STATS[args.dataset]
        prep = BatchTransform(mean, std, pad=0 if args.dataset in ("fashion-mnist", "mnist") else args.image_size // 8,
                              flip=args.dataset not in ("fashion-mnist", "mnist", "svhn"))
        train_ds, test_ds = preloaded(train_ds, args.image_size), preloaded(test_ds, args.image_size)
    loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)
    test_loader = DataLoader(test_ds, batch_size=512, num_workers=args.workers)
    log.info("training set: %d images before, %d after (%.1f%% removed); test set: %d images",
             n_full, n_used, 100.0 * (1 - n_used / n_full), len(test_ds))

    model = (LeNet(in_ch) if args.dataset in ("fashion-mnist", "mnist") else SmallResNet(in_ch)).to(device)
    fmt = torch.channels_last if isinstance(model, SmallResNet) else torch.contiguous_format  # faster convs
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * len(loader)
    # One-cycle schedule; a handful of steps (tiny smoke runs) is too few for its phases: constant lr.
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.25)
             if steps >= 20 else None)
    per_epoch, train_seconds, cpu_seconds = [], 0.0, 0.0
    for epoch in range(args.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        loss_sum = 0.0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if prep is not None:
                x = prep(x, train=True)
            loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.item() * len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0  # all threads of this process: robust to a busy machine
        acc = evaluate(model, test_loader, device, prep)
        per_epoch.append(acc)
        log.info("epoch %d/%d: loss %.4f, test accuracy %.2f%%, training time so far %.1f s",
                 epoch + 1, args.epochs, loss_sum / n_used, 100 * acc, train_seconds)
    result = {"dataset": args.dataset, "n_train": n_full, "kept": n_used, "ratio": n_used / n_full,
              "threshold": args.threshold, "method": args.method, "policy": args.policy,
              "per_class": bool(args.per_class), "priority": args.priority, "subset_random": args.subset_random,
              "seed": args.seed, "epochs": args.epochs, "accuracy": per_epoch[-1] if per_epoch else float("nan"),
              "accuracy_per_epoch": per_epoch, "train_seconds": train_seconds, "cpu_seconds": cpu_seconds,
              "prep_seconds": prep_seconds,
              "device": device.type}
    log.info("done: %d/%d images, test accuracy %.2f%%, training %.1f s",
             n_used, n_full, 100 * result["accuracy"], train_seconds)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--root", default="data", help="dataset folder (ImageFolder: holds train/ and test/)")
    p.add_argument("--fashion-mnist-from-debian", action="store_true",
                   help=f"first lay out {DEBIAN_FASHION_MNIST}/*.gz as ROOT/FashionMNIST/raw/")
    p.add_argument("--threshold", type=int, default=None,
                   help="Hamming threshold for near-duplicates; omit for no dedup")
    p.add_argument("--method", default="phash", choices=("phash", "dhash", "ahash", "whash"))
    p.add_argument("--policy", default="greedy", choices=("greedy", "components"))
    p.add_argument("--per-class", action="store_true", help="only same-label images can be duplicates")
    p.add_argument("--priority", default="index", choices=("index", "contrast", "central", "shuffled"),
                   help="which image of a group is kept: the first (index), the highest pixel std (contrast), "
                        "the one with the most near-duplicates (central) or a fixed random order (shuffled)")
    p.add_argument("--subset-random", type=int, default=None, metavar="N",
                   help="train on a random subset of N images (the baseline for dedup)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (one-cycle SGD)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--preload", action="store_true",
                   help="decode the images once into memory and augment whole batches as tensors (same "
                        "augmentation, about 2x faster for 32x32 images on a small CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--image-size", type=int, default=32, help="ImageFolder images are resized to this")
    p.add_argument("--cache-dir", default=None, help="where hash sidecars go (default: beside the data)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use a fixed spread-out subset of N training images (and N test images)")
    p.add_argument("--limit-test", type=int, default=None, metavar="N", help="test images with --limit")
    p.add_argument("--json-out", default=None, metavar="FILE", help="write the metrics as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.threshold is not None and args.subset_random is not None:
        build_parser().error("--threshold and --subset-random are alternatives; give one")
    if args.epochs < 1:
        build_parser().error(f"--epochs {args.epochs} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
