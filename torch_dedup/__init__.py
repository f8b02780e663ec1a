"""torch_dedup: near-duplicate image removal for PyTorch data loaders."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
