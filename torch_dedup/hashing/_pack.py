"""Bit packing: boolean hash bits <-> ``uint64`` words <-> imagehash hex strings.

Bit order follows imagehash: the hash is the row-major flattened boolean array, read as
one big binary number whose first bit is the most significant. That number is stored
right-aligned in ``W = ceil(bits / 64)`` big-endian ``uint64`` words: word 0 holds the
most significant 64 bits. For 64 and 256 bits (hash sizes 8 and 16) this simply means
"the first bit is the MSB of word 0", and the words' 16-digit hex strings concatenated
are exactly ``str(imagehash.<method>(img, hash_size))``. For other sizes the unused top
bits of word 0 are zero, so the integer value (and the Hamming distance) is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_HEX = frozenset("0123456789abcdefABCDEF")

__all__ = ["hex_digits", "pack_bits", "packed_words", "unpack_bits", "words_to_hex", "hex_to_words"]


def packed_words(bits: int) -> int:
    """Number of ``uint64`` words needed for ``bits`` bits."""
    return (bits + 63) // 64


def hex_digits(bits: int) -> int:
    """Hex digits imagehash prints for ``bits`` bits (``ceil(bits / 4)``)."""
    return (bits + 3) // 4


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack boolean rows ``(N, B)`` into big-endian, right-aligned ``uint64`` words ``(N, W)``.

    Args:
        bits: boolean (or 0/1) array of shape ``(N, B)``, imagehash's flattened order.

    Returns:
        ``uint64`` array ``(N, W)`` with ``W = ceil(B / 64)``.
    """
    bits = np.asarray(bits, dtype=bool)
    n, b = bits.shape
    w = packed_words(b)
    pad = w * 64 - b
    if pad:
        bits = np.concatenate([np.zeros((n, pad), dtype=bool), bits], axis=1)
    # packbits is big-endian within a byte; viewing 8 bytes as '>u8' keeps the first
    # bit as the most significant bit of each word.
    packed = np.packbits(bits, axis=1)
    return np.ascontiguousarray(packed).view(">u8").astype(np.uint64).reshape(n, w)


def unpack_bits(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``(N, W)`` or ``(N,)`` words -> boolean ``(N, bits)``."""
    words = np.asarray(words, dtype=np.uint64)
    if words.ndim == 1:
        words = words[:, None]
    n, w = words.shape
    raw = np.ascontiguousarray(words.astype(">u8")).view(np.uint8).reshape(n, w * 8)
    out = np.unpackbits(raw, axis=1).astype(bool)
    return out[:, w * 64 - bits:]


def words_to_hex(words: np.ndarray, bits: int | None = None) -> list[str]:
    """Hex strings of packed rows, equal to imagehash's ``str(hash)``.

    Args:
        words: ``uint64`` ``(N,)`` or ``(N, W)``.
        bits: number of hash bits; ``None`` means ``64 * W`` (exact for hash sizes 8, 16).
    """
    words = np.asarray(words)
    if words.ndim == 1:
        words = words[:, None]
    if words.ndim != 2:
        raise ValueError(f"hashes must have shape (N,) or (N, W); got shape {words.shape}")
    n, w = words.shape
    if bits is None:
        bits = 64 * w
    digits = hex_digits(bits)
    out = []
    for row in words.astype(np.uint64).tolist():
        s = "".join(f"{int(v):016x}" for v in row)
        out.append(s[len(s) - digits:])
    return out


def hex_to_words(hexes: Iterable[str], bits: int) -> np.ndarray:
    """Parse imagehash hex strings into packed rows ``(N, W)`` (``W = ceil(bits / 64)``)."""
    w = packed_words(bits)
    digits = hex_digits(bits)
    hexes = list(hexes)
    out = np.zeros((len(hexes), w), dtype=np.uint64)
    mask = (1 << 64) - 1
    for i, h in enumerate(hexes):
        if not isinstance(h, str):
            raise ValueError(f"hexes[{i}] must be a str, got {type(h).__name__}")
        if len(h) != digits:
            raise ValueError(
                f"hexes[{i}]={h!r} has {len(h)} hex digits; a {bits}-bit hash has {digits}. "
                f"Pass the hash_size the hashes were made with."
            )
        if not all(c in _HEX for c in h):
            raise ValueError(f"hexes[{i}]={h!r} is not a hexadecimal string")
        value = int(h, 16)
        if value >> bits:
            raise ValueError(f"hexes[{i}]={h!r} has more than {bits} significant bits")
        for j in range(w - 1, -1, -1):
            out[i, j] = value & mask
            value >>= 64
    return out
