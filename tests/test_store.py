"""The checked store format: round trip, and every single-byte corruption is detected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from torch_dedup._store import pack_strings, read_store, unpack_strings, write_store
from torch_dedup.errors import StoreError


def _write(tmp_path):
    arrays = {"h": np.arange(5, dtype=np.uint64) * 0x0123456789ABCDEF, "v": np.array([True, False, True]),
              "z": np.zeros((0, 4), np.int64)}
    return write_store(tmp_path / "f.bin", "sidecar", {"a": 1, "s": "x"}, arrays), arrays


def test_round_trip(tmp_path):
    path, arrays = _write(tmp_path)
    meta, got = read_store(path, "sidecar")
    assert meta == {"a": 1, "s": "x"}
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape


def test_every_byte_flip_is_detected(tmp_path):
    path, _ = _write(tmp_path)
    raw = path.read_bytes()
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(StoreError):
            read_store(path, "sidecar")


def test_truncation_and_appending_detected(tmp_path):
    path, _ = _write(tmp_path)
    raw = path.read_bytes()
    for cut in (0, 5, 20, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(StoreError):
            read_store(path, "sidecar")
    path.write_bytes(raw + b"\0")
    with pytest.raises(StoreError, match="unexpected bytes"):
        read_store(path, "sidecar")


def test_wrong_kind_and_object_arrays(tmp_path):
    path, _ = _write(tmp_path)
    with pytest.raises(StoreError, match="kind"):
        read_store(path, "plan")
    with pytest.raises(TypeError, match="dtype"):
        write_store(tmp_path / "o.bin", "sidecar", {}, {"o": np.array([object()], dtype=object)})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(), max_size=20))
def test_strings_round_trip(strings):
    assert unpack_strings(*pack_strings(strings)) == strings


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b), max_size=10))
def test_file_names_that_are_not_utf8_round_trip(names):
    # How Linux hands such names to Python: os.fsdecode with surrogateescape.
    import os

    strings = [os.fsdecode(b) for b in names]
    back = unpack_strings(*pack_strings(strings))
    assert back == strings
    assert [os.fsencode(s) for s in back] == names


def test_a_lone_surrogate_that_is_no_file_name_byte_is_refused_by_name():
    with pytest.raises(ValueError, match=r"string 1 .*lone surrogate"):
        pack_strings(["ok", "bad \ud800 text"])


def test_store_files_get_the_usual_mode_not_mkstemps_private_one(tmp_path):
    """Sidecars and plans sit beside shared data: 0o666 less the umask, like open(path, 'w')."""
    import os

    from torch_dedup._store import write_store
    old = os.umask(0o022)
    try:
        path = write_store(tmp_path / "x.tdplan", "plan", {}, {"a": np.zeros(2)})
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
