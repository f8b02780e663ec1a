"""The demo behind ``torch-dedup demo``: CE-Dedup's trade-off on the embedded sample, in minutes.

It splits the embedded 10,000 Fashion-MNIST images into a training part and a held-out
part, hashes the training part once (the sidecar makes later runs instant), prints how
many images each threshold keeps (one search for the whole sweep), then trains the same
small CNN on the full training part, on the deduplicated part at a few thresholds
(``DedupSampler`` — the one line a user adds), and on a random subset of the same size
(the baseline that says whether dedup beats plain subsampling). It writes a CSV and, when
matplotlib is installed, a PNG plot, and returns the rows.

Layer 5: uses only the public pieces below it.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler

from .hamming.cluster import sweep_thresholds
from .dataset_hashes import hash_dataset
from .embedded import SampleDataset
from .sampler import DedupSampler

__all__ = ["DemoRow", "LeNet", "run_demo"]

logger = logging.getLogger(__name__)


class LeNet(nn.Module):
    """A LeNet-style CNN for 28x28 grayscale images (small enough for 2 CPU cores)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, classes))

    def forward(self, x):
        return self.head(self.features(x))


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.float32, copy=True)).div_(255.0).sub_(0.2860).div_(0.3530)[None]


@dataclass
class DemoRow:
    """One training run of the demo."""

    subset: str          # "full", "dedup" or "random"
    threshold: int | None
    kept: int
    removed_pct: float
    accuracy: float
    train_seconds: float


def _train_eval(train_ds, sampler, eval_ds, *, epochs: int, seed: int, device: torch.device,
                batch_size: int = 128) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = LeNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(eval_ds, batch_size=512):
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct / len(eval_ds), seconds


def _plot(rows: list[DemoRow], sweep: np.ndarray, n: int, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed (pip install 'torch_dedup[plot]'); no plot written")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ts = np.arange(len(sweep))
    ax1.plot(ts, 100 * (1 - sweep / n), marker="o")
    ax1.set_xlabel("Hamming threshold t (phash, 64 bits)")
    ax1.set_ylabel("images removed (%)")
    ax1.set_title("How much each threshold removes")
    ax1.grid(alpha=0.3)
    for subset, style in (("dedup", "o-"), ("random", "s--")):
        pts = sorted((r.removed_pct, 100 * r.accuracy) for r in rows if r.subset in (subset, "full"))
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{subset} subset")
    ax2.set_xlabel("training images removed (%)")
    ax2.set_ylabel("held-out accuracy (%)")
    ax2.set_title("Accuracy vs dataset reduction")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out_dir: str | os.PathLike = "torch_dedup_demo", *, thresholds=(6, 10), max_threshold: int = 16,
             epochs: int = 3, seed: int = 0, n_train: int = 8000, n_eval: int = 2000, device: str = "auto",
             threads: int | None = None, progress: bool = True, echo=None) -> dict:
    """Run the demo and write ``demo.csv`` (and ``demo.png``) into ``out_dir``.

    Args:
        out_dir: where the results and the hash sidecar go.
        thresholds: thresholds to train at (besides the full set).
        max_threshold: the sweep of kept counts covers ``0..max_threshold``.
        epochs, seed: training settings (same for every run).
        n_train, n_eval: the embedded sample's first ``n_train`` images train, the next ``n_eval`` evaluate.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        threads: torch CPU threads for training; ``None``: half the cores (at least 1). A
            small CNN gains little from more, and oversubscribed OpenMP threads on a busy
            machine are several times slower than one thread (measured 23 s vs 3 s per epoch).
        progress: progress bars while hashing.
        echo: callable that receives each line of the human-readable report (the CLI passes
            ``print``); ``None`` logs them at INFO.

    Returns:
        ``{"sweep": [...], "rows": [DemoRow...], "csv": path, "plot": path or None}``.
    """
    say = echo or logger.info
    if n_train < 1 or n_eval < 1 or n_train + n_eval > 10_000:
        raise ValueError(f"n_train={n_train}, n_eval={n_eval}: both must be >= 1 and together <= 10000 "
                         "(the size of the embedded sample)")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    train_ds = SampleDataset(0, n_train, transform=_to_tensor)
    eval_ds = SampleDataset(n_train, n_train + n_eval, transform=_to_tensor)

    t0 = time.perf_counter()
    hashed = hash_dataset(train_ds, "phash", 8, cache_dir=cache, progress=progress)
    t_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweep = sweep_thresholds(hashed.hashes, max_threshold, valid=hashed.valid)
    t_sweep = time.perf_counter() - t0
    say(f"Embedded sample: Fashion-MNIST test split, {n_train} images to train on, {n_eval} held out.")
    say(f"phash of {n_train} images: {t_hash:.2f} s ({'sidecar hit' if hashed.from_cache else 'computed'}); "
        f"kept counts for t=0..{max_threshold} from one search: {t_sweep * 1000:.0f} ms")
    say("")
    say(f"{'threshold':>9}  {'kept':>6}  {'removed':>8}")
    for t, k in enumerate(sweep.tolist()):
        say(f"{t:>9}  {k:>6}  {100 * (1 - k / n_train):>7.1f}%")
    say("")
    say(f"Training a LeNet for {epochs} epochs on {dev.type} per run "
        f"(full set, dedup at t={', '.join(map(str, thresholds))}, and random subsets of the same size)...")

    rows: list[DemoRow] = []
    acc, sec = _train_eval(train_ds, None, eval_ds, epochs=epochs, seed=seed, device=dev)
    rows.append(DemoRow("full", None, n_train, 0.0, acc, sec))
    for t in thresholds:
        sampler = DedupSampler(train_ds, threshold=t, cache_dir=cache, seed=seed, progress=False)
        kept = len(sampler)
        removed = 100 * (1 - kept / n_train)
        acc, sec = _train_eval(train_ds, sampler, eval_ds, epochs=epochs, seed=seed, device=dev)
        rows.append(DemoRow("dedup", t, kept, removed, acc, sec))
        rand = np.random.default_rng(seed + t).choice(n_train, size=kept, replace=False)
        acc, sec = _train_eval(train_ds, SubsetRandomSampler(rand.tolist(), generator=torch.Generator().manual_seed(seed)),
                               eval_ds, epochs=epochs, seed=seed, device=dev)
        rows.append(DemoRow("random", t, kept, removed, acc, sec))

    say("")
    say(f"{'training set':<22} {'images':>6} {'removed':>8} {'accuracy':>9} {'train s':>8}")
    for r in rows:
        name = {"full": "full", "dedup": f"dedup t={r.threshold}", "random": "random, same size"}[r.subset]
        say(f"{name:<22} {r.kept:>6} {r.removed_pct:>7.1f}% {100 * r.accuracy:>8.2f}% {r.train_seconds:>8.1f}")

    say(f"(One seed on {n_train:,} images: differences of a point or two are within seed noise. Multi-seed")
    say(" full-size results (dedup a few tenths of a point above random on Fashion-MNIST, below it on")
    say(" CIFAR-10) are in docs/results.md.)")

    csv_path = out / "demo.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        w.writerows(asdict(r) for r in rows)
    plot_path = _plot(rows, sweep, n_train, out / "demo.png")
    say("")
    say(f"Results: {csv_path.resolve()}")
    say(f"Plot:    {plot_path.resolve() if plot_path else '(install matplotlib for the plot)'}")
    say(f"Hashes are cached in {cache.resolve()}; a second run skips hashing.")
    return {"sweep": sweep.tolist(), "rows": rows, "csv": csv_path, "plot": plot_path}
