"""The numpy/numba/scipy layers on the oldest versions pyproject.toml admits (issue 14, item 6).

``.ci/run`` runs this file as a script in a separate venv holding the floor versions of
numpy, numba, scipy, PyWavelets, Pillow and imagehash (torch is left out: its floor
wheels are gigabytes, and layers 0-2 never import it, see docs/architecture.md). As a
script it loads ``torch_dedup``'s lower layers without the package ``__init__``, which
imports torch. Under pytest it is an ordinary quick test on the installed versions.
"""

from __future__ import annotations

import numpy as np


def _naive_greedy(h: np.ndarray, t: int) -> list[bool]:
    kept: list[int] = []
    for i, x in enumerate(h.tolist()):
        if all(bin(x ^ h[k].item()).count("1") > t for k in kept):
            kept.append(i)
    return [i in set(kept) for i in range(len(h))]


def smoke() -> None:
    from torch_dedup.hamming.cluster import find_duplicates, sweep_thresholds
    from torch_dedup.hamming.search import hamming_pairs, popcount64
    from torch_dedup.hashing import hash_array

    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**64, 300, dtype=np.uint64)
    h[200:] = h[:100] ^ (np.uint64(1) << rng.integers(0, 64, 100).astype(np.uint64))
    for t in (3, 30):
        want = _naive_greedy(h, t)
        for limit in (None, 1 << 20):  # materialised and (at t=30) streamed
            assert find_duplicates(h, t, memory_limit=limit).keep.tolist() == want
        comp = find_duplicates(h, t, policy="components", labels=np.arange(300) % 3, against=h[:4],
                               leak_pairs=True, sweep_max=t + 1)
        assert comp.n_kept <= sum(want)
        assert sweep_thresholds(h, t, policy="components").tolist()[t] == \
            find_duplicates(h, t, policy="components").n_kept
    from torch_dedup.hamming.views import find_duplicates_views
    for t in (3, 30):  # views that repeat the own code: the plain decision
        assert find_duplicates_views(h, h[:, None], t).keep.tolist() == _naive_greedy(h, t)
    r = hamming_pairs(h, 2)
    assert (popcount64(h[r.pairs[:, 0]] ^ h[r.pairs[:, 1]]) == r.distances).all()

    import imagehash
    from PIL import Image

    imgs = rng.integers(0, 256, (6, 32, 32), dtype=np.uint8)
    for method, fn in (("phash", imagehash.phash), ("dhash", imagehash.dhash), ("whash", imagehash.whash),
                       ("ahash", imagehash.average_hash)):
        ours = hash_array(imgs, method)
        theirs = [int(str(fn(Image.fromarray(im))), 16) for im in imgs]
        assert ours.tolist() == theirs, method

    # colour_dct: the pinned features, fit and codes (tests/test_colour_dct_pinned.py) on this stack
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "pinned", pathlib.Path(__file__).with_name("test_colour_dct_pinned.py"))
    pinned = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pinned)
    pinned.check_pinned()


def test_floor_smoke_on_installed_versions():
    smoke()


if __name__ == "__main__":
    import importlib.metadata as md
    import pathlib
    import sys
    import types

    pkg = types.ModuleType("torch_dedup")
    pkg.__path__ = [str(pathlib.Path(__file__).resolve().parents[1] / "torch_dedup")]
    sys.modules["torch_dedup"] = pkg
    smoke()
    assert "torch" not in sys.modules, "layers 0-2 imported torch"
    print("floor smoke passed on", ", ".join(f"{d} {md.version(d)}" for d in
                                            ("numpy", "numba", "scipy", "PyWavelets", "Pillow", "imagehash")))
