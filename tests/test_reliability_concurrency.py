"""Concurrency: processes and DDP ranks building the same sidecar at once end with one valid
sidecar and identical hashes everywhere; killed writers leave no lock (there are none: writes
are temp file + ``os.replace``) and their temp debris is never read and is cleaned up.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from badimages import BAD, good_image_bytes

pytestmark = pytest.mark.slow  # spawned processes: ~40 s

RACERS = 3
KILLED_RACERS = 2
ROUNDS = 2
N_IMAGES = 60


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("race") / "data"
    for k in range(N_IMAGES):
        d = root / f"c{k % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{k:03d}.png").write_bytes(good_image_bytes(k % 40))  # 20 exact duplicates
    name, make = BAD["truncated_png"]
    (root / "c0" / name).write_bytes(make())
    return root


def _race(root: str, cache: str, out: str, barrier) -> None:
    from torchvision.datasets import ImageFolder

    from torch_dedup.dataset_hashes import hash_dataset

    ds = ImageFolder(root)
    barrier.wait()
    h = hash_dataset(ds, cache_dir=cache, on_error="skip", workers=0, progress=False)
    np.save(out, h.hashes)
    Path(out + ".json").write_text(json.dumps({"failures": [list(f) for f in h.failures],
                                               "from_cache": h.from_cache}))


def _sidecars(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.suffix == ".tdhash")


def test_racing_processes_end_with_one_valid_sidecar(folder, tmp_path):
    from torchvision.datasets import ImageFolder

    from torch_dedup.dataset_hashes import hash_dataset
    from torch_dedup.sidecar import read_sidecar

    cache = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    outs = [str(tmp_path / f"h{r}.npy") for r in range(RACERS)]
    procs = [ctx.Process(target=_race, args=(str(folder), str(cache), outs[r], barrier)) for r in range(RACERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    ref = hash_dataset(ImageFolder(str(folder)), cache_dir=False, on_error="skip", workers=0, progress=False)
    for out in outs:
        np.testing.assert_array_equal(np.load(out), ref.hashes)
        assert json.loads(Path(out + ".json").read_text())["failures"] == [list(f) for f in ref.failures]
    (sidecar,) = _sidecars(cache)
    assert sorted(p.name for p in cache.iterdir()) == [sidecar.name]  # no temp file, no lock file
    np.testing.assert_array_equal(read_sidecar(sidecar).hashes, ref.hashes)
    again = hash_dataset(ImageFolder(str(folder)), cache_dir=cache, on_error="skip", workers=0, progress=False)
    assert again.from_cache


_LOOPING_WRITER = textwrap.dedent("""
    import sys
    from torchvision.datasets import ImageFolder
    from torch_dedup.dataset_hashes import hash_dataset
    ds = ImageFolder(sys.argv[1])
    print("ready", flush=True)
    while True:
        hash_dataset(ds, cache_dir=sys.argv[2], on_error="skip", workers=0, progress=False, refresh=True)
""")


def test_killed_racers_leave_no_lock_and_no_used_debris(folder, tmp_path):
    from torchvision.datasets import ImageFolder

    from torch_dedup.dataset_hashes import hash_dataset
    from torch_dedup.sidecar import read_sidecar, remove_stale_temp_files

    ref = hash_dataset(ImageFolder(str(folder)), cache_dir=False, on_error="skip", workers=0, progress=False)
    cache = tmp_path / "cache"
    rng = random.Random(5)
    rounds = []
    for _ in range(ROUNDS):
        procs = [subprocess.Popen([sys.executable, "-c", _LOOPING_WRITER, str(folder), str(cache)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(KILLED_RACERS)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        time.sleep(rng.uniform(0.2, 1.5))
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(30)
            p.stdout.close()
            p.stderr.close()
        names = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
        debris = [n for n in names if n.endswith(".tmp")]
        assert all(n.endswith(".tdhash") for n in names if n not in debris)
        for sc in _sidecars(cache) if cache.exists() else []:
            np.testing.assert_array_equal(read_sidecar(sc).hashes, ref.hashes)  # never a torn file
        # no lock to wait for: the next run goes straight on (reads the sidecar or computes it)
        h = hash_dataset(ImageFolder(str(folder)), cache_dir=cache, on_error="skip", workers=0, progress=False)
        np.testing.assert_array_equal(h.hashes, ref.hashes)
        rounds.append((len(debris), h.from_cache))
    print(f"killed-racer rounds (temp files left, next run from cache): {rounds}")
    remove_stale_temp_files(cache, max_age_s=0)
    assert [p.suffix for p in cache.iterdir()] == [".tdhash"]


# ------------------------------------------------------------------ 2 DDP ranks (gloo)

def _rank(rank: int, root: str, out: str, init: str) -> None:
    import torch.distributed as dist
    from torchvision.datasets import ImageFolder

    from torch_dedup.dataset_hashes import hash_dataset
    from torch_dedup.sampler import DedupSampler

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    report = {}
    try:
        ds = ImageFolder(root)
        # both ranks write the same sidecar at the same moment, with no coordination at all
        dist.barrier()
        h = hash_dataset(ds, cache_dir=Path(out) / "plain", on_error="skip", workers=0, progress=False)
        np.save(Path(out) / f"plain_{rank}.npy", h.hashes)
        # the coordinated path: a sampler hashes one slice per rank and rank 0 writes
        s = DedupSampler(ds, threshold=2, cache_dir=Path(out) / "ddp", on_error="skip", progress=False)
        np.save(Path(out) / f"keep_{rank}.npy", s.plan.keep)
        np.save(Path(out) / f"failed_{rank}.npy", s.plan.failed)
        report["epoch"] = list(s)
    except Exception:  # noqa: BLE001 - the test reads the traceback
        report["error"] = traceback.format_exc()
    finally:
        (Path(out) / f"report_{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


def test_two_ddp_ranks_share_one_sidecar(folder, tmp_path):
    from torchvision.datasets import ImageFolder

    from ddp_utils import run_ranks
    from torch_dedup.planning import plan_dataset
    from torch_dedup.sidecar import read_sidecar

    reports = run_ranks(_rank, (str(folder), str(tmp_path), f"file://{tmp_path / 'rdv'}"), tmp_path, nprocs=2,
                        timeout_s=180)
    ref = plan_dataset(ImageFolder(str(folder)), threshold=2, cache_dir=False, on_error="skip", workers=0,
                       progress=False)
    for r in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"keep_{r}.npy"), ref.keep)
        np.testing.assert_array_equal(np.load(tmp_path / f"failed_{r}.npy"), ref.failed)
    np.testing.assert_array_equal(np.load(tmp_path / "plain_0.npy"), np.load(tmp_path / "plain_1.npy"))
    for sub in ("plain", "ddp"):
        files = sorted((tmp_path / sub).iterdir())
        assert [p.suffix for p in files] == [".tdhash"], files
        np.testing.assert_array_equal(read_sidecar(files[0]).hashes, np.load(tmp_path / "plain_0.npy"))
    epochs = reports[0]["epoch"] + reports[1]["epoch"]
    assert sorted(set(epochs)) == ref.kept_indices.tolist()   # the ranks' epochs cover the kept set
