"""Small webdataset shards with known near-duplicates, for examples, tests and benchmarks.

Each base image is smooth random texture (low-frequency noise, like a photo's coarse
structure, so perceptual hashes are well spread). A fraction of samples are near-duplicates
of an earlier base image: resized, re-encoded at another JPEG quality, or brightness-shifted;
they may land in another shard than their original. Every shard uses the same key names
(``000000``, ``000001``, ...) so that tests see equal keys in different shards.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

__all__ = ["make_demo_shards"]


def _base_image(rng: np.random.Generator, size: int) -> Image.Image:
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8), "RGB")


def _variant(img: Image.Image, kind: int) -> Image.Image:
    w, h = img.size
    if kind == 0:
        return img.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BILINEAR)
    if kind == 1:
        return img  # re-encoded below at another quality
    return ImageEnhance.Brightness(img).enhance(1.08)


def _encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_demo_shards(out_dir: str | os.PathLike, n_shards: int = 4, per_shard: int = 50, *,
                     dup_fraction: float = 0.2, no_image_every: int = 0, png_every: int = 0, size: int = 64,
                     seed: int = 0) -> list[str]:
    """Write ``n_shards`` shards of ``per_shard`` samples with injected near-duplicates.

    Args:
        out_dir: folder for ``shard-000000.tar``, ...
        n_shards: number of shards.
        per_shard: samples per shard.
        dup_fraction: share of samples that are a variant of an earlier image.
        no_image_every: every k-th sample has only a ``txt`` member (0: none).
        png_every: every k-th image is stored as PNG instead of JPEG (0: none).
        size: side of the base images in pixels.
        seed: random seed (same seed, same shards).

    Returns:
        The shard paths, in order. Each sample has ``jpg`` (or ``png``), ``cls`` (the index
        of its base image, so duplicates share it) and ``json`` members.

    Example:
        >>> import tempfile
        >>> len(make_demo_shards(tempfile.mkdtemp(), 2, 10))
        2
    """
    import webdataset as wds

    if not 0 <= dup_fraction < 1:
        raise ValueError(f"dup_fraction={dup_fraction!r} must be in [0, 1)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases: list[Image.Image] = []
    paths = []
    count = 0
    for s in range(n_shards):
        path = out / f"shard-{s:06d}.tar"
        with wds.TarWriter(str(path), encoder=False) as sink:
            for i in range(per_shard):
                count += 1
                key = f"{i:06d}"
                if no_image_every and count % no_image_every == 0:
                    sink.write({"__key__": key, "txt": b"no image in this sample"})
                    continue
                if bases and rng.random() < dup_fraction:
                    b = int(rng.integers(0, len(bases)))
                    kind = int(rng.integers(0, 3))
                    img, quality = _variant(bases[b], kind), (70 if kind == 1 else 90)
                else:
                    b, img, quality = len(bases), _base_image(rng, size), 90
                    bases.append(img)
                fmt, ext = ("PNG", "png") if png_every and count % png_every == 0 else ("JPEG", "jpg")
                sink.write({"__key__": key, ext: _encode(img, fmt, quality), "cls": str(b).encode(),
                            "json": f'{{"shard": {s}, "index": {i}}}'.encode()})
        paths.append(str(path))
    return paths
