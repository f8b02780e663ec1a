"""The Ray engine never waits unboundedly on a cluster it cannot reach: a leftover record of a
dead cluster (``ray start --head`` killed, not stopped), a dead RAY_ADDRESS, a dead address."""

from __future__ import annotations

import logging
import socket
import time

import pytest

ray = pytest.importorskip("ray")

from torch_dedup.engines import ray as engine  # noqa: E402
from torch_dedup.engines.ray import Cluster, resolve_cluster  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def _dead_address() -> str:
    """host:port where nothing listens (a port that was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def record(tmp_path, monkeypatch):
    """Ray's current-cluster record, in a private place (never the shared /tmp/ray one)."""
    path = tmp_path / "ray_current_cluster"
    monkeypatch.setattr(engine, "_record_path", lambda ray: str(path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return path


def test_stale_record_with_no_address_starts_local_and_names_the_record(record, caplog):
    record.write_text(_dead_address())
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="torch_dedup.engines.ray"):
        got = resolve_cluster(None, timeout=2)
    assert time.monotonic() - t0 < 10
    assert got.address == "local" and str(record) in got.source
    assert str(record) in caplog.text and "ray stop" in caplog.text


def test_stale_record_with_auto_is_a_clear_error(record):
    dead = _dead_address()
    record.write_text(dead)
    with pytest.raises(ConnectionError) as err:
        resolve_cluster("auto", timeout=2)
    text = str(err.value)
    assert str(record) in text and dead in text and "ray stop" in text and "ray_address=None" in text


def test_auto_without_any_cluster_is_a_clear_error(record):
    with pytest.raises(ConnectionError, match="ray start --head"):
        resolve_cluster("auto", timeout=2)
    assert resolve_cluster(None) == Cluster("local", "none")


def test_dead_ray_address_and_argument_are_clear_errors(record, monkeypatch):
    dead = _dead_address()
    with pytest.raises(ConnectionError, match=f"ray_address='{dead}'"):
        resolve_cluster(dead, timeout=2)
    monkeypatch.setenv("RAY_ADDRESS", dead)
    with pytest.raises(ConnectionError, match="RAY_ADDRESS.*unset RAY_ADDRESS"):
        resolve_cluster(None, timeout=2)


def test_a_live_record_is_used(record):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        live = f"127.0.0.1:{srv.getsockname()[1]}"
        record.write_text(live)
        assert resolve_cluster(None, timeout=2) == Cluster(live, f"Ray's current-cluster record {record}")


_STALE_RUN = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import ray
from torch_dedup.wds import hash_shards
urls, sc = sys.argv[1].split(","), sys.argv[2]
t0 = time.monotonic()
h = hash_shards(urls, engine="ray", progress=False, sidecar_dir=sc)
print(json.dumps({"hashed": h.hashed, "seconds": time.monotonic() - t0, "record": ray._private.utils.get_ray_address_file(None)}))
"""


@pytest.mark.slow  # starts a local Ray cluster in a subprocess
def test_hash_shards_with_a_real_stale_record_finishes_on_a_local_cluster(tmp_path):
    """The record where Ray itself looks ($TMPDIR/ray/ray_current_cluster, private to this test)
    names a dead cluster: before the fix ray.init waited on it for minutes."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from torch_dedup.wds.synthetic import make_demo_shards

    tmp = tempfile.mkdtemp(prefix="tdray", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        os.makedirs(os.path.join(tmp, "ray"))
        record = os.path.join(tmp, "ray", "ray_current_cluster")
        with open(record, "w") as f:
            f.write(_dead_address())
        urls = make_demo_shards(tmp_path / "s", n_shards=2, per_shard=4, size=32)
        env = {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp}
        env.pop("RAY_ADDRESS", None)
        try:
            proc = subprocess.run([sys.executable, "-c", _STALE_RUN, ",".join(urls), str(tmp_path / "sc")],
                                  capture_output=True, text=True, timeout=240, env=env)
        except subprocess.TimeoutExpired:
            pytest.fail("hash_shards(engine='ray') hung on a stale cluster record")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"hash_shards(engine='ray') with a stale record: {out['seconds']:.1f} s")
        assert out["record"] == record and out["hashed"] == urls
        assert record in proc.stderr and "ray stop" in proc.stderr and "a new local cluster" in proc.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
