"""Write tests/data/colour_dct_pinned.npz: images, their colour_dct features, a fit and its codes.

Run once, when the features or the fit change on purpose (a new ``COLOUR_DCT_VERSION``); never to
make a failing pin pass. ``tests/test_colour_dct_pinned.py`` (and the dependency-floor smoke in
``.ci/run``, on numpy 1.24 / numba 0.59) recompute everything from the stored images and compare
bit for bit: the claim that a stored fit reproduces the same codes on another machine and stack.

    python tests/data/make_colour_dct_pinned.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from torch_dedup.embedded import load_sample
from torch_dedup.hashing import COLOUR_DCT_VERSION, colour_dct_features, fit_colour_dct

OUT = Path(__file__).with_name("colour_dct_pinned.npz")


def images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32 smooth colour images 32x32, 8 of 40x30 (the resampling path), 16 Fashion-MNIST 28x28 (grey)."""
    rng = np.random.default_rng(20261201)

    def smooth(w, h):
        small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
        noise = rng.integers(-12, 13, (h, w, 3))
        return np.clip(np.asarray(small.resize((w, h), Image.Resampling.BICUBIC)) + noise, 0, 255).astype(np.uint8)

    square = np.stack([smooth(32, 32) for _ in range(32)])
    wide = np.stack([smooth(40, 30) for _ in range(8)])
    grey = load_sample(16)[0]
    return square, wide, grey


def main() -> None:
    square, wide, grey = images()
    feats = [colour_dct_features(a) for a in (square, wide, grey)]
    fit = fit_colour_dct(np.concatenate(feats), bits=256)
    arrays, meta = fit.to_arrays()
    np.savez_compressed(OUT, square=square, wide=wide, grey=grey, feat_square=feats[0], feat_wide=feats[1], feat_grey=feats[2],
                        codes=np.concatenate([fit.codes(f) for f in feats]),
                        **{f"fit_{k}": v for k, v in arrays.items()}, fit_meta=np.array(json.dumps(meta)),
                        version=np.array(COLOUR_DCT_VERSION))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), fit {fit.fingerprint}")


if __name__ == "__main__":
    main()
