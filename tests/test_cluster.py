"""Clustering (pairs -> keep decision) against a naive pure-Python reference and imagededup."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from naive import distance_matrix, popcount

import torch_dedup.hamming._key_graph as key_graph
from torch_dedup.hamming.cluster import (
    find_duplicates,
    keep_from_pairs,
    sweep_thresholds,
    sweep_thresholds_by_class,
)
from torch_dedup.plan import DedupPlan

# ----------------------------------------------------------------------------- naive reference


def _ints(rows: np.ndarray) -> list[int]:
    """Each (W,) uint64 row as one Python int (word 0 most significant; order is irrelevant to popcount)."""
    rows = rows.reshape(len(rows), 1) if rows.ndim == 1 else rows
    return [int.from_bytes(r.astype(">u8").tobytes(), "big") for r in rows]


def naive(hashes, t, policy="greedy", priority=None, labels=None, per_class=False, against=None, valid=None):
    """Item-by-item reference of the semantics in design.md; returns plain Python structures."""
    h = _ints(np.asarray(hashes))
    n = len(h)
    valid = [True] * n if valid is None else [bool(v) for v in valid]
    lab = None if labels is None else [int(x) for x in labels]
    d = lambda x, y: bin(x ^ y).count("1")
    leaked, leaks = [False] * n, []
    if against is not None:
        ag = _ints(np.asarray(against))
        for i in range(n):
            if valid[i] and ag:
                best = min((d(h[i], a), r) for r, a in enumerate(ag))
                if best[0] <= t:
                    leaked[i] = True
                    leaks.append((i, best[1], best[0]))
    active = [i for i in range(n) if valid[i] and not leaked[i]]
    if priority is None:
        order = active
    else:
        order = sorted(active, key=lambda i: (-float(priority[i]), i))
    pos = {i: p for p, i in enumerate(order)}
    same = (lambda i, j: lab[i] == lab[j]) if per_class else (lambda i, j: True)
    keep, rep, dist = [False] * n, [-1] * n, [-1] * n
    if policy == "greedy":
        kept = []
        for i in order:
            nb = [k for k in kept if same(i, k) and d(h[i], h[k]) <= t]
            if nb:
                r = min(nb, key=pos.__getitem__)
                rep[i], dist[i] = r, d(h[i], h[r])
            else:
                kept.append(i)
                keep[i], rep[i], dist[i] = True, i, 0
    else:
        parent = {i: i for i in active}

        def find(x):
            while parent[x] != x:
                x = parent[x]
            return x

        for a_ in active:
            for b_ in active:
                if a_ < b_ and same(a_, b_) and d(h[a_], h[b_]) <= t:
                    parent[find(a_)] = find(b_)
        leader = {}
        for i in order:  # first visited member of a component is its kept item
            leader.setdefault(find(i), i)
        for i in active:
            r = leader[find(i)]
            keep[i], rep[i], dist[i] = r == i, r, d(h[i], h[r])
    kept_sorted = [i for i in range(n) if keep[i]]
    gid = {k: g for g, k in enumerate(kept_sorted)}
    group = [gid[rep[i]] if rep[i] >= 0 else -1 for i in range(n)]
    conflicts = set()
    if lab is not None:  # one pair per pair of (hash, label) groups, named by their first items
        first = {}
        for i in range(n):
            if valid[i]:
                first.setdefault((h[i], lab[i]), i)
        for i in range(n):
            for j in range(i + 1, n):
                if valid[i] and valid[j] and lab[i] != lab[j] and d(h[i], h[j]) <= t:
                    a_, b_ = first[(h[i], lab[i])], first[(h[j], lab[j])]
                    conflicts.add((min(a_, b_), max(a_, b_), d(h[i], h[j])))
    return dict(keep=keep, rep=rep, dist=dist, group=group, leaked=leaked, leaks=leaks,
                failed=[not v for v in valid], conflicts=sorted(conflicts))


def assert_matches_naive(plan: DedupPlan, ref: dict) -> None:
    assert plan.keep.tolist() == ref["keep"]
    assert plan.representative.tolist() == ref["rep"]
    assert plan.distance_to_rep.tolist() == ref["dist"]
    assert plan.group.tolist() == ref["group"]
    assert plan.leaked.tolist() == ref["leaked"]
    assert plan.failed.tolist() == ref["failed"]
    assert [tuple(r) for r in plan.leaks.tolist()] == ref["leaks"]
    got = [(i, j, int(x)) for (i, j), x in zip(plan.label_conflicts.tolist(), plan.label_conflict_distances)]
    assert got == ref["conflicts"]


def check_invariants(plan: DedupPlan, hashes: np.ndarray) -> None:
    rows = hashes.reshape(len(hashes), 1) if hashes.ndim == 1 else hashes
    n, t = plan.n, plan.threshold
    keep, failed, leaked = plan.keep, plan.failed, plan.leaked
    removed = np.zeros(n, bool)
    removed[plan.removed_indices] = True
    # kept, removed, failed and leaked partition the items
    assert np.all(keep.astype(int) + removed + failed + leaked == 1)
    dist = lambda i, j: int(popcount(rows[i] ^ rows[j]).sum())
    same = (lambda i, j: plan.labels[i] == plan.labels[j]) if plan.per_class else (lambda i, j: True)
    kept = plan.kept_indices.tolist()
    if plan.policy == "greedy":
        for a in kept:
            for b in kept:
                if a < b and same(a, b):
                    assert dist(a, b) > t, (a, b)
    for i in np.flatnonzero(removed).tolist():
        r = int(plan.representative[i])
        assert keep[r] and same(i, r)
        assert plan.distance_to_rep[i] == dist(i, r)
        if plan.policy == "greedy":
            assert dist(i, r) <= t
        assert plan.group[i] == plan.group[r]


# ----------------------------------------------------------------------------- data


def clustered(rng, n, n_centres, max_flips, words=1):
    centres = rng.integers(0, 2**64, size=(n_centres, words), dtype=np.uint64, endpoint=False)
    h = centres[rng.integers(0, n_centres, n)].copy()
    flips = rng.integers(0, max_flips + 1, n)
    for i in np.flatnonzero(flips):
        for b in rng.integers(0, 64 * words, flips[i]):
            h[i, b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    return h[:, 0].copy() if words == 1 else h


@st.composite
def cases(draw):
    words = draw(st.sampled_from([1, 1, 1, 2]))
    n = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    h = clustered(rng, n, draw(st.integers(1, 8)), draw(st.integers(0, 8)), words)
    kw = dict(policy=draw(st.sampled_from(["greedy", "components"])))
    t = draw(st.integers(0, 12))
    if draw(st.booleans()):
        kw["priority"] = rng.integers(0, 4, n).astype(draw(st.sampled_from([np.float64, np.int64, np.uint8])))
    if draw(st.booleans()):
        kw["labels"] = rng.integers(0, 3, n)
        kw["per_class"] = draw(st.booleans())
    if draw(st.booleans()):
        m = draw(st.integers(0, 5))
        idx = rng.integers(0, max(n, 1), m)
        kw["against"] = (h[idx] if n else clustered(rng, m, 2, 3, words)).copy()
        if len(kw["against"]):
            kw["against"][0] ^= np.uint64(1)
    if draw(st.booleans()):
        kw["valid"] = rng.random(n) < 0.8
    return h, t, kw


# ----------------------------------------------------------------------------- tests


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_matches_naive_reference_and_invariants(case):
    h, t, kw = case
    plan = find_duplicates(h, t, **kw)
    assert_matches_naive(plan, naive(h, t, **kw))
    check_invariants(plan, h)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.integers(0, 14))
def test_sweep_equals_find_duplicates_at_every_threshold(case, top):
    h, t, kw = case
    plan = find_duplicates(h, t, sweep_max=top, **kw)
    want = [find_duplicates(h, s, **kw).n_kept for s in range(top + 1)]
    assert plan.sweep.tolist() == want
    no_against = {k: v for k, v in kw.items() if k != "against"}
    swept = sweep_thresholds(h, top, **no_against)
    assert swept.tolist() == [find_duplicates(h, s, **no_against).n_kept for s in range(top + 1)]
    if "labels" in kw:
        by = sweep_thresholds_by_class(h, top, **no_against)
        assert by.kept.sum(axis=1).tolist() == swept.tolist()
        for s in (0, top):
            counts = find_duplicates(h, s, **no_against).per_class_counts()
            assert by.kept[s].tolist() == [counts[int(c)][1] for c in by.classes]


def naive_pair_histogram(h, top, labels=None, per_class=False, valid=None, **_):
    """Item pairs ``i < j`` at each distance ``0..top`` by brute force (valid items; one label under per_class)."""
    rows = h.reshape(len(h), -1 if len(h) else 1)
    d = distance_matrix(rows, rows)
    ok = np.ones(len(h), bool) if valid is None else np.asarray(valid, bool)
    mask = np.triu(np.ones_like(d, bool), k=1) & ok[:, None] & ok[None, :] & (d <= top)
    if per_class:
        mask &= np.asarray(labels)[:, None] == np.asarray(labels)[None, :]
    return np.bincount(d[mask], minlength=top + 1)[:top + 1].tolist()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.integers(0, 14), st.booleans())
def test_sweep_pairs_equal_brute_force_held_and_streamed(case, top, stream):
    h, t, kw = case
    memory_limit = 1 << 20 if stream else None
    saved = key_graph._PAIR_BYTES  # read there by the key graph, the decision and the sweep
    try:
        if stream:  # no pair fits: the decision and the pair counts stream
            key_graph._PAIR_BYTES = 1 << 40
        plan = find_duplicates(h, t, sweep_max=top, memory_limit=memory_limit, **kw)
    finally:
        key_graph._PAIR_BYTES = saved
    want = naive_pair_histogram(h, top, **kw)
    assert plan.sweep_pairs.dtype == np.int64 and plan.sweep_pairs.tolist() == want
    assert plan.sweep_pairs_within.tolist() == np.cumsum(want).tolist()
    assert find_duplicates(h, t, **kw).sweep_pairs is None


def test_sweep_pairs_of_large_exact_groups_and_composite_codes():
    # 20k copies of two values one bit apart: 2 * C(10k, 2) pairs at 0, 10k^2 at 1, counted per key
    h = np.zeros(20_000, np.uint64)
    h[::2] = 1
    plan = find_duplicates(h, 1, sweep_max=2)
    assert plan.sweep_pairs.tolist() == [2 * (10_000 * 9_999 // 2), 10_000 ** 2, 0]
    by_class = find_duplicates(h, 1, labels=np.arange(20_000) % 3, per_class=True, sweep_max=1)
    m1, m0 = np.bincount(np.arange(0, 20_000, 2) % 3), np.bincount(np.arange(1, 20_000, 2) % 3)  # per label
    at_0 = int((m1 * (m1 - 1) // 2).sum() + (m0 * (m0 - 1) // 2).sum())
    assert by_class.sweep_pairs.tolist() == [at_0, int((m1 * m0).sum())]
    # a composite code (two 64-bit words side by side): the distance is the sum over the words
    rows = np.array([[0, 0], [1, 0], [1, 3], [7, 7]], np.uint64)
    assert find_duplicates(rows, 0, sweep_max=4).sweep_pairs.tolist() == naive_pair_histogram(rows, 4)


def test_worked_example():
    h = np.array([0b0000, 0b0001, 0b0011, 0xF0F0, 0b0000], dtype=np.uint64)
    g = find_duplicates(h, 1)
    assert g.keep.tolist() == [True, False, True, True, False]
    assert g.representative.tolist() == [0, 0, 2, 3, 0]
    assert g.group.tolist() == [0, 0, 1, 2, 0]
    assert g.distance_to_rep.tolist() == [0, 1, 0, 0, 0]
    c = find_duplicates(h, 1, policy="components")
    assert c.keep.tolist() == [True, False, False, True, False]
    assert c.distance_to_rep.tolist() == [0, 1, 2, 0, 0]  # direct distance, beyond t along the chain
    assert c.group_sizes().tolist() == [4, 1]
    # a score puts the chain's middle first: it keeps both ends away under greedy
    p = find_duplicates(h, 1, priority=np.array([0, 5, 0, 0, 0.0]))
    assert p.kept_indices.tolist() == [1, 3]


def test_priority_ties_break_by_index_and_exact_group_best_member_decides():
    h = np.array([7, 7, 7, 6], dtype=np.uint64)
    plan = find_duplicates(h, 0, priority=np.array([1.0, 3.0, 3.0, 9.0]))
    assert plan.kept_indices.tolist() == [1, 3]
    assert plan.representative.tolist() == [1, 1, 1, 3]


def test_per_class_keeps_identical_hashes_with_other_labels():
    h = np.array([5, 5, 5, 4], dtype=np.uint64)
    labels = np.array([0, 1, 0, 1])
    plan = find_duplicates(h, 1, labels=labels, per_class=True)
    assert plan.kept_indices.tolist() == [0, 1]
    assert plan.representative.tolist() == [0, 1, 0, 1]
    # items 0 and 2 share hash and label: one group, named by item 0
    assert plan.label_conflicts.tolist() == [[0, 1], [0, 3]]
    assert plan.label_conflict_distances.tolist() == [0, 1]
    flat = find_duplicates(h, 1, labels=labels)
    assert flat.kept_indices.tolist() == [0]
    assert flat.label_conflicts.tolist() == plan.label_conflicts.tolist()
    assert flat.per_class_counts() == {0: (2, 1), 1: (2, 0)}


def test_against_removes_leaks_first_and_they_take_no_part():
    h = np.array([0b000, 0b001, 0b011], dtype=np.uint64)
    test_set = np.array([0b100, 0b000, 0b000], dtype=np.uint64)
    plan = find_duplicates(h, 1, against=test_set)
    assert plan.leaked.tolist() == [True, True, False]
    assert plan.leaks.tolist() == [[0, 1, 0], [1, 1, 1]]  # nearest row, lowest on ties
    # item 2 was within 1 of leaked item 1 only: it is kept, not removed for a leaked item
    assert plan.kept_indices.tolist() == [2]


def test_multiword_hashes_and_components_distance():
    rng = np.random.default_rng(3)
    h = clustered(rng, 120, 10, 20, words=4)
    for policy in ("greedy", "components"):
        plan = find_duplicates(h, 24, policy=policy, labels=rng.integers(0, 2, 120))
        assert_matches_naive(plan, naive(h, 24, policy=policy, labels=plan.labels))
        check_invariants(plan, h)


def test_large_exact_duplicate_groups_are_collapsed():
    # 20k copies of one value: item-level pairs would be 2e8; keys make it instant
    h = np.zeros(20_000, np.uint64)
    h[::2] = 1
    labels = np.arange(20_000) % 3
    plan = find_duplicates(h, 1, labels=labels, per_class=True, sweep_max=2)
    assert plan.kept_indices.tolist() == [0, 1, 2]
    assert plan.sweep.tolist() == [6, 3, 3]
    # 3 within-value group pairs per value, and 6 across values: not ~10^8 item pairs
    assert len(plan.label_conflicts) == 12
    assert find_duplicates(h, 0).kept_indices.tolist() == [0, 1]


def test_empty_and_all_invalid():
    plan = find_duplicates(np.zeros(0, np.uint64), sweep_max=3)
    assert plan.n == 0 and plan.n_kept == 0 and plan.sweep.tolist() == [0, 0, 0, 0]
    bad = find_duplicates(np.ones(4, np.uint64), valid=np.zeros(4, bool))
    assert bad.failed.all() and bad.n_kept == 0 and bad.removed_indices.size == 0
    assert sweep_thresholds(np.zeros((0, 2), np.uint64), 5).tolist() == [0] * 6


@pytest.mark.parametrize("kwargs, words", [
    (dict(threshold=-1), "threshold"),
    (dict(threshold=65), "threshold"),
    (dict(threshold=True), "threshold"),
    (dict(threshold=2.0), "threshold"),
    (dict(policy="cliques"), "policy"),
    (dict(priority=np.ones(3)), "priority"),
    (dict(priority=np.array(["a"] * 4)), "priority"),
    (dict(priority=np.array([1, np.nan, 1, 1])), "NaN"),
    (dict(labels=np.ones(5, int)), "labels"),
    (dict(labels=np.ones(4)), "labels"),
    (dict(per_class=True), "per_class"),
    (dict(per_class="yes", labels=np.ones(4, int)), "per_class"),
    (dict(against=np.zeros((2, 2), np.uint64)), "against"),
    (dict(against=np.zeros(2, np.int64)), "against"),
    (dict(valid=np.ones(4, int)), "valid"),
    (dict(valid=np.ones(3, bool)), "valid"),
    (dict(sweep_max=70), "sweep_max"),
    (dict(settings=[1]), "settings"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, words):
    h = np.arange(4, dtype=np.uint64)
    with pytest.raises(ValueError, match=words):
        find_duplicates(h, **kwargs)


def test_bad_hashes():
    with pytest.raises(ValueError, match="uint64"):
        find_duplicates(np.arange(4), 2)
    with pytest.raises(ValueError, match="shape"):
        find_duplicates(np.zeros((2, 2, 2), np.uint64), 2)
    with pytest.raises(ValueError, match="max_threshold"):
        sweep_thresholds(np.zeros(3, np.uint64), 65)
    with pytest.raises(ValueError, match="labels"):
        sweep_thresholds_by_class(np.zeros(3, np.uint64), 3, labels=None)


def test_deterministic_and_settings_recorded():
    rng = np.random.default_rng(7)
    h = clustered(rng, 500, 40, 6)
    a = find_duplicates(h, 5, settings={"method": "phash", "hash_size": 8}, provenance={"fingerprint": "x"})
    b = find_duplicates(h, 5)
    assert np.array_equal(a.keep, b.keep) and np.array_equal(a.representative, b.representative)
    assert a.settings["method"] == "phash" and a.settings["hash_bits"] == 64 and a.settings["priority"] == "index"
    assert a.provenance == {"fingerprint": "x"}


# ----------------------------------------------------------------------------- imagededup oracle


def imagededup_keep(h: np.ndarray, t: int) -> list[bool]:
    phash = pytest.importorskip("imagededup.methods").PHash(verbose=False)
    names = [f"{i:05d}" for i in range(len(h))]
    enc = {name: f"{int(v):016x}" for name, v in zip(names, h)}
    with warnings.catch_warnings():  # imagededup always warns that num_enc_workers is unused with encodings
        warnings.simplefilter("ignore", RuntimeWarning)
        removed = set(phash.find_duplicates_to_remove(encoding_map=enc, max_distance_threshold=t,
                                                      num_dist_workers=0))
    return [name not in removed for name in names]


@pytest.mark.parametrize("seed, t", [(0, 0), (1, 4), (2, 8), (3, 12)])
def test_greedy_equals_imagededup_on_clustered_hashes(seed, t):
    rng = np.random.default_rng(seed)
    h = clustered(rng, 300, 60, 10)
    h[rng.integers(0, 300, 40)] = h[rng.integers(0, 300, 40)]  # some exact duplicates too
    plan = find_duplicates(h, t)
    want = imagededup_keep(h, t)
    assert plan.keep.tolist() == want
    assert 0 < plan.n_kept < 300 or t == 0


@pytest.fixture(scope="module")
def sample_phashes() -> np.ndarray:
    imagehash = pytest.importorskip("imagehash")
    from PIL import Image

    from torch_dedup.embedded import load_sample

    images, _ = load_sample()
    return np.array([int(str(imagehash.phash(Image.fromarray(im))), 16) for im in images[:400]], dtype=np.uint64)


@pytest.mark.parametrize("t", [4, 10, 16])
def test_greedy_equals_imagededup_on_real_phashes(sample_phashes, t):
    plan = find_duplicates(sample_phashes, t)
    assert plan.keep.tolist() == imagededup_keep(sample_phashes, t)
    assert plan.n_removed > 0


# ----------------------------------------------------------------------------- leak_pairs


def naive_leak_pairs(hashes, against, t, valid=None) -> np.ndarray:
    """Every (item, row, distance) within ``t``, by the full distance matrix; item then row order."""
    d = distance_matrix(hashes, against)
    ok = d <= t
    if valid is not None:
        ok &= np.asarray(valid)[:, None]
    i, j = np.nonzero(ok)  # C order: sorted by item, then row
    return np.stack([i, j, d[i, j]], axis=1).astype(np.int64).reshape(-1, 3)


def check_leak_pairs(plan: DedupPlan, hashes, against, t, valid=None) -> None:
    lp = plan.leak_pairs
    assert lp is not None and lp.dtype == np.int64 and lp.shape[1:] == (3,)
    np.testing.assert_array_equal(lp, naive_leak_pairs(hashes, against, t, valid))
    assert np.array_equal(np.unique(lp[:, 0]), np.flatnonzero(plan.leaked))
    # plan.leaks: per leaked item, the lowest row among its nearest pairs
    for item, row, d in plan.leaks.tolist():
        mine = lp[lp[:, 0] == item]
        nearest = mine[mine[:, 2] == mine[:, 2].min()]
        assert (row, d) == (int(nearest[:, 1].min()), int(nearest[0, 2]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.integers(0, 6))
def test_leak_pairs_match_brute_force(case, extra_sweep):
    h, t, kw = case
    if "against" not in kw:
        return
    plan = find_duplicates(h, t, leak_pairs=True, sweep_max=t + extra_sweep, **kw)  # search above t: filtered
    check_leak_pairs(plan, h, kw["against"], t, kw.get("valid"))
    assert_matches_naive(plan, naive(h, t, **kw))


def test_leak_pairs_with_many_identical_hashes_on_both_sides():
    rng = np.random.default_rng(12)
    base = rng.integers(0, 2**64, size=4, dtype=np.uint64)
    h = base[rng.integers(0, 4, 300)]
    h[::5] ^= np.uint64(1 << 7)
    against = np.concatenate([np.repeat(base[:2], 40), base[2:3] ^ np.uint64(0b11), rng.integers(0, 2**64, 30,
                                                                                                  dtype=np.uint64)])
    rng.shuffle(against)
    valid = rng.random(300) < 0.85
    labels = rng.integers(0, 3, 300)
    for t in (0, 1, 2, 3):
        # per_class restricts pairs within this set only: a leak is a leak whatever its label
        plan = find_duplicates(h, t, against=against, valid=valid, labels=labels, per_class=True, leak_pairs=True)
        check_leak_pairs(plan, h, against, t, valid)
        assert len(plan.leak_pairs) > 1000 or t < 2  # groups of ~60 x 40 items: the product, not one row
        assert not plan.leaked[~valid].any() and not (plan.leak_pairs[:, 0][:, None] == np.flatnonzero(~valid)).any()


def test_leak_pairs_multiword_256_bit():
    rng = np.random.default_rng(4)
    h = clustered(rng, 150, 12, 20, words=4)
    against = h[rng.integers(0, 150, 25)].copy()
    against[::2, 1] ^= np.uint64(0xFF)
    against = np.concatenate([against, against[:5]])  # repeated rows of the other set
    for policy in ("greedy", "components"):
        plan = find_duplicates(h, 24, policy=policy, against=against, leak_pairs=True, valid=rng.random(150) < 0.9)
        check_leak_pairs(plan, h, against, 24, plan.failed == 0)
        assert len(plan.leak_pairs) > len(plan.leaks) > 0


def test_leak_pairs_off_empty_and_saved(tmp_path):
    h = np.array([0b000, 0b001, 0b011], dtype=np.uint64)
    test_set = np.array([0b100, 0b000, 0b000], dtype=np.uint64)
    assert find_duplicates(h, 1, against=test_set).leak_pairs is None  # default: not computed
    plan = find_duplicates(h, 1, against=test_set, leak_pairs=True)
    assert plan.leak_pairs.tolist() == [[0, 0, 1], [0, 1, 0], [0, 2, 0], [1, 1, 1], [1, 2, 1]]
    assert plan.leaks.tolist() == [[0, 1, 0], [1, 1, 1]]
    plan.save(tmp_path / "p")
    loaded = DedupPlan.load(tmp_path / "p")
    np.testing.assert_array_equal(loaded.leak_pairs, plan.leak_pairs)
    none = find_duplicates(h, 1, leak_pairs=True)
    assert none.leak_pairs.shape == (0, 3) and none.leak_pairs.dtype == np.int64
    far = find_duplicates(h, 1, against=np.array([2**64 - 1], np.uint64), leak_pairs=True)
    assert far.leak_pairs.shape == (0, 3) and not far.leaked.any()
    assert find_duplicates(h, 1, against=np.zeros(0, np.uint64), leak_pairs=True).leak_pairs.shape == (0, 3)
    assert find_duplicates(h[:0], 1, against=test_set, leak_pairs=True).leak_pairs.shape == (0, 3)
    with pytest.raises(ValueError, match="leak_pairs must be True or False, got 'yes'"):
        find_duplicates(h, 1, against=test_set, leak_pairs="yes")


# ----------------------------------------------------------------------------- keep_from_pairs


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_keep_from_pairs_is_the_keep_step_of_find_duplicates(case):
    h, t, kw = case
    from torch_dedup.hamming.search import hamming_pairs

    policy = kw["policy"]
    plan = find_duplicates(h, t, policy=policy)  # dataset order, all items
    pairs = hamming_pairs(h, t).pairs
    keep, rep = keep_from_pairs(len(h), pairs[:, ::-1], policy=policy)  # either order
    assert keep.dtype == np.bool_ and rep.dtype == np.int64
    np.testing.assert_array_equal(keep, plan.keep)
    np.testing.assert_array_equal(rep, plan.representative)
    # repeated and self pairs change nothing
    noisy = np.concatenate([pairs, pairs, np.stack([np.arange(len(h))] * 2, axis=1)])
    np.testing.assert_array_equal(keep_from_pairs(len(h), noisy, policy=policy)[1], rep)


@pytest.mark.parametrize("args, kwargs, match", [
    ((-1, np.zeros((0, 2), int)), {}, r"n must be an int >= 0.*-1"),
    ((3, np.zeros((2, 3), int)), {}, r"pairs must be a \(P, 2\) integer array"),
    ((3, np.zeros((2, 2))), {}, r"pairs must be a \(P, 2\) integer array.*float64"),
    ((3, np.array([[0, 3]])), {}, r"pairs must name nodes in \[0, 2\].*\[0, 3\]"),
    ((3, np.zeros((0, 2), int)), {"policy": "cliques"}, r"policy='cliques'"),
])
def test_keep_from_pairs_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        keep_from_pairs(*args, **kwargs)
    assert keep_from_pairs(0, np.zeros((0, 2), int))[0].shape == (0,)
