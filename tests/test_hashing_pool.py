"""Worker processes that die (a script without a __main__ guard) must not fail the hashing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import imagehash
import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow
def test_script_without_main_guard_falls_back_in_process(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(520):  # above the pool threshold
        p = tmp_path / f"{i:04d}.png"
        Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    script = tmp_path / "noguard.py"
    script.write_text(textwrap.dedent(f"""
        import glob
        from torch_dedup.hashing import hash_images, to_hex
        paths = sorted(glob.glob({str(tmp_path / '*.png')!r}))
        r = hash_images(paths, workers=2)
        print("RESULT", ",".join(to_hex(r)))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "__main__" in out.stderr and "hashing in this process instead" in out.stderr
    got = next(line for line in out.stdout.splitlines() if line.startswith("RESULT ")).split(" ", 1)[1].split(",")
    assert got == [str(imagehash.phash(Image.open(p))) for p in paths]
