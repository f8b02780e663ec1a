"""The argument rules every entry point shares, written once (layer 0: stdlib only).

Each check names the argument, the value it got, what is allowed and, where there is one,
the fix. :class:`~torch_dedup.options.DedupOptions` applies them all at once; the lower
public functions (``hash_images``, ``find_duplicates``, ...) apply the ones they take, so
that a rule or its message cannot drift between them.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["FITTED_METHODS", "HASH_METHODS", "ON_ERROR", "check_bool", "check_choice", "check_hash_size", "check_int",
           "check_method", "check_on_error", "check_threshold", "check_workers", "method_bits", "method_parts"]

#: The perceptual hash methods (imagehash's ``average_hash`` is ``ahash``).
HASH_METHODS = ("ahash", "dhash", "phash", "whash")
#: Methods whose codes depend on statistics of the data (a fit made once per dataset and
#: applied to everything compared with it); each stands alone, never in a composite code.
FITTED_METHODS = ("colour_dct",)
_ALL_METHODS = HASH_METHODS + FITTED_METHODS
#: What to do with an image that cannot be read.
ON_ERROR = ("raise", "skip")


def _is_int(value: Any) -> bool:
    # numpy integers register as numbers.Integral; bools do too, and are refused on purpose
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def check_int(name: str, value: Any, lo: int, hi: int | None = None, *, hint: str = "") -> int:
    """``value`` as an int in ``[lo, hi]`` (``hi=None``: no upper bound), else ValueError naming ``name``."""
    if not _is_int(value) or int(value) < lo or (hi is not None and int(value) > hi):
        allowed = f"an int >= {lo}" if hi is None else f"an int in [{lo}, {hi}]"
        raise ValueError(f"{name}={value!r} must be {allowed}" + (f" ({hint})" if hint else ""))
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (Python or numpy), else ValueError naming ``name``."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, choices))}")
    return value


def method_parts(method: Any) -> tuple[str, ...]:
    """The hash methods a method name stands for: ``"phash"`` -> ``("phash",)``;
    a composite code ``"phash+dhash"`` -> ``("phash", "dhash")`` (concatenated bits, so its
    Hamming distance is the sum of the parts' distances). ``"colour_dct"`` (a fitted method)
    stands alone.

    Raises:
        ValueError: an unknown part, an empty part, a part named twice, or a fitted method
            in a composite.
    """
    known = f"{', '.join(map(repr, _ALL_METHODS))} or a '+' combination such as 'phash+dhash'"
    if not isinstance(method, str) or not method:
        raise ValueError(f"method={method!r} is not a hash method; use one of {known}")
    parts = tuple(method.split("+"))
    bad = [p for p in parts if p not in _ALL_METHODS]
    if bad:
        raise ValueError(f"method={method!r} is not a hash method ({bad[0]!r} is unknown); use one of {known}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"method={method!r} names a hash twice; each part of a composite code counts once "
                         f"(e.g. 'phash+dhash')")
    fitted = [p for p in parts if p in FITTED_METHODS]
    if fitted and len(parts) > 1:
        raise ValueError(f"method={method!r} puts {fitted[0]!r} in a composite code, but its codes live in a space "
                         f"fitted to the data, not in fixed bits; use method={fitted[0]!r} alone")
    return parts


def check_method(method: Any) -> str:
    """A known hash method name, or a ``+`` combination of them (a composite code)."""
    method_parts(method)
    return method


def check_hash_size(hash_size: Any, method: str | None = None) -> int:
    """A hash side length >= 2 (8 gives 64-bit hashes); a power of two for ``whash``.

    A composite code's parts each fill whole 64-bit words, so its hash size must make
    ``hash_size**2`` a multiple of 64 (8, 16, 24, 32, ...).
    """
    size = check_int("hash_size", hash_size, 2, hint="8 gives 64-bit hashes, 16 gives 256-bit")
    parts = method_parts(method) if method is not None else ()
    if "whash" in parts and size & (size - 1):
        raise ValueError(f"hash_size={hash_size!r} must be a power of 2 for whash (2, 4, 8, 16, ...)")
    if parts and parts[0] in FITTED_METHODS and ((size * size) % 64 or size > 32):
        raise ValueError(f"hash_size={hash_size!r} gives {size * size}-bit codes, but {method} codes are whole "
                         f"64-bit words up to 1024 bits: use hash_size 8 (64 bits), 16 (256), 24 (576) or 32 (1024)")
    if len(parts) > 1 and (size * size) % 64:
        raise ValueError(f"hash_size={hash_size!r} gives {size * size}-bit parts, but the parts of the composite "
                         f"code {method!r} must fill whole 64-bit words: use hash_size 8 or 16")
    return size


def method_bits(method: str, hash_size: int) -> int:
    """Bits of one hash: ``hash_size**2`` per part of the method (``phash+dhash`` at 8: 128)."""
    return len(method_parts(method)) * int(hash_size) * int(hash_size)


def check_threshold(threshold: Any, bits: int, method: str | None = None) -> int:
    """A Hamming threshold in ``[0, bits]``: it counts differing bits of the whole hash."""
    what = f"{bits}-bit {method} hashes" if method else f"{bits}-bit hashes"
    return check_int("threshold", threshold, 0, bits,
                     hint=f"it counts differing bits of {what}; scale it with the hash size")


def check_on_error(on_error: Any) -> str:
    """``"raise"`` or ``"skip"``."""
    return check_choice("on_error", on_error, ON_ERROR)


def check_workers(workers: Any) -> int | None:
    """``None`` (automatic) or an int >= 0 (0: decode in this process)."""
    if workers is None:
        return None
    return check_int("workers", workers, 0, hint="None chooses automatically; 0 decodes in this process")
