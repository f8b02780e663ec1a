"""Round-trip helpers for resumable iteration (in the spirit of torchdata's ``run_test_save_load_state``).

A resumable iterable must satisfy: for every point ``k`` of an epoch, taking ``state_dict()``
after ``k`` items, loading it into a *fresh* object, and iterating that object yields exactly
the items the original would still have yielded — nothing repeated, nothing skipped.
"""

from __future__ import annotations

import copy
import itertools
import pickle
from typing import Any, Callable, Iterable, Sequence


def take(iterator, k: int) -> list:
    """The next ``k`` items of ``iterator`` (fewer if it ends)."""
    return list(itertools.islice(iterator, k))


def _plain(state: Any) -> Any:
    # A checkpoint goes through torch.save/json in real use: it must survive a deep copy and pickling,
    # and the restored object must not share it with the saving object.
    return pickle.loads(pickle.dumps(copy.deepcopy(state)))


def run_test_save_load_state(make: Callable[[], Any], points: Iterable[int] | None = None,
                             before: Callable[[Any], None] | None = None, at_end: str = "next_pass") -> list:
    """Check resume-from-every-point for an object with ``__iter__``/``state_dict``/``load_state_dict``.

    Args:
        make: builds a fresh object (a sampler, a loader) in its initial configuration.
        points: the ``k`` to test (default: every ``k`` from 0 to the epoch's length).
        before: called on each fresh object before iterating (e.g. ``lambda s: s.set_epoch(3)``).
        at_end: what a state saved after the *whole* epoch resumes to: ``"next_pass"`` (a
            finished epoch is done; the next iteration is a whole new pass, here the same
            epoch again) or ``"empty"`` (the rest of the finished iterator: nothing).

    Returns:
        The reference epoch (list of items) of an uninterrupted run.

    Raises:
        AssertionError: naming the ``k`` where resuming repeated or skipped items.
    """
    def fresh():
        obj = make()
        if before is not None:
            before(obj)
        return obj

    reference = list(fresh())
    for k in (range(len(reference) + 1) if points is None else points):
        original = fresh()
        it = iter(original)
        head = take(it, k)
        assert head == reference[:k], f"k={k}: the first {k} items differ from the reference run"
        state = _plain(original.state_dict())
        tail_original = list(it)
        restored = fresh()
        restored.load_state_dict(state)
        tail_restored = list(restored)
        assert tail_original == reference[k:], f"k={k}: the original run changed after state_dict()"
        if k == len(reference) and at_end == "next_pass":
            assert tail_restored == reference, f"k={k}: a state saved after the epoch must resume to a whole pass"
            continue
        assert head + tail_restored == reference, (
            f"k={k}: resumed run yields {len(tail_restored)} items {tail_restored[:5]}..., expected "
            f"{len(reference) - k} items {reference[k:k + 5]}...")
    return reference


def assert_partition(parts: Sequence[Sequence[int]], expected: Sequence[int]) -> None:
    """``parts`` together hold every element of ``expected`` exactly once."""
    flat = [x for p in parts for x in p]
    assert sorted(flat) == sorted(expected), (
        f"{len(flat)} items over {len(parts)} parts, expected {len(expected)}; "
        f"missing {sorted(set(expected) - set(flat))[:5]}, extra {sorted(set(flat) - set(expected))[:5]}")
