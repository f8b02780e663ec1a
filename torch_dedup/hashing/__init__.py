"""Perceptual hashing, bit for bit equal to imagehash 4.3 (layer 1)."""

from ._decode import hash_files
from .api import METHODS, HashResult, from_hex, hash_array, hash_bits, hash_images, to_hex

__all__ = ["HashResult", "METHODS", "from_hex", "hash_array", "hash_bits", "hash_files", "hash_images", "to_hex"]
