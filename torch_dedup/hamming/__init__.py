"""The Hamming engine: exact near-duplicate search (layer 1-2) and clustering into a DedupPlan."""

from .cluster import ClassSweep, find_duplicates, sweep_thresholds, sweep_thresholds_by_class
from .search import HammingPairs, hamming_distance, hamming_pairs, popcount64, unique_hashes, unique_pairs

__all__ = [
    "ClassSweep",
    "HammingPairs",
    "find_duplicates",
    "hamming_distance",
    "hamming_pairs",
    "popcount64",
    "sweep_thresholds",
    "sweep_thresholds_by_class",
    "unique_hashes",
    "unique_pairs",
]
