"""Hashing worker processes never run the caller's script: a script without a __main__ guard works."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import imagehash
import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow
def test_script_without_main_guard_is_run_once_and_its_workers_import_no_torch(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(60):
        p = tmp_path / f"{i:04d}.png"
        Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    runs = tmp_path / "runs.txt"
    script = tmp_path / "noguard.py"
    script.write_text(textwrap.dedent(f"""
        import glob
        import torch  # a training script's imports: the workers must not pay for them
        from torch_dedup.hashing import api
        from torch_dedup.hashing._workers import FilePool
        with open({str(runs)!r}, "a") as f:
            f.write("ran\\n")
        api.POOL_MIN_FILES = 1
        paths = sorted(glob.glob({str(tmp_path / '*.png')!r}))
        r = api.hash_images(paths, workers=2, batch_size=16)
        with FilePool(2) as pool:
            print("TORCH", any("torch" in names for names in pool.modules()))
        print("RESULT", ",".join(api.to_hex(r)))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert runs.read_text() == "ran\n"  # the workers did not re-run the script
    assert "in this process instead" not in out.stderr
    assert "TORCH False" in out.stdout
    got = next(line for line in out.stdout.splitlines() if line.startswith("RESULT ")).split(" ", 1)[1].split(",")
    assert got == [str(imagehash.phash(Image.open(p))) for p in paths]
