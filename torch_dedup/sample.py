"""Deprecated alias of :mod:`torch_dedup.embedded` (the embedded Fashion-MNIST sample).

The module was renamed because ``sample`` sat one letter away from ``sampler``; this
alias will be removed in torch_dedup 0.3.
"""

from __future__ import annotations

import warnings

from .embedded import CLASSES, SampleDataset, load_sample, materialize_fashion_mnist, sample_files

__all__ = ["CLASSES", "SampleDataset", "load_sample", "materialize_fashion_mnist", "sample_files"]

warnings.warn("torch_dedup.sample was renamed torch_dedup.embedded; import from there (or from torch_dedup). "
              "The old name will be removed in 0.3.", DeprecationWarning, stacklevel=2)
