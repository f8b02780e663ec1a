"""Issue 14 item 5: odd file names are stored and reported, and a failure on one rank during
planning reaches every rank as the same error (real 2-process gloo runs), never a hang."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddp_utils import run_ranks
from torch_dedup.dataset_hashes import hash_dataset

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file names as bytes: Linux")

BAD_NAME = b"caf\xe9-\xff.jpg"  # Latin-1 bytes: not UTF-8


def _folder(root: Path, n: int = 12) -> Path:
    """An ImageFolder tree with ``n`` PNGs and one undecodable file whose name is not UTF-8."""
    rng = np.random.default_rng(1)
    for i in range(n):
        sub = root / f"c{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(sub / f"{i:03d}.png")
    with open(os.path.join(os.fsencode(root / "c0"), BAD_NAME), "wb") as f:
        f.write(b"not an image")
    return root


def _bad_source(root: Path) -> str:
    return os.fsdecode(os.path.join(os.fsencode(root / "c0"), BAD_NAME))


def test_a_non_utf8_file_name_is_stored_in_the_sidecar_and_read_back(tmp_path):
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(_folder(tmp_path / "data")))
    first = hash_dataset(ds, on_error="skip", cache_dir=tmp_path / "cache", progress=False)
    assert not first.from_cache and first.sidecar_path is not None
    [(index, source, reason)] = first.failures
    assert source == _bad_source(tmp_path / "data") and os.fsencode(source).endswith(BAD_NAME)
    again = hash_dataset(ds, on_error="skip", cache_dir=tmp_path / "cache", progress=False)
    assert again.from_cache and again.failures == first.failures
    assert not again.valid[index] and again.valid.sum() == len(ds) - 1


def _run_rank(rank: int, out: str, init: str, data: str) -> None:
    import torch.distributed as dist
    from torchvision.datasets import ImageFolder

    import torch_dedup.distributed_hashing as dh
    from torch_dedup.sampler import DedupSampler

    out = Path(out)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    report: dict = {}

    def attempt(key, fn):
        try:
            fn()
            report[key] = "no error"
        except Exception as exc:  # noqa: BLE001 - the test compares what each rank raised
            report[key] = f"{type(exc).__name__}: {exc}"

    try:
        ds = ImageFolder(data)
        # 1. rank 0 writes a sidecar holding a non-UTF-8 failure source: every rank goes on
        s = DedupSampler(ds, threshold=2, on_error="skip", cache_dir=out / "cache", progress=False)
        report["kept"] = s.plan.kept_indices.tolist()
        report["failed"] = np.flatnonzero(s.plan.failed).tolist()
        again = dh.hash_dataset_distributed(ds, on_error="skip", cache_dir=out / "cache", progress=False)
        report["again_from_cache"] = bool(again.from_cache)
        report["again_sources"] = [os.fsencode(src).hex() for _, src, _ in again.failures]
        # 2. rank 1 runs out of memory while hashing its slice
        real = dh.hash_source_range

        def oom(*args, **kwargs):
            if rank == 1:
                raise MemoryError("simulated: no memory left on rank 1")
            return real(*args, **kwargs)

        dh.hash_source_range = oom
        attempt("oom", lambda: DedupSampler(ds, threshold=2, cache_dir=False, progress=False))
        dh.hash_source_range = real
        # 3. rank 0 cannot read its dataset's folder
        real_look = dh.look_up_hashes

        def denied(*args, **kwargs):
            if rank == 0:
                raise PermissionError("simulated: permission denied on rank 0")
            return real_look(*args, **kwargs)

        dh.look_up_hashes = denied
        attempt("read", lambda: DedupSampler(ds, threshold=2, cache_dir=False, progress=False))
        dh.look_up_hashes = real_look
        # 4. a step each rank runs by itself, failing on rank 1 only
        def step():
            if rank == 1:
                raise ValueError("simulated: bad priority on rank 1")
            return 1

        attempt("agree", lambda: dh.agree(step, "planning"))
        # 5. last (a rank left alone here would wait in any later collective): the keep step
        #    of planning fails on rank 1 only
        def priority(i):
            if dist.get_rank() == 1:
                raise ValueError("simulated: priority fails on rank 1")
            return float(i)

        attempt("plan", lambda: DedupSampler(ds, threshold=2, priority=priority, on_error="skip",
                                             cache_dir=out / "cache", progress=False))
    except Exception:  # noqa: BLE001 - the test reads the traceback
        report["error"] = traceback.format_exc()
    finally:
        (out / f"report_{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_edges")
    data = _folder(out / "data")
    return data, run_ranks(_run_rank, (str(out), f"file://{out / 'rendezvous'}", str(data)), out, nprocs=2,
                           timeout_s=180)


@pytest.mark.slow
def test_a_non_utf8_failure_source_is_shared_by_both_ranks(ranks):
    data, reports = ranks
    bad = os.fsencode(_bad_source(data)).hex()
    for rep in reports:
        assert len(rep["failed"]) == 1 and rep["failed"][0] not in rep["kept"]
        assert rep["again_from_cache"] and rep["again_sources"] == [bad]
    assert reports[0]["kept"] == reports[1]["kept"]


@pytest.mark.slow
@pytest.mark.parametrize("key, kind, text", [
    ("oom", "MemoryError", "hashing failed on rank 1: simulated: no memory left on rank 1"),
    ("read", "PermissionError", "reading the dataset failed on rank 0: simulated: permission denied on rank 0"),
    ("agree", "ValueError", "planning failed on rank 1: simulated: bad priority on rank 1"),
])
def test_a_failure_on_one_rank_is_the_same_error_on_every_rank(ranks, key, kind, text):
    _, reports = ranks
    assert reports[0][key] == reports[1][key] == f"{kind}: {text}"


@pytest.mark.slow
def test_a_failure_in_the_keep_step_on_one_rank_is_the_same_error_on_every_rank(ranks):
    _, reports = ranks
    assert reports[0]["plan"] == reports[1]["plan"] != "no error"
