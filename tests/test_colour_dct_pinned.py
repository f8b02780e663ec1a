"""Pinned colour_dct values: features, fit and codes recomputed from stored images, bit for bit.

``tests/data/colour_dct_pinned.npz`` was written once by ``tests/data/make_colour_dct_pinned.py``
(on the development machine). Here, and in the dependency-floor smoke of ``.ci/run`` (numpy 1.24,
numba 0.59, Pillow 10.0), the same images must give the same float32 features, the stored fit
must give the same codes, and a fit made again from the features must have the same fingerprint.
A failure means codes (and so plans and sidecars) would differ between machines or versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PINNED = Path(__file__).with_name("data") / "colour_dct_pinned.npz"


def check_pinned() -> None:
    """Raise AssertionError when this machine and stack do not reproduce the pinned values."""
    from torch_dedup.hashing import COLOUR_DCT_VERSION, ColourDctFit, colour_dct_features, fit_colour_dct

    with np.load(PINNED, allow_pickle=False) as z:
        p = {k: z[k] for k in z.files}
    assert str(p["version"]) == COLOUR_DCT_VERSION, "the pinned file is of another feature version: regenerate it"
    got = [colour_dct_features(p[k]) for k in ("square", "wide", "grey")]
    for name, f in zip(("square", "wide", "grey"), got):
        want = p[f"feat_{name}"]
        diff = np.flatnonzero((f.view(np.uint32) != want.view(np.uint32)).any(axis=1))
        assert not len(diff), f"colour_dct features of the {name} images differ from the pinned ones at rows " \
                              f"{diff[:8].tolist()} (max abs diff {np.abs(f - want).max():.3g})"
    meta = json.loads(str(p["fit_meta"]))
    fit = ColourDctFit.from_arrays({k[4:]: p[k] for k in ("fit_centre", "fit_scale", "fit_planes")}, meta)
    codes = np.concatenate([fit.codes(f) for f in got])
    assert np.array_equal(codes, p["codes"]), \
        f"the stored fit gives other codes on {int((codes != p['codes']).any(axis=1).sum())} of {len(codes)} rows"
    again = fit_colour_dct(np.concatenate(got), bits=int(meta["bits"]))
    assert again.fingerprint == meta["fingerprint"], "a fit made again from the same features differs"


def test_features_fit_and_codes_match_the_pinned_values():
    check_pinned()
