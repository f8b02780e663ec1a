"""torch_dedup: near-duplicate image removal for PyTorch data loaders.

Hash every image (bit for bit what ``imagehash`` computes), find every pair within a
Hamming threshold, keep one image per group, and hand the reduced index to a DataLoader::

    from torch_dedup import DedupSampler
    loader = DataLoader(ds, batch_size=256, sampler=DedupSampler(ds, threshold=6))
"""

from __future__ import annotations

from .dataset import DedupDataset
from .errors import DedupError, EmptyDedupError, ImageDecodeError, PlanError, SidecarError, StoreError
from .hamming import (ClassSweep, HammingPairs, find_duplicates, hamming_distance, hamming_pairs,
                      sweep_thresholds, sweep_thresholds_by_class, unique_hashes, unique_pairs)
from .hashing import METHODS, HashResult, from_hex, hash_array, hash_bits, hash_images, to_hex
from .dataset_hashes import DatasetHashes, hash_dataset
from .options import DedupOptions
from .plan import DedupPlan
from .planning import plan_dataset, plan_from_hashes
from .embedded import SampleDataset, load_sample
from .sampler import DedupSampler
from .sources import ImageSource, source_of

__version__ = "0.1.0"

__all__ = [
    "ClassSweep",
    "DatasetHashes",
    "DedupDataset",
    "DedupError",
    "DedupOptions",
    "DedupPlan",
    "DedupSampler",
    "EmptyDedupError",
    "HammingPairs",
    "HashResult",
    "ImageDecodeError",
    "ImageSource",
    "METHODS",
    "PlanError",
    "SampleDataset",
    "SidecarError",
    "StoreError",
    "__version__",
    "find_duplicates",
    "from_hex",
    "hamming_distance",
    "hamming_pairs",
    "hash_array",
    "hash_bits",
    "hash_dataset",
    "hash_images",
    "load_sample",
    "plan_dataset",
    "plan_from_hashes",
    "source_of",
    "sweep_thresholds",
    "sweep_thresholds_by_class",
    "to_hex",
    "unique_hashes",
    "unique_pairs",
]
