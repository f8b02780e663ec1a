"""``torch-dedup wds hash|plan|rewrite``: through a bare argparse harness and the real console script."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

from torch_dedup.wds import ShardPlan, hash_shards
from torch_dedup.cli._wds import register
from torch_dedup.wds.synthetic import make_demo_shards

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def _run(argv: list[str]) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="torch-dedup")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    lines: list[str] = []
    return args.func(args, lines.append), lines


def test_parser_harness_hash_plan_rewrite(tmp_path):
    make_demo_shards(tmp_path / "s", n_shards=2, per_shard=15, no_image_every=7, seed=2)
    spec = str(tmp_path / "s" / "shard-{000000..000001}.tar")
    rc, lines = _run(["wds", "hash", spec, "--workers", "0", "--no-progress"])
    assert rc == 0 and "2 hashed" in lines[0] and "without an image" in lines[0]
    rc, lines = _run(["wds", "plan", spec, "--out", str(tmp_path / "p.tdplan"), "--drop-list",
                      str(tmp_path / "drop.tsv"), "--workers", "0"])
    plan = ShardPlan.load(tmp_path / "p.tdplan")
    assert rc == 0 and f"dropping {plan.n_removed}" in lines[0]
    assert (tmp_path / "drop.tsv").read_text().splitlines() == [f"{u}\t{k}" for u, k in plan.dropped()]
    rc, lines = _run(["wds", "rewrite", "--plan", str(tmp_path / "p.tdplan"), "--out", str(tmp_path / "o"),
                      "--maxcount", "10"])
    assert rc == 0 and f"wrote {plan.n_kept} samples" in lines[0]
    with pytest.raises(SystemExit):
        _run(["wds", "plan", spec])  # --out is required


@pytest.mark.skipif(shutil.which("torch-dedup", path=os.path.dirname(sys.executable)) is None,
                    reason="console script not installed")
def test_console_script_json(tmp_path):
    exe = shutil.which("torch-dedup", path=os.path.dirname(sys.executable))
    urls = make_demo_shards(tmp_path / "s", n_shards=2, per_shard=10, seed=4)
    out = subprocess.run([exe, "wds", "plan", *urls, "--out", str(tmp_path / "p.tdplan"), "--json",
                          "--workers", "0", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["n"] == 20 and summary["plan"] == str(tmp_path / "p.tdplan")
    assert hash_shards(urls, workers=0, progress=False).cached == urls
    bad = subprocess.run([exe, "wds", "rewrite", "--plan", str(tmp_path / "p.tdplan"), "--out", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "source shard" in bad.stderr and "Traceback" not in bad.stderr
