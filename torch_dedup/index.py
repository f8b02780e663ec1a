"""Deprecated alias module, kept for code written against torch_dedup 0.1 (removed in 0.3).

``index`` held dataset → hashes → plan orchestration, not an index. Hashing a dataset
(compute-or-load through its sidecar) is now :mod:`torch_dedup.dataset_hashes`; planning
(``plan_dataset``, ``plan_from_hashes``, ``check_labels``) is :mod:`torch_dedup.planning`.
"""

from __future__ import annotations

import warnings

from .dataset_hashes import (DatasetHashes, decode_mode, hash_dataset, hash_source_range, load_cached, sidecar_for,
                             store_cached)
from .planning import check_labels, plan_dataset, plan_from_hashes

__all__ = ["DatasetHashes", "check_labels", "decode_mode", "hash_dataset", "hash_source_range", "load_cached",
           "plan_dataset", "plan_from_hashes", "sidecar_for", "store_cached"]

warnings.warn("torch_dedup.index is deprecated: import hash_dataset and its pieces from torch_dedup.dataset_hashes, "
              "plan_dataset and plan_from_hashes from torch_dedup.planning (or both from torch_dedup). The old module "
              "will be removed in 0.3.", DeprecationWarning, stacklevel=2)
