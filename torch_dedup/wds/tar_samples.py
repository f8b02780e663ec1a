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

    def __init__(self, url: str, reason: str, offset: int | None = None, member: str | None = None, *,
                 unopened: bool = False):
        self.url = str(url)
        self.reason = reason
        self.offset = offset
        self.member = member
        self.unopened = bool(unopened)
        where = []
        if member is not None:
            where.append(f"member {member!r}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        at = f" at {', '.join(where)}" if where else ""
        #: What to do about it, in the library's words (the CLI says it in its own).
        self.fix = ("Check the path or URL, or pass on_error='skip' to leave this shard out and go on"
                    if unopened else "Replace or re-create the shard, or pass on_error='skip' to record it and go "
                                     "on with the samples read before the damage")
        self.detail = f"shard {url}{at}: {reason}"
        super().__init__(f"{self.detail}. {self.fix}.")

    def __reduce__(self):  # picklable across worker processes despite the custom signature
        return (_rebuild, (type(self), self.url, self.reason, self.offset, self.member, self.unopened))


def _rebuild(cls, url, reason, offset, member, unopened):
    return cls(url, reason, offset, member, unopened=unopened)


@dataclass
class TarSample:
    """One sample of a shard, as webdataset groups it.

    Attributes:
        key: the sample's ``__key__``.
        files: lower-cased suffix -> ``(suffix as stored, bytes)``; the member name is
            ``key + "." + suffix as stored``.
        offset: byte offset of the sample's first member header in the tar stream.
        complete: False for the last sample before damage: some of its members may be cut
            off or missing (never hash, plan as "no image" or write such a sample).
    """

    key: str
    files: dict
    offset: int
    complete: bool = True


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


#: How long reading an ``http(s)://`` shard may wait: curl's connect timeout (s), retries, and the
#: stall limit (below 1 KB/s for this many seconds aborts). webdataset's own reader retries 30
#: times with 30 s connect timeouts (about 16 minutes on an unreachable host); for other
#: settings give the shard as ``pipe:curl ... URL`` with your own options.
REMOTE_CONNECT_TIMEOUT_S, REMOTE_RETRIES, REMOTE_STALL_S = 20, 2, 60
_CURL_EXIT = {6: "cannot resolve the host", 7: "cannot connect to the host", 22: "the server answered with an "
              "HTTP error (404, 403, ...)", 28: "timed out", 35: "TLS handshake failed", 56: "the connection broke"}


def open_shard(url: str):
    """Open a shard for binary reading: a local file directly, ``http(s)://`` with bounded curl
    timeouts (:data:`REMOTE_CONNECT_TIMEOUT_S`), anything else with webdataset's ``gopen``."""
    if is_local(url):
        return open(local_path(url), "rb")
    if url.startswith(("http://", "https://")):
        from webdataset.gopen import Pipe

        cmd = ["curl", "--connect-timeout", str(REMOTE_CONNECT_TIMEOUT_S), "--retry", str(REMOTE_RETRIES),
               "--retry-delay", "2", "--speed-limit", "1024", "--speed-time", str(REMOTE_STALL_S),
               "-f", "-s", "-L", url]
        return Pipe(cmd, mode="rb", bufsize=8192, ignore_status=[141, 23])
    from webdataset.gopen import gopen

    return gopen(url, "rb")


def _reader_failure(url: str, exc: OSError) -> str:
    """Words for a ``pipe:`` or remote reader's exit status (webdataset reports a raw tuple)."""
    m = re.search(r"exit (-?\d+)", str(exc))
    if m is None:
        return f"reading failed ({exc})"
    code = int(m.group(1))
    curl = url.startswith(("http://", "https://")) or url.startswith("pipe:curl")
    what = f": {_CURL_EXIT[code]}" if curl and code in _CURL_EXIT else ""
    cmd = "curl" if curl else f"the command {url[5:].strip()!r}" if url.startswith("pipe:") else "the reader"
    return f"{cmd} exited with status {code}{what}"


def _base_plus_ext(name: str):
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def iter_tar_samples(url: str) -> Iterator[TarSample]:
    """Yield the samples of one shard in stored order.

    Args:
        url: a local path or any URL webdataset opens (``pipe:``, ``file:``, fsspec ones).

    Yields:
        :class:`TarSample` items; on damage, the sample read so far is yielded first (as
        webdataset would pass it on) with ``complete=False`` (members of it may be cut off
        or missing), then :class:`ShardReadError` is raised.

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
        raise ShardReadError(url, f"cannot open: {exc}", unopened=True) from None
    failure = None
    try:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_TrackedTarInfo)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ShardReadError(url, f"not a readable tar archive ({type(exc).__name__}: {exc})", 0) from None
        yield from _samples(tf, url)
    except ShardReadError as exc:
        failure = exc
    except BaseException:  # the consumer stopped early (GeneratorExit) or an interrupt
        try:
            stream.close()
        except OSError:
            pass
        raise
    try:
        stream.close()
    except OSError as exc:
        # a pipe: or remote reader failed: its exit status is the cause of whatever the tar showed
        why = _reader_failure(url, exc)
        if failure is not None and not re.search(r"\): exit -?\d+", failure.reason):
            raise ShardReadError(url, f"{why} (then: {failure.reason})", failure.offset, failure.member,
                                 unopened=failure.offset in (None, 0)) from None
        raise ShardReadError(url, why, None if failure is None else failure.offset,
                             unopened=failure is None or failure.offset in (None, 0)) from None
    if failure is not None:
        raise failure


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
        if pending is not None:  # its members are in doubt: webdataset refuses the shard here
            pending.complete = False
            yield pending
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        if pending is not None:
            pending.complete = False
            yield pending
        member = current.name if current is not None else last
        offset = current.offset if current is not None else tf.offset
        raise ShardReadError(url, f"truncated or corrupt ({type(exc).__name__}: {exc})", offset, member) from None
    end = getattr(tf, "_td_end", None)
    if pending is not None:
        # without the end-of-archive marker the last sample may have had more members
        pending.complete = end is None
        yield pending
    if end is not None:
        why = ("ends without the end-of-archive marker: truncated" if isinstance(end, tarfile.EmptyHeaderError)
               else f"damaged header, truncated or corrupt ({type(end).__name__}: {end})")
        raise ShardReadError(url, why, tf.offset, last)
