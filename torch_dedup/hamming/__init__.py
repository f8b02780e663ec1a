"""The Hamming engine: exact near-duplicate search (layer 1-2) and clustering into a DedupPlan."""

from .cluster import find_duplicates, keep_from_pairs
from .search import (
    BlockTable,
    HammingPairs,
    block_masks,
    block_table_pairs,
    block_tables,
    hamming_distance,
    hamming_pairs,
    popcount64,
    unique_hashes,
    unique_pairs,
)
from .sweep import ClassSweep, sweep_thresholds, sweep_thresholds_by_class
from .views import find_duplicates_views, view_distances

__all__ = [
    "BlockTable",
    "ClassSweep",
    "HammingPairs",
    "block_masks",
    "block_table_pairs",
    "block_tables",
    "find_duplicates",
    "find_duplicates_views",
    "hamming_distance",
    "hamming_pairs",
    "keep_from_pairs",
    "popcount64",
    "sweep_thresholds",
    "sweep_thresholds_by_class",
    "unique_hashes",
    "unique_pairs",
    "view_distances",
]
