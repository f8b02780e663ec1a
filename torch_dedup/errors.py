"""Exceptions raised by torch_dedup (layer 0: stdlib only).

Every error says which argument or file is at fault, the value, and the fix.
"""

from __future__ import annotations

__all__ = [
    "DedupError",
    "EmptyDedupError",
    "ImageDecodeError",
    "PlanError",
    "SidecarError",
    "StoreError",
]


class DedupError(Exception):
    """Base class of every error torch_dedup raises on purpose."""


class ImageDecodeError(DedupError, ValueError):
    """An image could not be read or decoded.

    Attributes:
        source: what failed: a file path, or ``"item 17"`` for an in-memory item.
        index: the item's position in the input, when known.
        reason: the underlying cause, as text.
    """

    def __init__(self, source: str, reason: str, index: int | None = None):
        self.source = source
        self.reason = reason
        self.index = index
        # the message must print on any terminal: a non-UTF-8 file name (kept exact in .source
        # as surrogate escapes) is shown with backslash escapes
        shown = source.encode("utf-8", "backslashreplace").decode("utf-8")
        where = shown if index is None or str(index) in source else f"{shown} (item {index})"
        if source.startswith("item ") or source.startswith("<"):
            # an in-memory item (a dict, a tensor, ...), not a file: say what an image is here
            fix = ("Make the dataset's item an image (PIL image, uint8 array, [0, 1] float tensor or a "
                   "path), or pass image_fn=lambda i: <the raw image of item i>; on_error='skip' only "
                   "helps when a few items are bad")
        else:
            fix = "Fix or remove the file, or pass on_error='skip' to record it and go on without it"
        super().__init__(f"cannot hash image {where}: {reason}. {fix}.")


class StoreError(DedupError):
    """A torch_dedup data file (sidecar or plan) is missing, corrupt, hostile or of another version."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class SidecarError(StoreError):
    """A hash sidecar cannot be used (corrupt, stale, or made with other settings)."""


class PlanError(StoreError):
    """A saved DedupPlan cannot be used (corrupt, or made for another dataset or settings)."""


class EmptyDedupError(DedupError, ValueError):
    """Deduplication would leave no item (or the dataset is empty)."""
