"""``find_duplicates_views``: items with several codes, against a naive all-pairs reference.

The oracle computes every item distance by a popcount over Python ints (own codes, and each
view against the other item's own code), the leaks the same way, and runs the greedy and
components decisions item by item in priority order — what the module's docstring defines.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_dedup.hamming import find_duplicates
from torch_dedup.hamming.views import find_duplicates_views, view_distances


def _pc(x) -> int:
    return sum(bin(int(v)).count("1") for v in np.ravel(x))


def _item_d(h, v, i, j) -> int:
    d = _pc(h[i] ^ h[j])
    d = min([d] + [_pc(v[i, k] ^ h[j]) for k in range(v.shape[1])] + [_pc(h[i] ^ v[j, k]) for k in range(v.shape[1])])
    return d


def _naive(h, v, t, policy, priority, labels, per_class, against, valid):
    n = len(h)
    idx = [i for i in range(n) if valid[i]]
    leak = {}
    if against is not None:
        for i in idx:
            ds = [(min([_pc(h[i] ^ a)] + [_pc(v[i, k] ^ a) for k in range(v.shape[1])]), r)
                  for r, a in enumerate(against)]
            d, r = min(ds)
            if d <= t:
                leak[i] = (r, d)
    order = sorted(idx, key=lambda i: (-priority[i], i)) if priority is not None else idx
    live = [i for i in order if i not in leak]

    def near(i, j):
        return (not per_class or labels[i] == labels[j]) and _item_d(h, v, i, j) <= t

    keep, rep = {}, {}
    if policy == "greedy":
        kept = []
        for i in live:
            hit = next((k for k in kept if near(i, k)), None)   # kept is in priority order
            if hit is None:
                kept.append(i)
                rep[i] = i
            else:
                rep[i] = hit
    else:
        parent = {i: i for i in live}

        def find(x):
            while parent[x] != x:
                x = parent[x]
            return x
        rank = {i: p for p, i in enumerate(live)}
        for a_ in live:
            for b_ in live:
                if rank[a_] < rank[b_] and near(a_, b_):
                    ra, rb = find(a_), find(b_)
                    if ra != rb:
                        lo, hi = (ra, rb) if rank[ra] < rank[rb] else (rb, ra)
                        parent[hi] = lo
        for i in live:
            rep[i] = find(i)
    for i in live:
        keep[i] = rep[i] == i
    conflicts = []
    if labels is not None:
        conflicts = [(i, j) for a_, i in enumerate(idx) for j in idx[a_ + 1:]
                     if labels[i] != labels[j] and _item_d(h, v, i, j) <= t]
    return keep, rep, leak, conflicts


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_views_plan_equals_the_naive_reference(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    n = data.draw(st.integers(1, 18))
    k = data.draw(st.integers(1, 3))
    w = data.draw(st.integers(1, 2))
    pool = rng.integers(0, 2**64, (3, w), dtype=np.uint64)

    def noisy(m):
        x = pool[rng.integers(0, 3, m)].copy()
        flips = rng.integers(0, 64 * w, (m, 3))
        for r in range(m):
            for f in flips[r][: rng.integers(0, 4)]:
                x[r, f // 64] ^= np.uint64(1) << np.uint64(f % 64)
        return x

    h = noisy(n)
    v = noisy(n * k).reshape(n, k, w)
    t = data.draw(st.integers(0, 6))
    policy = data.draw(st.sampled_from(["greedy", "components"]))
    priority = rng.random(n) if data.draw(st.booleans()) else None
    labels = rng.integers(0, 2, n) if data.draw(st.booleans()) else None
    per_class = labels is not None and data.draw(st.booleans())
    against = noisy(data.draw(st.integers(1, 4))) if data.draw(st.booleans()) else None
    valid = rng.random(n) > 0.15
    hh = h[:, 0] if w == 1 and data.draw(st.booleans()) else h
    sweep_max = data.draw(st.one_of(st.none(), st.integers(0, 8)))
    plan = find_duplicates_views(hh, v if w > 1 else v.reshape(n, k), t, policy=policy, priority=priority,
                                 labels=labels, per_class=per_class, against=against, valid=valid,
                                 sweep_max=sweep_max, leak_pairs=True,
                                 memory_limit=None if data.draw(st.booleans()) else 1 << 20)
    keep, rep, leak, conflicts = _naive(h, v, t, policy, priority, labels, per_class, against, valid)
    assert plan.keep.tolist() == [keep.get(i, False) for i in range(n)]
    assert plan.representative.tolist() == [rep.get(i, -1) for i in range(n)]
    assert plan.leaked.tolist() == [i in leak for i in range(n)]
    assert plan.leaks.tolist() == [[i, r, d] for i, (r, d) in sorted(leak.items())]
    assert plan.failed.tolist() == (~valid).tolist()
    assert plan.label_conflicts.tolist() == [list(c) for c in conflicts]
    live = [i for i in range(n) if rep.get(i, -1) >= 0]
    assert [int(plan.distance_to_rep[i]) for i in live] == [_item_d(h, v, i, rep[i]) if rep[i] != i else 0
                                                           for i in live]
    assert plan.settings["views"] == k
    idx = [i for i in range(n) if valid[i]]
    want_lp = [[i, r, min([_pc(h[i] ^ a_)] + [_pc(v[i, q] ^ a_) for q in range(k)])]
               for i in idx for r, a_ in enumerate(against if against is not None else [])]
    assert plan.leak_pairs.tolist() == [x for x in want_lp if x[2] <= t]
    if sweep_max is None:
        assert plan.sweep is None and plan.sweep_pairs is None
    else:
        kept = [sum(_naive(h, v, s, policy, priority, labels, per_class, against, valid)[0].values())
                for s in range(sweep_max + 1)]
        assert plan.sweep.tolist() == kept
        ds = [_item_d(h, v, i, j) for x, i in enumerate(idx) for j in idx[x + 1:]
              if not per_class or labels[i] == labels[j]]
        assert plan.sweep_pairs.tolist() == [sum(d == s for d in ds) for s in range(sweep_max + 1)]


def test_views_that_repeat_the_own_code_give_find_duplicates_sweep_and_leak_pairs_included():
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2**64, (200, 2), dtype=np.uint64)
    h[100:] = h[:100]
    h[100:, 1] ^= np.uint64(0b101)                    # 2 bits from its twin
    v = np.repeat(h[:, None, :], 3, axis=1)
    test = h[:7].copy()
    test[:, 0] ^= np.uint64(1)
    for policy in ("greedy", "components"):
        a = find_duplicates_views(h, v, 3, policy=policy, against=test, labels=np.arange(200) % 3, sweep_max=6,
                                  leak_pairs=True)
        b = find_duplicates(h, 3, policy=policy, against=test, labels=np.arange(200) % 3, sweep_max=6,
                            leak_pairs=True)
        for f in ("keep", "representative", "distance_to_rep", "leaked", "leaks", "group", "sweep", "sweep_pairs",
                  "leak_pairs"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        assert a.label_conflicts.tolist() == b.label_conflicts.tolist() and len(a.label_conflicts) == 100
        np.testing.assert_array_equal(a.label_conflict_distances, b.label_conflict_distances)


def test_view_distances_is_the_minimum_over_own_codes_and_views():
    rng = np.random.default_rng(2)
    h = rng.integers(0, 2**64, (30, 3), dtype=np.uint64)
    v = rng.integers(0, 2**64, (30, 4, 3), dtype=np.uint64)
    i, j = rng.integers(0, 30, 50), rng.integers(0, 30, 50)
    assert view_distances(h, v, i, j).tolist() == [_item_d(h, v, a, b) for a, b in zip(i, j)]


def test_bad_views_and_too_many_pairs_are_refused_with_the_fix():
    h = np.zeros((5, 2), np.uint64)
    with pytest.raises(ValueError, match=r"views must have shape \(5, K, 2\)"):
        find_duplicates_views(h, np.zeros((5, 2), np.uint64))
    with pytest.raises(ValueError, match="uint64"):
        find_duplicates_views(h, np.zeros((5, 1, 2), np.int64))
    many = np.zeros(3000, np.uint64)                   # 4.5M pairs at distance 0: refused before the search
    with pytest.raises(ValueError, match=r"item pairs at threshold 0 on 64-bit hashes are about .* \(estimated"):
        find_duplicates_views(many, many[:, None], 0, memory_limit=1 << 20)
    few = np.random.default_rng(0).integers(0, 2**64, 3000, dtype=np.uint64)
    few[:1500] = 0                                     # a tight group the 2,048-row sample may miss: the hard cap
    with pytest.raises(ValueError, match="memory_limit="):
        find_duplicates_views(few, few[:, None], 0, memory_limit=1 << 20)
