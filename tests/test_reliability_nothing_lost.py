"""Nothing lost: kept + removed is exactly the dataset minus recorded failures; every removed item
has a kept representative within the threshold (greedy) or in its component (components); the
consumers (DedupDataset, DedupSampler, the webdataset filter) never drop a planned keeper.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from naive import distance_matrix

from torch_dedup.hamming.cluster import find_duplicates


def _distance(h: np.ndarray) -> np.ndarray:
    return distance_matrix(h, h).astype(np.int64)


def _components(adj: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Naive connected components (BFS) of the graph among ``alive`` items; -1 for the others."""
    n = len(adj)
    comp = np.full(n, -1, np.int64)
    c = 0
    for s in range(n):
        if not alive[s] or comp[s] >= 0:
            continue
        stack = [s]
        comp[s] = c
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(adj[i] & alive):
                if comp[j] < 0:
                    comp[j] = c
                    stack.append(j)
        c += 1
    return comp


@st.composite
def _hash_sets(draw):
    n = draw(st.integers(0, 120))
    bits = draw(st.sampled_from([6, 10, 16, 64]))   # few bits: many near-duplicates and chains
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    hi = (1 << bits) - 1
    h = rng.integers(0, hi, size=n, dtype=np.uint64, endpoint=True) if bits < 64 else \
        rng.integers(0, 2**63, size=n, dtype=np.uint64)
    valid = rng.random(n) > draw(st.sampled_from([0.0, 0.1, 0.5]))
    return h, valid, draw(st.integers(0, 8)), draw(st.sampled_from(["greedy", "components"]))


@settings(max_examples=150, deadline=None)
@given(_hash_sets())
def test_kept_plus_removed_is_the_dataset_minus_failures(case):
    h, valid, t, policy = case
    n = len(h)
    plan = find_duplicates(h, threshold=t, policy=policy, valid=valid)
    kept, removed, failed = plan.keep, np.zeros(n, bool), plan.failed
    removed[plan.removed_indices] = True
    assert not np.any(kept & removed) and not np.any(kept & failed) and not np.any(removed & failed)
    assert np.all(kept | removed | failed)                   # nothing vanished
    np.testing.assert_array_equal(failed, ~valid)            # exactly the recorded failures are out
    d = _distance(h) if n else np.zeros((0, 0), np.int64)
    rep = plan.representative
    r = np.flatnonzero(removed)
    assert np.all(kept[rep[r]])
    if policy == "greedy":
        assert np.all(d[r, rep[r]] <= t)                     # a kept representative within the threshold
        kk = np.flatnonzero(kept)
        sub = d[np.ix_(kk, kk)]
        assert np.all(sub[~np.eye(len(kk), dtype=bool)] > t)  # and no two keepers are duplicates
        for i in r:                                          # the representative is the first keeper within t
            assert rep[i] == kk[np.argmax(d[i, kk] <= t)]
    else:
        comp = _components(d <= t, valid)
        assert np.all(comp[rep[r]] == comp[r])               # a kept representative in its component
        assert len(set(comp[kept].tolist())) == int(kept.sum()) == len(set(comp[valid].tolist()))


# ------------------------------------------------------------------ through the torch consumers

class _Flaky:
    """An in-memory image dataset where some items cannot be loaded (raise like a broken file)."""

    def __init__(self, images: np.ndarray, broken: set[int]):
        self.images = images
        self.broken = broken

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(i % 3)

    def image(self, i):
        if i in self.broken:
            raise OSError(f"image file is truncated (item {i})")
        return self.images[i]


@st.composite
def _flaky(draw):
    from torch_dedup.embedded import load_sample

    n = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    base = load_sample(12)[0]
    images = base[rng.integers(0, len(base), n)].copy()     # many exact duplicates
    bump = rng.random(n) < 0.3
    images[bump, 0, 0] ^= 0x80                              # and near ones
    broken = set(np.flatnonzero(rng.random(n) < draw(st.sampled_from([0.0, 0.2, 0.6]))).tolist())
    if len(broken) == n:
        broken.discard(0)
    return _Flaky(images, broken), draw(st.integers(0, 10)), draw(st.sampled_from(["greedy", "components"]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_flaky())
def test_sampler_and_dataset_keep_everything_not_removed_or_failed(case):
    from torch_dedup.dataset import DedupDataset
    from torch_dedup.sampler import DedupSampler

    ds, t, policy = case
    kw = {"threshold": t, "policy": policy, "image_fn": ds.image, "cache_dir": False, "on_error": "skip",
          "progress": False}
    sampler = DedupSampler(ds, shuffle=False, **kw)
    plan = sampler.plan
    assert sorted(np.flatnonzero(plan.failed).tolist()) == sorted(ds.broken)
    everything = set(plan.kept_indices.tolist()) | set(plan.removed_indices.tolist()) | ds.broken
    assert everything == set(range(len(ds)))
    assert list(sampler) == plan.kept_indices.tolist()
    dd = DedupDataset(ds, **kw)
    assert len(dd) == plan.n_kept
    got = [dd[i] for i in range(len(dd))]
    assert all(np.array_equal(g[0], ds[k][0]) and g[1] == ds[k][1] for g, k in zip(got, plan.kept_indices))
    shuffled = DedupSampler(ds, shuffle=True, seed=3, **kw)
    assert sorted(shuffled) == plan.kept_indices.tolist()


# ------------------------------------------------------------------ webdataset filter

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from torch_dedup.wds import plan_shards
    from torch_dedup.wds.synthetic import make_demo_shards

    root = tmp_path_factory.mktemp("nl-shards")
    urls = make_demo_shards(root, n_shards=4, per_shard=25, dup_fraction=0.4, no_image_every=7, seed=11)
    return urls, plan_shards(urls, threshold=6, progress=False)


# webdataset's StreamingOpen never closes the shard files it opens: its ResourceWarning, not ours
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(4)), take=st.integers(1, 4))
def test_webdataset_filter_never_drops_a_planned_keeper(shards, order, take):
    import webdataset as wds

    from torch_dedup.wds import dedup_filter

    urls, plan = shards
    chosen = [urls[i] for i in order[:take]]
    ds = wds.WebDataset(chosen, shardshuffle=False, empty_check=False).compose(dedup_filter(plan))
    got = [(s["__url__"], s["__key__"]) for s in ds]
    want = [plan.sample(i) for u in chosen for i in range(plan.n) if plan.sample(i)[0] == u and not plan.drop[i]]
    assert got == want
    kept = {plan.sample(i) for i in range(plan.n) if plan.status[i] == 0 and plan.sample(i)[0] in chosen}
    assert kept <= set(got)   # every planned keeper passes
