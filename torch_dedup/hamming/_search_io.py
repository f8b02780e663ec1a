"""What a Hamming search takes and gives (layer 2): its argument checks, the
:class:`HammingPairs` result, and the buffers a resumable search kernel fills.

Shared by :mod:`torch_dedup.hamming.search` (the whole search) and
:mod:`torch_dedup.hamming.block_index` (one table of it), so that both check the same
arguments with the same messages and return the same result type.
"""

from __future__ import annotations

import numbers
import os
from typing import NamedTuple

import numpy as np

ALGORITHMS = ("auto", "mih", "brute")


class HammingPairs(NamedTuple):
    """Pairs within a Hamming threshold.

    Attributes:
        pairs: ``(P, 2)`` int64. Self-search: ``i < j``; query search: ``(row in hashes,
            row in other)``. Rows sorted lexicographically.
        distances: ``(P,)`` Hamming distance of each pair: uint8 for hashes up to 255
            bits, uint16 above.
    """

    pairs: np.ndarray
    distances: np.ndarray


# ----------------------------------------------------------------------------- validation


def _as_rows(hashes, name: str) -> np.ndarray:
    """``(N,)`` or ``(N, W)`` uint64 -> C-contiguous ``(N, W)`` view or copy."""
    arr = np.asarray(hashes)
    if arr.dtype != np.uint64:
        raise ValueError(
            f"{name} must have dtype uint64 (packed hashes), got dtype {arr.dtype}; "
            f"pack bits with torch_dedup's hashing or convert with .astype(np.uint64)"
        )
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    elif arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (N,) for 64-bit hashes or (N, W) with W >= 1 words, "
            f"got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def _check_threshold(threshold, bits: int) -> int:
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Integral):
        raise ValueError(
            f"threshold must be an integer in [0, {bits}] (the hash has {bits} bits), "
            f"got {threshold!r} of type {type(threshold).__name__}"
        )
    t = int(threshold)
    if not 0 <= t <= bits:
        raise ValueError(f"threshold must be in [0, {bits}] for {bits}-bit hashes, got {t}")
    return t


def default_workers() -> int:
    """Search threads when none are asked for: this process's CPUs, divided among the ranks
    of this node when torchrun says how many there are (``LOCAL_WORLD_SIZE``), so that the
    ranks of a DDP job, which each run the same search, do not each start one per CPU.

    Read at call time, never at import.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cores = max(1, os.cpu_count() or 1)
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(1, cores // int(local)) if local.isdigit() and int(local) > 0 else cores


def _check_workers(workers) -> int:
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be None or an integer >= 1, got {workers!r}")
    return int(workers)


def _check_algorithm(algorithm) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    return algorithm


def _validate(hashes, threshold, other, algorithm, workers):
    a = _as_rows(hashes, "hashes")
    bits = 64 * a.shape[1]
    b = None
    if other is not None:
        b = _as_rows(other, "other")
        if b.shape[1] != a.shape[1]:
            raise ValueError(
                f"other must have the same number of 64-bit words per hash as hashes "
                f"({a.shape[1]}, i.e. {bits} bits), got {b.shape[1]} (shape {b.shape})"
            )
    t = _check_threshold(threshold, bits)
    return a, b, t, _check_algorithm(algorithm), _check_workers(workers)


def _distance_dtype(bits: int):
    return np.uint8 if bits <= 255 else np.uint16


def _result(ii, jj, dd, bits: int) -> HammingPairs:
    pairs = np.empty((ii.shape[0], 2), np.int64)
    pairs[:, 0] = ii
    pairs[:, 1] = jj
    return HammingPairs(pairs, dd.astype(_distance_dtype(bits)))


# ----------------------------------------------------------------------------- kernel output buffers


_FIRST_BUFFER = 1 << 12
_MAX_BUFFER = 1 << 22
#: Largest buffer of a streamed search (24 bytes a pair): 1.5 MB per thread.
_STREAM_BUFFER = 1 << 16


def _drain(kernel, args, state, done, emit=None):
    """Run a resumable kernel to the end, with fresh output buffers each time it fills.

    With ``emit``, each filled part goes to ``emit(ii, jj, dd)`` (views of buffers reused
    at once: the callee folds or copies them) and nothing is kept, so a stream holds
    at most one :data:`_STREAM_BUFFER` buffer per thread whatever the pair count.
    """
    parts = []
    cap = _FIRST_BUFFER
    ii = None
    while True:
        if ii is None or emit is None:
            ii = np.empty(cap, np.int64)
            jj = np.empty(cap, np.int64)
            dd = np.empty(cap, np.int64)
        p, *state = kernel(*args, *state, ii, jj, dd)
        if p and emit is not None:
            emit(ii[:p], jj[:p], dd[:p])
        elif p:
            # a mostly empty buffer would pin its full size: copy the used part
            keep = (lambda x: x[:p].copy()) if p < cap // 2 else (lambda x: x[:p])
            parts.append((keep(ii), keep(jj), keep(dd)))
        if done(state):
            return parts
        new_cap = min(2 * cap, _MAX_BUFFER if emit is None else _STREAM_BUFFER)
        if new_cap != cap:
            cap, ii = new_cap, None
