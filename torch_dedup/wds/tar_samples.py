"""Read a webdataset shard as webdataset does, but say exactly where a broken one breaks.

:func:`iter_tar_samples` groups tar members into samples with webdataset's own rules
(``base_plus_ext`` keys, lower-cased suffixes, ``__*__`` metadata members skipped,
consecutive members of one key form one sample), so the ``__key__`` of every sample is
the one a :class:`webdataset.WebDataset` pipeline will show. Unlike a plain
``tarfile`` loop it tells a clean end of archive from a truncated or corrupt one: Python's
``tarfile`` silently stops at a damaged header in stream mode, which would drop the rest
of a shard without a word.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch_dedup.errors import DedupError

from .shard_urls import is_local, local_path

__all__ = ["ShardReadError", "TarSample", "iter_tar_samples", "open_shard"]

_SKIP_META = re.compile(r"__[^/]*__($|/)")


class ShardReadError(DedupError, ValueError):
    """A shard cannot be read: missing, not a tar, truncated or corrupt.

    Attributes:
        url: the shard.
        offset: byte offset in the (uncompressed) tar stream where reading failed, if known.
        member: the member being read (or the last one read), if any.
        reason: the underlying cause, as text.
    """

    def __init__(self, url: str, reason: str, offset: int | None = None, member: str | None = None):
        self.url = str(url)
        self.reason = reason
        self.offset = offset
        self.member = member
        where = []
        if member is not None:
            where.append(f"member {member!r}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        at = f" at {', '.join(where)}" if where else ""
        super().__init__(f"shard {url}{at}: {reason}. Replace or re-create the shard, or pass "
                         f"on_error='skip' to record it and go on with the samples read before the damage.")

    def __reduce__(self):  # picklable across worker processes despite the custom signature
        return (type(self), (self.url, self.reason, self.offset, self.member))


@dataclass
class TarSample:
    """One sample of a shard, as webdataset groups it.

    Attributes:
        key: the sample's ``__key__``.
        files: lower-cased suffix -> ``(suffix as stored, bytes)``; the member name is
            ``key + "." + suffix as stored``.
        offset: byte offset of the sample's first member header in the tar stream.
    """

    key: str
    files: dict
    offset: int


class _TrackedTarInfo(tarfile.TarInfo):
    """Remembers why header reading stopped: a zero block (a clean end) or damage."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            tf._td_end = None
            raise
        except tarfile.HeaderError as exc:
            tf._td_end = exc
            raise


def open_shard(url: str):
    """Open a shard for binary reading: a local file directly, anything else with webdataset's ``gopen``."""
    if is_local(url):
        return open(local_path(url), "rb")
    from webdataset.gopen import gopen

    return gopen(url, "rb")


def _base_plus_ext(name: str):
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def iter_tar_samples(url: str) -> Iterator[TarSample]:
    """Yield the samples of one shard in stored order.

    Args:
        url: a local path or any URL webdataset opens (``pipe:``, ``file:``, fsspec ones).

    Yields:
        :class:`TarSample` items; on damage, the sample read so far is yielded first (as
        webdataset would pass it on), then :class:`ShardReadError` is raised.

    Raises:
        ShardReadError: the shard is missing, not a tar, truncated, corrupt, or holds the
            same file twice in one sample (webdataset refuses those too).

    Example:
        >>> [s.key for s in iter_tar_samples("shards/shard-000000.tar")]  # doctest: +SKIP
        ['000000', '000001', ...]
    """
    try:
        stream = open_shard(url)
    except (OSError, ValueError) as exc:
        raise ShardReadError(url, f"cannot open: {exc}") from None
    with stream:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_TrackedTarInfo)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ShardReadError(url, f"not a readable tar archive ({type(exc).__name__}: {exc})", 0) from None
        yield from _samples(tf, url)


def _samples(tf: tarfile.TarFile, url: str) -> Iterator[TarSample]:
    from webdataset.tariterators import meta_prefix, meta_suffix

    pending: TarSample | None = None
    last: str | None = None
    current: tarfile.TarInfo | None = None
    try:
        for info in tf:
            current = info
            name = info.name
            if not info.isreg() or name is None:
                continue
            if "/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix):
                continue
            if _SKIP_META.match(name):
                continue
            prefix, suffix = _base_plus_ext(name)
            if prefix is None:
                continue
            data = tf.extractfile(info).read()
            last, current = name, None
            tf.members = []  # stream mode: do not keep every TarInfo
            low = suffix.lower()
            if pending is None or prefix != pending.key:
                if pending is not None:
                    yield pending
                pending = TarSample(prefix, {}, info.offset)
            if low in pending.files:
                raise ShardReadError(url, f"sample {prefix!r} holds suffix {low!r} twice (webdataset refuses "
                                          "such a shard)", info.offset, name)
            pending.files[low] = (suffix, data)
    except ShardReadError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        if pending is not None:
            yield pending
        member = current.name if current is not None else last
        offset = current.offset if current is not None else tf.offset
        raise ShardReadError(url, f"truncated or corrupt ({type(exc).__name__}: {exc})", offset, member) from None
    if pending is not None:
        yield pending
    end = getattr(tf, "_td_end", None)
    if end is not None:
        why = ("ends without the end-of-archive marker: truncated" if isinstance(end, tarfile.EmptyHeaderError)
               else f"damaged header, truncated or corrupt ({type(end).__name__}: {end})")
        raise ShardReadError(url, why, tf.offset, last)
