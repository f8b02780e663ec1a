"""Execution engines for work that runs outside this process (layer 4).

``torch_dedup.engines.ray`` runs per-shard tasks on a Ray cluster; it is the only module
that imports ``ray``, lazily, so that ``import torch_dedup`` never needs it. Install the
extra with ``pip install 'torch_dedup[ray]'``.
"""

from __future__ import annotations

__all__ = ["ENGINES"]

#: Engines :func:`torch_dedup.wds.shards.hash_shards` accepts.
ENGINES = ("local", "ray")
