"""The Ray engine: same sidecars as the local engine, retried tasks, resumable runs,
and the distributed plan simulation held to the single-node plan."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from torch_dedup.engines.ray import import_ray
from torch_dedup.wds.shard_sidecar import read_shard_sidecar
from torch_dedup.wds.shards import hash_shards


def test_missing_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install 'torch_dedup\[ray\]'"):
        import_ray()
    from torch_dedup.wds.synthetic import make_demo_shards

    urls = make_demo_shards(tmp_path, n_shards=2, per_shard=3, size=32)
    with pytest.raises(ImportError, match=r"torch_dedup\[ray\]"):
        hash_shards(urls, engine="ray", progress=False, sidecar_dir=tmp_path / "sc")


def test_missing_ray_cli_exits_with_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    from torch_dedup.cli import main
    from torch_dedup.wds.synthetic import make_demo_shards

    urls = make_demo_shards(tmp_path, n_shards=2, per_shard=3, size=32)
    assert main(["wds", "hash", *urls, "--engine", "ray", "--no-progress"]) == 2
    assert "torch_dedup[ray]" in capsys.readouterr().err


def test_bad_engine_arguments(tmp_path):
    with pytest.raises(ValueError, match="engine='spark'"):
        hash_shards([str(tmp_path / "a.tar")], engine="spark")
    with pytest.raises(ValueError, match="ray_address"):
        hash_shards([str(tmp_path / "a.tar")], ray_address="auto")


# ----------------------------------------------------------------------------- with Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from torch_dedup.wds.synthetic import make_demo_shards

    d = tmp_path_factory.mktemp("ray-shards")
    return make_demo_shards(d, n_shards=5, per_shard=40, no_image_every=13, png_every=7, size=48, seed=3)


def _same_sidecars(a, b) -> None:
    assert len(a.sidecars) == len(b.sidecars)
    for x, y in zip(a.sidecars, b.sidecars):
        assert x.url == y.url and x.keys == y.keys
        assert x.hashes.dtype == y.hashes.dtype and x.hashes.tobytes() == y.hashes.tobytes()
        assert np.array_equal(x.valid, y.valid) and np.array_equal(x.has_image, y.has_image)
        assert x.failures == y.failures
        for k in ("fingerprint", "method", "hash_size", "decode", "image_exts", "hash_env", "count"):
            assert x.meta[k] == y.meta[k]


def test_ray_sidecars_equal_local_and_resume(ray_local, shards, tmp_path):
    local = hash_shards(shards, sidecar_dir=tmp_path / "local", workers=0, progress=False)
    on_ray = hash_shards(shards, sidecar_dir=tmp_path / "ray", engine="ray", progress=False)
    assert on_ray.hashed == shards and on_ray.cached == [] and on_ray.settings == local.settings
    _same_sidecars(local, on_ray)
    assert on_ray.no_image == local.no_image and on_ray.n_samples == local.n_samples == 200
    assert ray_local.is_initialized()  # a session it did not start is left running

    # resumable: a lost sidecar is the only shard hashed again
    os.remove(on_ray.sidecars[2].path)
    again = hash_shards(shards, sidecar_dir=tmp_path / "ray", engine="ray", progress=False)
    assert again.hashed == [shards[2]] and again.cached == shards[:2] + shards[3:]
    _same_sidecars(local, again)


def test_killed_task_is_retried_and_complete(ray_local, shards, tmp_path):
    from torch_dedup.engines.ray import ray_map
    from torch_dedup.wds.shard_sidecar import shard_sidecar_paths
    from torch_dedup.wds.shards import _hash_and_store

    marker = tmp_path / "killed-once"

    def crash_first_attempt(url, paths, *args):
        # a worker that dies mid-shard on its first attempt: Ray must rerun the task
        if url == shards[1] and not marker.exists():
            marker.write_text("x")
            os._exit(1)
        return _hash_and_store(url, paths, *args)

    items = [(u, [str(p) for p in shard_sidecar_paths(u, "phash", 8, "exact", tmp_path / "sc")], "phash", 8,
              ("jpg", "jpeg", "png", "webp", "ppm", "bmp"), "raise", False) for u in shards]
    results = dict(ray_map(crash_first_attempt, items, max_retries=2, progress=False))
    assert marker.exists()
    assert sorted(results) == list(range(len(shards))) and all(r[0] == "ok" for r in results.values())
    # the sidecars the retried run wrote are the ones the local engine writes, and reused as valid
    h = hash_shards(shards, sidecar_dir=tmp_path / "sc", engine="ray", progress=False)
    assert h.hashed == [] and h.cached == shards
    _same_sidecars(hash_shards(shards, sidecar_dir=tmp_path / "local", workers=0, progress=False), h)
    assert read_shard_sidecar(results[1][1]).keys == h.sidecars[1].keys


def test_failed_task_without_retries_raises(ray_local):
    from torch_dedup.engines.ray import ray_map

    def always_dies(_):
        os._exit(1)

    with pytest.raises(ray_local.exceptions.RayError):
        list(ray_map(always_dies, [(0,)], max_retries=0, progress=False))


def test_ray_plan_and_cli_equal_local(ray_local, shards, tmp_path, capsys):
    import json

    from torch_dedup.cli import main
    from torch_dedup.wds import plan_shards

    a = plan_shards(shards, 6, sidecar_dir=tmp_path / "a", workers=0, progress=False)
    b = plan_shards(shards, 6, sidecar_dir=tmp_path / "b", engine="ray", progress=False)
    assert np.array_equal(a.drop, b.drop) and np.array_equal(a.status, b.status)
    assert a.key_blob.tobytes() == b.key_blob.tobytes() and a.hashes.tobytes() == b.hashes.tobytes()
    assert main(["wds", "hash", *shards, "--engine", "ray", "--sidecar-dir", str(tmp_path / "c"), "--json",
                 "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["engine"] == "ray" and info["hashed"] == len(shards) and info["samples"] == 200


def _clustered(rng, n):
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    k = n // 4
    src = rng.integers(0, n - k, k)
    flips = np.zeros(k, np.uint64)
    for _ in range(5):
        flips ^= np.uint64(1) << rng.integers(0, 64, k).astype(np.uint64)
    h[n - k:] = h[src] ^ flips
    h[50:80] = h[7]  # an exact-duplicate group
    return h


@pytest.mark.parametrize("t", [0, 4, 7])
def test_distributed_plan_equals_single_node(ray_local, t):
    from torch_dedup.engines.ray_plan import distributed_pairs, distributed_plan
    from torch_dedup.hamming.cluster import find_duplicates
    from torch_dedup.hamming.search import unique_hashes, unique_pairs

    h = _clustered(np.random.default_rng(t), 6000)
    u = unique_hashes(h)[0]
    assert np.array_equal(distributed_pairs(u, t, n_parts=5, n_mappers=3), unique_pairs(u, t).pairs)
    for policy in ("components", "greedy"):
        keep, rep = distributed_plan(h, t, policy=policy, n_parts=5, n_mappers=3)
        plan = find_duplicates(h, t, policy=policy)
        assert np.array_equal(keep, plan.keep) and np.array_equal(rep, plan.representative)


def test_label_components_against_scipy():
    sp = pytest.importorskip("scipy.sparse.csgraph")
    from scipy.sparse import coo_matrix

    from torch_dedup.engines.ray_plan import label_components

    rng = np.random.default_rng(1)
    n = 500
    pairs = np.sort(rng.integers(0, n, size=(400, 2)), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    label = label_components(n, pairs)
    _, ref = sp.connected_components(coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)),
                                     directed=False)
    # same partition, and each label is its component's smallest node
    first = {}
    for i, r in enumerate(ref.tolist()):
        first.setdefault(r, i)
    assert label.tolist() == [first[r] for r in ref.tolist()]


@pytest.mark.parametrize("t, n_blocks", [(3, 4), (5, 8)])
def test_distributed_pairs_with_other_block_counts(ray_local, t, n_blocks):
    from torch_dedup.engines.ray_plan import distributed_pairs
    from torch_dedup.hamming.search import unique_hashes, unique_pairs

    u = unique_hashes(_clustered(np.random.default_rng(10 + t), 3000))[0]
    got = distributed_pairs(u, t, n_blocks=n_blocks, n_parts=3, n_mappers=2)
    assert np.array_equal(got, unique_pairs(u, t).pairs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=64), r"threshold=64 must be an int in \[0, 63\]"),
    (dict(threshold=True), r"threshold=True"),
    (dict(threshold=4, n_blocks=4), r"n_blocks=4 must be an int in \(4, 64\]"),
    (dict(threshold=4, n_blocks=65), r"n_blocks=65"),
    (dict(threshold=20, n_blocks=64), r"MAX_TABLES"),
    (dict(threshold=4, n_parts=0), r"n_parts=0 must be an int >= 1"),
])
def test_distributed_pairs_bad_arguments(kwargs, match):
    from torch_dedup.engines.ray_plan import distributed_pairs

    with pytest.raises(ValueError, match=match):
        distributed_pairs(np.arange(10, dtype=np.uint64), **kwargs)


def test_ray_plan_uses_only_the_public_hamming_engine():
    """One search engine: the planner reuses the hamming kernels through public names, no copy of them."""
    import ast
    import inspect

    from torch_dedup import hamming
    from torch_dedup.engines import ray_plan

    tree = ast.parse(inspect.getsource(ray_plan))
    used = {(node.module, a.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
            and node.module.startswith("torch_dedup.hamming") for a in node.names}
    assert ("torch_dedup.hamming", "block_table_pairs") in used and ("torch_dedup.hamming", "block_tables") in used
    assert all(module == "torch_dedup.hamming" and name in hamming.__all__ for module, name in used), used
    # no popcount of its own: pair verification is the kernels' job
    names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(tree)
             if isinstance(n, (ast.Attribute, ast.Name))}
    assert not names & {"bitwise_count", "unpackbits", "popcount64"}, names & {"bitwise_count", "unpackbits"}
