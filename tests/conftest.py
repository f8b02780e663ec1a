"""Shared fixtures: real-data locations that skip cleanly when absent."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("TORCH_DEDUP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
CIFAR_TAR = SHARED_DATA / "cifar10-jpg.tar.gz"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def cifar10_jpg(tmp_path_factory) -> Path:
    """The CIFAR-10 JPEG ImageFolder trees (``train/``, ``test/``), unpacked once per session."""
    if not CIFAR_TAR.exists():
        pytest.skip(f"{CIFAR_TAR} not present (shared data lives outside the repo)")
    out = tmp_path_factory.mktemp("cifar10-jpg")
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(out, filter="data")
    roots = [p for p in out.rglob("train") if p.is_dir()]
    if not roots:
        pytest.skip(f"{CIFAR_TAR} has no train/ folder")
    return roots[0].parent


@pytest.fixture(scope="session")
def fashion_mnist_debian() -> Path:
    """Folder with Debian's Fashion-MNIST IDX gzip files (package dataset-fashion-mnist)."""
    if not (FASHION_DEBIAN / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    return FASHION_DEBIAN
