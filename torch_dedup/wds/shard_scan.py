"""Walk one shard's samples and hand each sample's image member to whoever hashes it.

Hash sidecars (:mod:`torch_dedup.wds.shards`) and colour_dct feature sidecars
(:mod:`torch_dedup.wds.shard_features`) read shards the same way, so they agree on every
key, on which samples have an image, on the sample a damaged shard may have cut, and on
what a damaged shard read with ``on_error="skip"`` records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch_dedup.errors import ImageDecodeError

from .tar_samples import ShardReadError, iter_tar_samples

__all__ = ["CUT_FLAG", "CUT_REASON", "DEFAULT_IMAGE_EXTS", "ShardScan", "parse_image_exts", "raise_recorded",
           "scan_shard"]

logger = logging.getLogger(__name__)

#: Image suffixes looked for in a sample, in order of preference.
DEFAULT_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
#: Why the last sample read from a damaged shard is failed.
CUT_REASON = "cut by the damage to its shard (members may be missing or truncated)"
#: Meta flag of sidecars whose damaged shard's last sample is recorded as failed (older ones are stale).
CUT_FLAG = "cut_sample_failed"


def parse_image_exts(image_exts: str | Iterable[str]) -> tuple[str, ...]:
    """``"jpg;png"`` or ``["jpg", "png"]`` -> ``("jpg", "png")`` (lower case, order kept).

    Raises:
        ValueError: empty, or an entry that is not a non-empty string.

    Example:
        >>> parse_image_exts("JPG;png")
        ('jpg', 'png')
    """
    items = image_exts.split(";") if isinstance(image_exts, str) else list(image_exts)
    out = []
    for e in items:
        if not isinstance(e, str) or not e.strip().lstrip("."):
            raise ValueError(f"image_exts={image_exts!r}: every entry must be a non-empty suffix like 'jpg'")
        e = e.strip().lstrip(".").lower()
        if e not in out:
            out.append(e)
    if not out:
        raise ValueError(f"image_exts={image_exts!r} names no suffix; e.g. 'jpg;jpeg;png;webp;ppm;bmp'")
    return tuple(out)


@dataclass
class ShardScan:
    """What reading a shard found besides the images themselves.

    Attributes:
        keys: every sample's ``__key__``, in stored order.
        has_image: per sample, whether it has a member with an image suffix (True for a cut sample).
        failures: ``(index, source, reason)`` of the samples cut by damage.
        shard_error: ``None``, or ``{"offset", "member", "reason"}`` of a damaged shard read with ``skip``.
    """

    keys: list = field(default_factory=list)
    has_image: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    shard_error: dict | None = None


def scan_shard(url: str, exts: tuple, on_error: str, take: Callable[[int, str, bytes], None]) -> ShardScan:
    """Read ``url`` and call ``take(index, source, data)`` for each sample's image member.

    ``source`` names the member (``url:key.ext``) for error messages. A sample without an
    image member is listed, not taken. The last sample read before damage is never taken:
    it is recorded as a failed image (:data:`CUT_REASON`), never as "a sample without an
    image", so the plan drops it and nothing writes it.

    Raises:
        ShardReadError: a missing or damaged shard with ``on_error="raise"``.
    """
    scan = ShardScan()
    try:
        for sample in iter_tar_samples(url):
            i = len(scan.keys)
            scan.keys.append(sample.key)
            if not sample.complete:
                scan.has_image.append(True)
                scan.failures.append((i, f"{url}:{sample.key}", CUT_REASON))
                continue
            ext = next((e for e in exts if e in sample.files), None)
            scan.has_image.append(ext is not None)
            if ext is not None:
                stored, data = sample.files[ext]
                take(i, f"{url}:{sample.key}.{stored}", data)
    except ShardReadError as exc:
        if on_error == "raise":
            raise
        logger.warning("%s; %s", exc.detail, "shard left out" if exc.unopened else
                       "planning the samples read before the damage")
        scan.shard_error = {"offset": exc.offset, "member": exc.member, "reason": exc.reason}
    return scan


def raise_recorded(url: str, sc) -> None:
    """A raise run over a shard whose valid sidecar (of hashes or features) records damage or
    failed images: raise what it records.

    The sidecar was written by an ``on_error="skip"`` run; serving it to a raise run would
    silently plan only part of the shard, so the recorded error is raised as if read now.
    """
    note = f" (recorded in its sidecar {sc.path} by an earlier on_error='skip' run)"
    if sc.shard_error is not None:
        err = sc.shard_error
        raise ShardReadError(url, f"{err.get('reason')}{note}", err.get("offset"), err.get("member"))
    index, source, reason = sc.failures[0]
    raise ImageDecodeError(source, f"{reason}{note}", index)
