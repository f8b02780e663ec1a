"""Run a function on real ``torch.distributed`` ranks (spawned processes) and collect their reports.

Each rank writes ``OUT/report_<rank>.json`` (a dict; ``"error"`` holds a traceback when the
rank failed). A hang — a rank stuck in a collective — fails the test instead of blocking it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest


def run_ranks(fn: Callable, args: tuple, out: str | Path, nprocs: int = 2, timeout_s: int = 120) -> list[dict]:
    """Spawn ``fn(rank, *args)`` on ``nprocs`` processes, wait up to ``timeout_s`` and return the
    per-rank reports; fails the test when a rank hangs or reports an error."""
    import torch.multiprocessing as tmp

    ctx = tmp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    for _ in range(timeout_s):
        if ctx.join(timeout=1):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail(f"{nprocs} distributed ranks did not finish within {timeout_s} s")
    reports = [json.loads((Path(out) / f"report_{r}.json").read_text()) for r in range(nprocs)]
    for r, rep in enumerate(reports):
        assert "error" not in rep, f"rank {r} failed:\n{rep['error']}"
    return reports
