"""Deprecated alias module, kept for code written against torch_dedup 0.1 (removed in 0.3).

It used to hold both the options/plan resolution every consumer uses and the DDP hashing
collective. They now live where their names say: :mod:`torch_dedup.options`
(``DedupOptions``, formerly ``PlanOptions``), :mod:`torch_dedup.planning` (``plan_dataset``,
DDP-aware by itself, and ``resolve_plan``) and :mod:`torch_dedup.distributed_hashing`
(``hash_dataset_distributed``).
"""

from __future__ import annotations

import warnings

from .distributed_hashing import hash_dataset_distributed, is_distributed
from .options import DedupOptions as PlanOptions
from .planning import ResolvedPlan, plan_dataset_distributed, resolve_plan

__all__ = ["PlanOptions", "ResolvedPlan", "hash_dataset_distributed", "is_distributed", "plan_dataset_distributed",
           "resolve_plan"]

warnings.warn("torch_dedup.distributed is deprecated: import DedupOptions from torch_dedup.options, plan_dataset "
              "(DDP-aware) and resolve_plan from torch_dedup.planning, hash_dataset_distributed from "
              "torch_dedup.distributed_hashing. The old module will be removed in 0.3.",
              DeprecationWarning, stacklevel=2)
