"""Hostile files: pickle payloads, object arrays, absurd declared sizes, JSON bombs and path
traversal in shard member names are rejected without executing anything, without allocating
absurd memory, and without writing outside the target.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from torch_dedup._store import MAGIC, read_store, write_store
from torch_dedup.errors import PlanError, SidecarError, StoreError
from torch_dedup.hamming.cluster import find_duplicates
from torch_dedup.plan import DedupPlan
from torch_dedup.sidecar import load_or_none, read_sidecar, write_sidecar

MARKER_ENV = "TORCH_DEDUP_TEST_MARKER"


class _Payload:
    """Unpickling this would create the marker file: the proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"hashes": _Payload(str(marker))})


def _npy_object_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _store_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return MAGIC + len(raw).to_bytes(8, "little") + raw + hashlib.sha256(raw).digest() + data


def _store_with_pickled_array(marker: Path, kind: str) -> bytes:
    """A well-formed, checksummed store whose 'hashes' array claims dtype 'object' over pickle bytes."""
    data = _pickle_bytes(marker)
    entry = {"name": "hashes", "dtype": "object", "shape": [1], "offset": 0, "nbytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
    return _store_bytes({"kind": kind, "format_version": 1, "meta": {}, "arrays": [entry]}, data)


HOSTILE = {
    "raw_pickle": lambda m, k: _pickle_bytes(m),
    "npy_object_array": lambda m, k: _npy_object_bytes(m),
    "store_object_dtype": _store_with_pickled_array,
}


def _readers(kind: str):
    if kind == "sidecar":
        return [lambda p: read_sidecar(p)], SidecarError
    return [DedupPlan.load], PlanError


@pytest.mark.parametrize("kind", ["sidecar", "plan"])
@pytest.mark.parametrize("payload", sorted(HOSTILE))
def test_pickle_payloads_are_never_executed(tmp_path, kind, payload):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"hostile.{kind}"
    path.write_bytes(HOSTILE[payload](marker, kind))
    readers, error = _readers(kind)
    for read in readers:
        with pytest.raises(error) as info:
            read(path)
        assert str(path) in str(info.value)
    assert not marker.exists()
    # the payload is live: unpickling it for real would have created the marker
    if payload == "raw_pickle":
        pickle.loads(path.read_bytes())["hashes"].close()
        assert marker.exists()


def test_hostile_sidecar_in_the_cache_is_ignored_and_replaced(tmp_path, caplog):
    """A pickle planted under the sidecar's own name: hash_dataset warns, recomputes, overwrites it."""
    from torch_dedup.dataset_hashes import hash_dataset

    class Arr:
        data = np.random.default_rng(0).integers(0, 256, (20, 16, 16), dtype=np.uint8)

        def __len__(self):
            return 20

        def __getitem__(self, i):
            return self.data[i], 0

    first = hash_dataset(Arr(), cache_dir=tmp_path / "c", progress=False)
    marker = tmp_path / "PWNED"
    first.sidecar_path.write_bytes(_pickle_bytes(marker))
    with caplog.at_level(logging.WARNING):
        again = hash_dataset(Arr(), cache_dir=tmp_path / "c", progress=False)
    assert not again.from_cache and str(first.sidecar_path) in caplog.text
    np.testing.assert_array_equal(again.hashes, first.hashes)
    assert read_sidecar(first.sidecar_path).meta["count"] == 20
    assert not marker.exists()


def test_hostile_shard_plan_and_filter(tmp_path):
    from torch_dedup.wds import ShardPlan, dedup_filter

    marker = tmp_path / "PWNED"
    path = tmp_path / "x.tdplan"
    for make in HOSTILE.values():
        for kind in ("plan", "shard-plan"):  # a shard plan is a plan file; "shard-plan" is the retired kind
            path.write_bytes(make(marker, kind))
            for use in (ShardPlan.load, dedup_filter):
                with pytest.raises(PlanError):
                    use(path)
    assert not marker.exists()


# ------------------------------------------------------------------ absurd sizes

def _absurd(kind: str, how: str) -> bytes:
    if how == "header_length":
        return MAGIC + (2 ** 62).to_bytes(8, "little") + b"{}"
    shapes = {"array_1e12": [10 ** 12], "array_2d_overflow": [2 ** 40, 2 ** 40], "negative": [-1]}
    shape = shapes[how]
    count = 1
    for s in shape:
        count *= s
    entry = {"name": "hashes", "dtype": "uint64", "shape": shape, "offset": 0, "nbytes": count * 8,
             "sha256": "0" * 64}
    return _store_bytes({"kind": kind, "format_version": 1, "meta": {"count": 10 ** 12}, "arrays": [entry]},
                        b"\0" * 64)


@pytest.mark.parametrize("how", ["header_length", "array_1e12", "array_2d_overflow", "negative"])
@pytest.mark.parametrize("kind", ["sidecar", "plan"])
def test_absurd_declared_sizes_fail_fast_without_allocating(tmp_path, kind, how):
    path = tmp_path / "absurd"
    path.write_bytes(_absurd(kind, how))
    readers, error = _readers(kind)
    tracemalloc.start()
    try:
        for read in readers:
            with pytest.raises(error):
                read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading a {path.stat().st_size}-byte hostile file peaked at {peak} bytes"


@pytest.mark.parametrize("bomb", ["deep_nesting", "huge_number"])
def test_json_bombs_in_the_header_are_store_errors(tmp_path, bomb, caplog):
    """A checksummed header that is valid JSON but blows the parser's recursion or int limits."""
    raw = ("[" * 200_000 + "]" * 200_000).encode() if bomb == "deep_nesting" else ("9" * 100_000).encode()
    path = tmp_path / f"{bomb}.tdhash"
    path.write_bytes(MAGIC + len(raw).to_bytes(8, "little") + raw + hashlib.sha256(raw).digest())
    with pytest.raises(SidecarError):
        read_sidecar(path)
    with pytest.raises(PlanError):
        DedupPlan.load(path)
    with caplog.at_level(logging.WARNING):
        assert load_or_none(path) is None
    assert str(path) in caplog.text


def test_meta_of_the_wrong_types_is_refused(tmp_path):
    """Checksummed, well-formed stores whose meta values have hostile types."""
    path = tmp_path / "p.tdplan"
    plan = find_duplicates(np.arange(6, dtype=np.uint64), threshold=1)
    plan.save(path)
    meta, arrays = read_store(path, "plan")
    for key, value in (("n", "6"), ("n", 10 ** 30), ("threshold", [1]), ("policy", {"a": 1}),
                       ("per_class", "yes"), ("settings", []), ("provenance", 3)):
        write_store(path, "plan", {**meta, key: value}, arrays)
        with pytest.raises(PlanError):
            DedupPlan.load(path)
    sc = tmp_path / "s.tdhash"
    write_sidecar(sc, np.zeros(3, np.uint64), np.ones(3, bool), method="phash", hash_size=8, fingerprint="f")
    meta, arrays = read_store(sc, "sidecar")
    for key, value in (("count", 10 ** 12), ("count", None), ("count", [3]), ("count", -1)):
        write_store(sc, "sidecar", {**meta, key: value}, arrays)
        with pytest.raises(SidecarError):
            read_sidecar(sc)
    with pytest.raises(StoreError):
        read_store(sc, "plan")


# ------------------------------------------------------------------ path traversal in shards

def _tar_with(path: Path, members: list[tuple[str, bytes]], links: list[tuple[str, str, bytes]] = ()) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return str(path)


def test_traversal_links_and_absolute_names_never_escape(tmp_path):
    from badimages import good_image_bytes

    from torch_dedup.wds import plan_shards, rewrite_shards

    png = [good_image_bytes(k) for k in range(5)]
    (tmp_path / "src").mkdir()
    url = _tar_with(tmp_path / "src" / "evil.tar", [
        ("a.png", png[0]),
        ("../../escape1.png", png[1]),
        ("/tmp/torch_dedup_escape2.png", png[2]),
        ("b/../../../escape3.png", png[3]),
        ("c.png", png[4]),
    ], links=[("d.png", "/etc/passwd", tarfile.SYMTYPE), ("e.png", "../../escape1.png", tarfile.LNKTYPE)])
    plan = plan_shards(url, threshold=0, sidecar_dir=tmp_path / "sc", progress=False)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out" / "deep"
    with pytest.raises(Exception) as info:
        rewrite_shards(plan, out)
    assert "leaves its folder" in str(info.value) or "absolute" in str(info.value)
    res = rewrite_shards(plan, out, on_error="skip", overwrite=True)
    after = {p for p in tmp_path.rglob("*")}
    assert all(out in p.parents or p == out or p in before or p == out.parent for p in after)
    assert not Path("/tmp/torch_dedup_escape2.png").exists()
    written = []
    for shard in res.shards:
        with tarfile.open(shard) as tar:
            written += tar.getnames()
    assert all(not os.path.isabs(m) and ".." not in Path(m).parts for m in written)
    assert {r[1] for r in res.skipped} == {"../../escape1", "/tmp/torch_dedup_escape2", "b/../../../escape3"}
    assert sorted(written) == ["a.png", "c.png"]   # links are not regular members: never followed or written
