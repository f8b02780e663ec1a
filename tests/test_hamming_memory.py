"""Clustering and sweeps in bounded memory (issue 14, item 2).

Past ``memory_limit`` the keep decision streams the pairs instead of holding them
(windows of priority order for greedy, union-finds folded while the search runs for
components). These tests force that path with tiny pair caps and hold it to the
materialised path and to the naive reference, field by field; outputs that are pairs
themselves refuse with their count and the fix.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cluster import assert_matches_naive, cases, check_invariants, clustered, naive

import torch_dedup.hamming._key_graph as key_graph
import torch_dedup.hamming.cluster as cluster
import torch_dedup.hamming.streaming as streaming
from torch_dedup.hamming.cluster import (
    find_duplicates,
    sweep_thresholds,
    sweep_thresholds_by_class,
)

MIB = 1 << 20
LIMIT = 64 * MIB  # memory_limit of the streamed runs: outputs fit, the decision's pairs do not (pair_cap)


@pytest.fixture
def pair_cap(monkeypatch):
    """Set the most distinct-value pairs a decision may hold at ``memory_limit=LIMIT`` (0: stream everything)."""

    def set_cap(pairs: int) -> None:
        # read there by the key graph, the decision and the sweep
        monkeypatch.setattr(key_graph, "_PAIR_BYTES", LIMIT // pairs if pairs else 2 * LIMIT)

    return set_cap


def _fields(plan):
    return dict(keep=plan.keep, rep=plan.representative, dist=plan.distance_to_rep, group=plan.group,
                leaked=plan.leaked, failed=plan.failed, leaks=plan.leaks, conflicts=plan.label_conflicts,
                conflict_d=plan.label_conflict_distances, sweep=plan.sweep, leak_pairs=plan.leak_pairs)


def assert_same_plan(got, want) -> None:
    a, b = _fields(got), _fields(want)
    for k in a:
        if b[k] is None:
            assert a[k] is None, k
        else:
            assert a[k].dtype == b[k].dtype and a[k].tolist() == b[k].tolist(), k


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(cases(), st.sampled_from([0, 1, 3, 20]), st.integers(0, 6), st.booleans())
def test_streamed_plan_equals_materialised_and_naive(pair_cap, case, cap, extra_sweep, leak_pairs):
    h, t, kw = case
    want = find_duplicates(h, t, sweep_max=t + extra_sweep, leak_pairs=leak_pairs, memory_limit=None, **kw)
    pair_cap(cap)
    got = find_duplicates(h, t, sweep_max=t + extra_sweep, leak_pairs=leak_pairs, memory_limit=LIMIT, **kw)
    assert_same_plan(got, want)
    assert_matches_naive(got, naive(h, t, **kw))
    check_invariants(got, h)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(cases(), st.sampled_from([0, 2, 20]), st.integers(0, 16))
def test_streamed_sweeps_equal_materialised(pair_cap, case, cap, top):
    h, _, kw = case
    kw.pop("against", None)
    want = sweep_thresholds(h, top, memory_limit=None, **kw)
    by_want = sweep_thresholds_by_class(h, top, memory_limit=None, **kw) if "labels" in kw else None
    pair_cap(cap)
    assert sweep_thresholds(h, top, memory_limit=LIMIT, **kw).tolist() == want.tolist()
    if by_want is not None:
        by = sweep_thresholds_by_class(h, top, memory_limit=LIMIT, **kw)
        assert by.classes.tolist() == by_want.classes.tolist() and by.kept.tolist() == by_want.kept.tolist()


@pytest.mark.parametrize("policy", ["greedy", "components"])
@pytest.mark.parametrize("words,t", [(1, 24), (1, 32), (1, 64), (2, 60), (4, 120)])
def test_large_thresholds_on_random_hashes(pair_cap, policy, words, t):
    # the case of issue 14: most pairs within t, so the windows hold few keys each
    rng = np.random.default_rng(t + words)
    h = rng.integers(0, 2**64, (300, words), dtype=np.uint64)
    h[250:] = h[:50]  # exact duplicates
    labels = rng.integers(0, 3, 300)
    kw = dict(policy=policy, labels=labels, against=h[10:20] ^ np.uint64(3), leak_pairs=True)
    want = find_duplicates(h, t, sweep_max=t, memory_limit=None, **kw)
    pair_cap(50)
    got = find_duplicates(h, t, sweep_max=t, memory_limit=LIMIT, **kw)
    assert_same_plan(got, want)
    check_invariants(got, h)
    per_class = find_duplicates(h, t, memory_limit=LIMIT, per_class=True, **kw)
    assert_same_plan(per_class, find_duplicates(h, t, memory_limit=None, per_class=True, **kw))


def test_adversarial_one_centre_many_kept_neighbours(pair_cap):
    # keys pairwise more than t apart but all within t of later keys: a later key sees many kept ones
    t = 8
    base = np.array([(np.uint64(0xFF) << np.uint64(8 * i)) for i in range(8)], np.uint64)  # 8 bits each, disjoint
    centres = np.uint64(0) | np.zeros(20, np.uint64)
    h = np.concatenate([base, base ^ np.uint64(1 << 63), centres, clustered(np.random.default_rng(1), 200, 5, 4)])
    for policy in ("greedy", "components"):
        want = find_duplicates(h, t, policy=policy, sweep_max=12, memory_limit=None)
        for cap in (0, 1, 5):
            pair_cap(cap)
            assert_same_plan(find_duplicates(h, t, policy=policy, sweep_max=12, memory_limit=LIMIT), want)
        assert_matches_naive(want, naive(h, t, policy=policy))


def test_held_pairs_never_exceed_the_cap(pair_cap, monkeypatch):
    held = []
    real = key_graph._collect_pairs

    def spy(rows, t, cap, cls, workers, **kw):
        out = real(rows, t, cap, cls, workers, **kw)
        held.append((len(out[0]), cap))
        return out

    monkeypatch.setattr(key_graph, "_collect_pairs", spy)  # the key graph's held pairs
    monkeypatch.setattr(streaming, "_collect_pairs", spy)  # the streamed windows' own calls
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**64, 600, dtype=np.uint64)
    pair_cap(100)
    plan = find_duplicates(h, 30, sweep_max=31, memory_limit=LIMIT)
    assert held and all(n <= cap for n, cap in held), held
    assert plan.sweep.tolist() == sweep_thresholds(h, 31, memory_limit=None).tolist()


def test_label_conflicts_refused_above_the_limit_with_estimate_and_fix():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**64, 3000, dtype=np.uint64)
    labels = rng.integers(0, 10, 3000)
    with pytest.raises(ValueError, match=r"label conflicts .* threshold 32 .* are about [0-9,]+ pairs .*estimated from a sample.*MiB.*"
                                         r"memory_limit=1,048,576.*Lower the threshold.*hash_size.*memory_limit=None"):
        find_duplicates(h, 32, labels=labels, memory_limit=MIB)
    plan = find_duplicates(h, 32, labels=labels, memory_limit=None)  # the explicit way past the cap
    assert len(plan.label_conflicts) > MIB // key_graph._OUT_PAIR_BYTES


@pytest.mark.parametrize("streamed", [False, True])
def test_output_caps_hold_even_when_the_sample_misses(monkeypatch, pair_cap, streamed):
    # tight clusters the sample does not see: the exact count still refuses, never a silent blow-up
    for mod in (key_graph, cluster):  # the leak search sits in the key graph, the conflicts in cluster
        monkeypatch.setattr(mod, "_pair_fraction", lambda *a, **k: 0.0)
    monkeypatch.setattr(key_graph, "_OUT_PAIR_BYTES", LIMIT // 10)  # read there by both
    if streamed:
        pair_cap(0)
    h = np.arange(40, dtype=np.uint64) << np.uint64(3)
    labels = np.arange(40) % 2
    with pytest.raises(ValueError, match="label conflicts .* are (more than )?[0-9,]+ pairs"):
        find_duplicates(h, 64, labels=labels, memory_limit=LIMIT)
    with pytest.raises(ValueError, match=r"leak pairs \(leak_pairs=True\)"):
        find_duplicates(h, 64, against=h[:5], leak_pairs=True, memory_limit=LIMIT)
    find_duplicates(h, 64, labels=labels, against=h[:5], leak_pairs=True, memory_limit=None)


@pytest.mark.parametrize("bad", [0, 1000, -1, 1.5, True, "1GB"])
def test_memory_limit_validated(bad):
    with pytest.raises(ValueError, match="memory_limit"):
        find_duplicates(np.zeros(3, np.uint64), 1, memory_limit=bad)
    with pytest.raises(ValueError, match="memory_limit"):
        sweep_thresholds(np.zeros(3, np.uint64), 1, memory_limit=bad)


@pytest.mark.parametrize("words,t,loud", [(1, 6, False), (1, 16, False), (1, 20, True), (1, 40, True),
                                          (4, 24, False), (4, 96, False), (4, 110, True)])
def test_thresholds_that_catch_random_pairs_are_warned_with_the_fix(caplog, words, t, loud):
    h = np.arange(5 * words, dtype=np.uint64).reshape(5, words)
    with caplog.at_level(logging.WARNING, logger="torch_dedup.hamming.cluster"):
        find_duplicates(h, t)
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    if loud:
        assert f"threshold={t} on {64 * words}-bit hashes" in text and "hash_size" in text
        assert "unrelated images" in text and "keep it at most" in text
    else:
        assert text == ""


def test_sweep_warns_only_past_half_the_bits(caplog):
    h = np.arange(5, dtype=np.uint64)
    with caplog.at_level(logging.WARNING, logger="torch_dedup.hamming.cluster"):
        sweep_thresholds(h, 24)
        assert not caplog.records
        sweep_thresholds(h, 33)
    assert "max_threshold=33 on 64-bit hashes" in caplog.records[0].getMessage()
