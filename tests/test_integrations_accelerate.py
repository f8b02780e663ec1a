"""DedupSampler under Hugging Face Accelerate: real 2-process CPU (gloo) runs through torchrun.

``accelerator.prepare(loader)`` shards every loader's batches by rank itself (``BatchSamplerShard``),
whatever its sampler is. DedupSampler therefore yields the whole kept order on every rank while an
accelerate state with several processes exists (``shard=None``, the default), and refuses, loudly,
to be split twice when told ``shard=True``. These tests log the indices each rank really iterated.

This file is also the script the tests launch with ``python -m torch.distributed.run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from integration_data import BATCH, Digits  # noqa: E402 - shared with the launched script


def main(out: str, when: str, shard: str) -> None:
    import logging

    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from torch_dedup import DedupSampler

    logging.basicConfig(level=logging.WARNING)
    shard_arg = {"auto": None, "true": True, "false": False}[shard]
    ds = Digits()

    def sampler():
        return DedupSampler(ds, threshold=6, cache_dir=False, progress=False, seed=5, shard=shard_arg)

    s = sampler() if when == "before" else None
    accelerator = Accelerator(cpu=True)
    if s is None:
        s = sampler()
    rank = accelerator.process_index
    report: dict = {"train": {}, "world": accelerator.num_processes, "sharded": s.sharded}
    model = torch.nn.Linear(28 * 28, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(ds, batch_size=BATCH, sampler=s))
    report["len_loader"] = len(loader)
    try:
        for epoch in range(2):
            seen = report["train"].setdefault(str(epoch), [])
            for x, y, idx in loader:
                seen.extend(idx.tolist())
                loss = torch.nn.functional.cross_entropy(model(x), y)
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
    except Exception as exc:  # reported to the test, which checks the message
        report["error"] = f"{type(exc).__name__}: {exc}"
    (Path(out) / f"report_{rank}.json").write_text(json.dumps(report))
    # tear the gloo group down before the interpreter exits: left to exit, its threads were
    # occasionally still running when the C++ runtime unwound ("terminate called without an
    # active exception", SIGABRT on one rank: 2 of about 100 launches on 2026-12-01)
    accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _launch(out: Path, when: str, shard: str = "auto") -> tuple[list[dict], str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           os.path.abspath(__file__), str(out), when, shard]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=out)
    assert proc.returncode == 0, f"accelerate run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"report_{r}.json").read_text()) for r in range(2)], proc.stderr


pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("when", ["before", "after"])
def test_every_kept_index_once_per_epoch(tmp_path, when):
    pytest.importorskip("accelerate")
    from torch_dedup import plan_dataset

    kept = plan_dataset(Digits(), threshold=6, cache_dir=False, progress=False).kept_indices
    reports, stderr = _launch(tmp_path, when)
    for r in reports:
        assert "error" not in r, r["error"]
        assert r["world"] == 2 and r["sharded"] is False
    for epoch in ("0", "1"):
        parts = [r["train"][epoch] for r in reports]
        counts = Counter(i for p in parts for i in p)
        assert set(counts) == set(kept.tolist()), f"epoch {epoch}: union != kept"
        # accelerate's even_batches pads the last round of batches from the start of the epoch
        assert len(parts[0]) == len(parts[1]) and sum(counts.values()) - len(kept) < 2 * BATCH
    for r in reports:
        assert r["train"]["0"] != r["train"]["1"], "the order must change per epoch"
    if when == "before":
        assert "built before torch.distributed was initialised" in stderr  # hashing was not split: said so


def test_split_twice_is_an_error_that_names_the_fix(tmp_path):
    pytest.importorskip("accelerate")
    reports, _ = _launch(tmp_path, "after", shard="true")
    for r in reports:
        assert "shard=False" in r.get("error", ""), r


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
