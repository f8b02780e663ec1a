"""Bit packing and hex conversion, against Python big integers and imagehash's hex code."""

from __future__ import annotations

import imagehash
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_dedup.hashing._pack import hex_to_words, pack_bits, unpack_bits, words_to_hex


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 300), n=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_pack_matches_big_integer_and_imagehash(bits, n, seed):
    rows = np.random.default_rng(seed).random((n, bits)) < 0.5
    words = pack_bits(rows)
    assert words.dtype == np.uint64 and words.shape == (n, -(-bits // 64))
    for row, w in zip(rows, words):
        value = int("".join("1" if b else "0" for b in row), 2)
        assert sum(int(x) << (64 * (len(w) - 1 - j)) for j, x in enumerate(w)) == value
    hexes = words_to_hex(words, bits)
    assert hexes == [imagehash._binary_array_to_hex(row) for row in rows]
    np.testing.assert_array_equal(hex_to_words(hexes, bits), words)
    np.testing.assert_array_equal(unpack_bits(words, bits), rows)


def test_first_bit_is_msb_of_word_zero():
    rows = np.zeros((1, 256), bool)
    rows[0, 0] = True
    rows[0, 255] = True
    words = pack_bits(rows)
    assert words.tolist() == [[1 << 63, 0, 0, 1]]
    assert words_to_hex(words) == ["8" + "0" * 62 + "1"]
