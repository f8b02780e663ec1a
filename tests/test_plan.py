"""DedupPlan: views, summaries, save/load round trip, and refusal of corrupt or hostile files."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_dedup._store import read_store, write_store
from torch_dedup.errors import PlanError, StoreError
from torch_dedup.hamming.cluster import find_duplicates
from torch_dedup.plan import DedupPlan


def make_plan(n=300, seed=0, **kw) -> DedupPlan:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**63, 30, dtype=np.uint64)
    h = centres[rng.integers(0, 30, n)] ^ (np.uint64(1) << rng.integers(0, 8, n).astype(np.uint64))
    kw.setdefault("labels", rng.integers(0, 4, n))
    kw.setdefault("valid", rng.random(n) < 0.95)
    kw.setdefault("against", h[:3] ^ np.uint64(1 << 40))
    return find_duplicates(h, 3, sweep_max=6, settings={"method": "phash"},
                           provenance={"fingerprint": "abc123", "versions": {"torch_dedup": "0.1.0"}}, **kw)


def assert_same(a: DedupPlan, b: DedupPlan) -> None:
    for f in fields(DedupPlan):
        if f.name == "path":
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None and x.dtype == y.dtype and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


# ----------------------------------------------------------------------------- views


def test_views_and_counts():
    plan = make_plan()
    assert plan.kept_indices.dtype == np.int64 and np.all(np.diff(plan.kept_indices) > 0)
    assert plan.n_kept + plan.n_removed == plan.n
    assert plan.n_kept + len(plan.removed_indices) + plan.failed.sum() + plan.leaked.sum() == plan.n
    assert plan.ratio == pytest.approx(plan.n_removed / plan.n)
    sizes = plan.group_sizes()
    assert len(sizes) == plan.n_kept and sizes.sum() == plan.n_kept + len(plan.removed_indices)
    top = plan.largest_groups(3)
    assert [len(m) for _, m in top] == sorted(sizes.tolist(), reverse=True)[:3]
    for rep, members in top:
        assert plan.keep[rep] and rep in members.tolist()
        assert np.all(plan.representative[members] == rep)
    counts = plan.per_class_counts()
    assert sum(b for b, _ in counts.values()) == plan.n
    assert sum(a for _, a in counts.values()) == plan.n_kept
    d = plan.summary_dict()
    json.dumps(d)
    assert d["n_kept"] == plan.n_kept and d["n_leaked"] == int(plan.leaked.sum()) and d["sweep"] == plan.sweep.tolist()
    text = plan.summary()
    assert f"{plan.n} items" in text and "threshold 3" in text and "leaked" in text
    assert not plan.keep.flags.writeable  # the plan cannot be edited behind a sampler's back


def test_per_class_counts_needs_labels():
    plan = find_duplicates(np.arange(5, dtype=np.uint64), 1)
    with pytest.raises(ValueError, match="labels"):
        plan.per_class_counts()
    with pytest.raises(ValueError, match="k="):
        plan.largest_groups(-1)


def test_empty_plan():
    plan = find_duplicates(np.zeros(0, np.uint64), 4)
    assert plan.n == 0 and plan.ratio == 0.0 and plan.group_sizes().size == 0 and plan.largest_groups() == []
    assert "0 items" in plan.summary()


def test_inconsistent_plan_cannot_be_built():
    good = make_plan(n=20)
    rep = good.representative.copy()
    rep[good.kept_indices[0]] = -1
    with pytest.raises(ValueError, match="representative"):
        DedupPlan(**{**{f.name: getattr(good, f.name) for f in fields(DedupPlan)}, "representative": rep})


# ----------------------------------------------------------------------------- storage


def test_save_load_round_trip(tmp_path):
    plan = make_plan()
    path = plan.save(tmp_path / "plan.tdp")
    back = DedupPlan.load(path)
    assert_same(plan, back)
    assert back.path == str(path)
    bare = find_duplicates(np.arange(10, dtype=np.uint64), 0)
    assert_same(bare, DedupPlan.load(bare.save(tmp_path / "bare.tdp")))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 80), st.integers(0, 2**32 - 1), st.sampled_from(["greedy", "components"]), st.booleans())
def test_round_trip_property(tmp_path, n, seed, policy, labelled):
    kw = {"policy": policy}
    if not labelled:
        kw["labels"] = None
    plan = make_plan(n=n, seed=seed, **kw)
    assert_same(plan, DedupPlan.load(plan.save(tmp_path / f"p{seed}.tdp")))


def test_save_rejects_unserialisable_settings(tmp_path):
    plan = find_duplicates(np.arange(4, dtype=np.uint64), 0, settings={"fn": object()})
    with pytest.raises(ValueError, match="JSON"):
        plan.save(tmp_path / "x.tdp")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_corrupted_files_raise_plan_error(tmp_path):
    path = make_plan().save(tmp_path / "plan.tdp")
    raw = Path(path).read_bytes()
    rng = np.random.default_rng(0)
    positions = sorted(set(rng.integers(0, len(raw), 40).tolist()) | {0, 20, len(raw) - 1})
    for pos in positions:
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        target = tmp_path / "flipped.tdp"
        target.write_bytes(bytes(bad))
        with pytest.raises(PlanError, match="flipped.tdp"):
            DedupPlan.load(target)
    for cut in (0, 10, 30, len(raw) // 2, len(raw) - 1):
        target = tmp_path / "cut.tdp"
        target.write_bytes(raw[:cut])
        with pytest.raises(PlanError, match="cut.tdp"):
            DedupPlan.load(target)
    with pytest.raises(PlanError, match="missing.tdp"):
        DedupPlan.load(tmp_path / "missing.tdp")


def test_other_kind_of_store_file_is_refused(tmp_path):
    path = write_store(tmp_path / "side.bin", "sidecar", {}, {"hashes": np.zeros(3, np.uint64)})
    with pytest.raises(PlanError, match="kind"):
        DedupPlan.load(path)


def _rewrite(tmp_path, plan: DedupPlan, name: str, meta_edit=None, array_edit=None):
    """A checksum-valid plan file whose content was edited: only the consistency checks can catch it."""
    src = plan.save(tmp_path / "src.tdp")
    meta, arrays = read_store(src, "plan")
    if meta_edit:
        meta_edit(meta)
    if array_edit:
        array_edit(arrays)
    return write_store(tmp_path / name, "plan", meta, arrays)


def _set(key, value):
    def edit(d):
        d[key] = value
    return edit


def _poke(key, index, value):
    def edit(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
    return edit


HOSTILE = {
    "n_mismatch": (_set("n", 301), None),
    "n_huge": (_set("n", 10**15), None),
    "n_string": (_set("n", "300"), None),
    "threshold_negative": (_set("threshold", -1), None),
    "threshold_above_bits": (_set("threshold", 65), None),
    "policy_unknown": (_set("policy", "magic"), None),
    "per_class_not_bool": (_set("per_class", 1), None),
    "settings_not_dict": (_set("settings", [1]), None),
    "version": (_set("plan_version", 99), None),
    "says_no_labels": (_set("has_labels", False), None),
    "missing_array": (None, lambda a: a.pop("group")),
    "extra_array": (None, _set("evil", np.zeros(3, np.int64))),
    "wrong_dtype": (None, lambda a: a.__setitem__("representative", a["representative"].astype(np.int32))),
    "wrong_shape": (None, lambda a: a.__setitem__("keep", a["keep"][:-1])),
    "rep_out_of_range": (None, "rep_out_of_range"),
    "rep_not_kept": (None, "rep_not_kept"),
    "keep_and_failed": (None, "keep_and_failed"),
    "group_not_dense": (None, "group_not_dense"),
    "distance_beyond_threshold": (None, "distance_beyond_threshold"),
    "conflict_out_of_range": (None, _poke("label_conflicts", (0, 1), 10**9)),
    "conflict_same_label": (None, "conflict_same_label"),
    "leak_not_listed": (None, "leak_not_listed"),
    "sweep_negative": (None, _poke("sweep", 0, -5)),
    "sweep_pairs_negative": (None, _poke("sweep_pairs", 1, -1)),
    "sweep_pairs_too_many": (None, _poke("sweep_pairs", 0, 300 * 299 // 2 + 1)),
    "sweep_pairs_wrong_length": (None, lambda a: a.__setitem__("sweep_pairs", a["sweep_pairs"][:-1])),
    "sweep_pairs_unflagged": (_set("has_sweep_pairs", False), None),
    "sweep_pairs_without_sweep": (_set("has_sweep", False), lambda a: a.pop("sweep")),
}


def _array_attack(kind, plan):
    removed = plan.removed_indices
    kept = plan.kept_indices

    def edit(a):
        for k in a:
            a[k] = a[k].copy()
        if kind == "rep_out_of_range":
            a["representative"][removed[0]] = plan.n + 5
        elif kind == "rep_not_kept":
            a["representative"][removed[0]] = removed[1]
        elif kind == "keep_and_failed":
            a["failed"][kept[0]] = True
        elif kind == "group_not_dense":
            a["group"][kept[-1]] += 7
        elif kind == "distance_beyond_threshold":
            a["distance_to_rep"][removed[0]] = plan.threshold + 1
        elif kind == "conflict_same_label":
            i = a["label_conflicts"][0, 0]
            a["labels"][a["label_conflicts"][0, 1]] = a["labels"][i]
        elif kind == "leak_not_listed":
            a["leaks"] = a["leaks"][1:]
    return edit


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_but_checksummed_files_raise_plan_error(tmp_path, name):
    plan = make_plan()
    assert len(plan.removed_indices) > 2 and len(plan.label_conflicts) and len(plan.leaks)
    meta_edit, array_edit = HOSTILE[name]
    if isinstance(array_edit, str):
        array_edit = _array_attack(array_edit, plan)
    path = _rewrite(tmp_path, plan, f"{name}.tdp", meta_edit, array_edit)
    with pytest.raises(PlanError, match=f"{name}.tdp") as info:
        DedupPlan.load(path)
    assert isinstance(info.value, StoreError)


def test_sweep_pairs_in_summary_and_round_trip(tmp_path):
    plan = make_plan()
    assert plan.sweep_pairs.shape == plan.sweep.shape and plan.sweep_pairs.dtype == np.int64
    assert plan.sweep_pairs_within.tolist() == np.cumsum(plan.sweep_pairs).tolist()
    assert not plan.sweep_pairs.flags.writeable
    d = plan.summary_dict()
    assert d["sweep_pairs"] == plan.sweep_pairs.tolist()
    within = ", ".join(f"{t}:{v}" for t, v in enumerate(plan.sweep_pairs_within.tolist()))
    assert f"near-duplicate pairs within threshold: {within}" in plan.summary()
    back = DedupPlan.load(plan.save(tmp_path / "p.tdp"))
    assert back.sweep_pairs.tolist() == plan.sweep_pairs.tolist()
    no_sweep = find_duplicates(np.arange(4, dtype=np.uint64), 1)
    assert no_sweep.sweep_pairs is None and no_sweep.sweep_pairs_within is None
    assert no_sweep.summary_dict()["sweep_pairs"] is None and "pairs within" not in no_sweep.summary()


def test_plan_file_from_before_sweep_pairs_still_loads(tmp_path):
    # a file as written before sweep_pairs existed: a sweep, no sweep_pairs array and no flag
    def old_meta(meta):
        meta.pop("has_sweep_pairs")

    path = _rewrite(tmp_path, make_plan(), "old.tdp", old_meta, lambda a: a.pop("sweep_pairs"))
    back = DedupPlan.load(path)
    assert back.sweep is not None and back.sweep_pairs is None and back.sweep_pairs_within is None


def test_check_compatible(tmp_path):
    plan = DedupPlan.load(make_plan().save(tmp_path / "p.tdp"))
    plan.check_compatible(plan.n)
    plan.check_compatible(plan.n, fingerprint="abc123")
    with pytest.raises(PlanError, match=r"p.tdp.*300 items.*299"):
        plan.check_compatible(299)
    with pytest.raises(PlanError, match="fingerprint 'abc123'.*'zzz'"):
        plan.check_compatible(plan.n, fingerprint="zzz")
    unsaved = find_duplicates(np.arange(4, dtype=np.uint64), 0)
    unsaved.check_compatible(4, fingerprint="anything")  # no fingerprint recorded: cannot tell, accepted
    with pytest.raises(PlanError, match="DedupPlan"):
        unsaved.check_compatible(5)
