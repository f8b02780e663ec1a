"""A bad-image corpus, generated on the fly (no binary blobs in the repo).

:func:`write_corpus` writes every entry of :data:`BAD` (files no decoder should accept)
and :data:`ODD` (valid images of unusual modes and shapes, which must hash exactly as
``imagehash`` does) into a folder. Shared by the ``test_reliability_*`` files and the
fuzz harness.

The decompression bombs are PNG files whose IHDR *claims* huge dimensions: Pillow's
check fires in ``Image.open`` from the header alone, so the real limit
(``Image.MAX_IMAGE_PIXELS``) is exercised without allocating anything.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _base_rgb(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 4) % 256, (yy * 5) % 256, (xx * yy) % 256], -1).astype(np.int16)
    arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (8-bit gray) with one tiny IDAT: nothing big is ever allocated
    before Pillow's decompression-bomb check, which reads only the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) \
        + _chunk(b"IEND", b"")


def _truncated_jpeg() -> bytes:
    data = _save(_base_rgb(), "JPEG", quality=90)
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    data = _save(_base_rgb(), "PNG")
    return data[: len(data) // 2]


def _png_bad_crc() -> bytes:
    data = bytearray(_save(_base_rgb(), "PNG"))
    # IHDR chunk: 8-byte signature, 4-byte length, 4-byte type, 13 bytes data, then the CRC at 29..32
    data[29] ^= 0xFF
    return bytes(data)


def _bomb_error() -> bytes:
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 2  # over 2x the limit: Pillow raises
    return png_header_only(side, side)


def _bomb_warning() -> bytes:
    side = int((1.5 * Image.MAX_IMAGE_PIXELS) ** 0.5)  # between 1x and 2x: Pillow only warns
    return png_header_only(side, side)


#: name -> (file name, bytes factory): inputs that must never hash.
BAD = {
    "truncated_jpeg": ("truncated.jpg", _truncated_jpeg),
    "truncated_png": ("truncated.png", _truncated_png),
    "zero_bytes": ("empty.jpg", lambda: b""),
    "text_as_jpeg": ("notes.jpg", lambda: b"this is not an image\n" * 20),
    "png_broken_crc": ("badcrc.png", _png_bad_crc),
    "bomb_over_2x": ("bomb2x.png", _bomb_error),
    "bomb_over_1x": ("bomb1x.png", _bomb_warning),
}


def _cmyk_jpeg() -> bytes:
    return _save(_base_rgb(seed=1).convert("CMYK"), "JPEG", quality=92)


def _gray16_png() -> bytes:
    arr = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 53 % 65536).astype(np.uint16)
    return _save(Image.fromarray(arr), "PNG")  # uint16 -> mode I;16


def _palette_transparency() -> bytes:
    img = _base_rgb(seed=2).quantize(16)
    return _save(img, "PNG", transparency=3)


def _one_bit() -> bytes:
    return _save(_base_rgb(seed=3).convert("1"), "PNG")


def _la() -> bytes:
    gray = _base_rgb(seed=4).convert("L")
    alpha = Image.fromarray((np.indices(gray.size[::-1]).sum(0) * 7 % 256).astype(np.uint8))
    return _save(Image.merge("LA", (gray, alpha)), "PNG")


def _one_by_one() -> bytes:
    return _save(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG")


def _one_by_n() -> bytes:
    return _save(_base_rgb(200, 1, seed=5), "PNG")


def _n_by_one() -> bytes:
    return _save(_base_rgb(1, 150, seed=6), "PNG")


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return _save(_base_rgb(80, 40, seed=7), "JPEG", quality=90, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_base_rgb(seed=s).quantize(64) for s in (8, 9, 10)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _webp() -> bytes:
    return _save(_base_rgb(seed=11), "WEBP", quality=80)


def _rgba_png() -> bytes:
    return _save(_base_rgb(seed=12).convert("RGBA"), "PNG")


#: name -> (file name, bytes factory): valid but unusual images; each must hash as imagehash does.
ODD = {
    "cmyk_jpeg": ("cmyk.jpg", _cmyk_jpeg),
    "gray16_png": ("gray16.png", _gray16_png),
    "palette_transparency": ("palette_trns.png", _palette_transparency),
    "one_bit": ("onebit.png", _one_bit),
    "la": ("la.png", _la),
    "one_by_one": ("1x1.png", _one_by_one),
    "one_by_n": ("1xN.png", _one_by_n),
    "n_by_one": ("Nx1.png", _n_by_one),
    "exif_rotated_jpeg": ("exif6.jpg", _exif_rotated_jpeg),
    "animated_gif": ("anim.gif", _animated_gif),
    "webp": ("img.webp", _webp),
    "rgba_png": ("rgba.png", _rgba_png),
}


def good_image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    """An ordinary RGB image (distinct per seed)."""
    return _save(_base_rgb(48 + seed % 7, 40 + seed % 5, seed=100 + seed), fmt)


def write_corpus(folder: str | Path, names=None) -> dict[str, Path]:
    """Write the entries of :data:`BAD` and :data:`ODD` (or only ``names``) into ``folder``; name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (fname, make) in {**BAD, **ODD}.items():
        if names is not None and name not in names:
            continue
        path = folder / fname
        path.write_bytes(make())
        out[name] = path
    return out
