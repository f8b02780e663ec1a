"""Shard URLs: expansion, local paths, stable identities and fingerprints.

webdataset names each sample's shard in its ``__url__`` field, exactly as the URL was
given to the pipeline. The plan and the filter agree on a shard through
:func:`shard_id` (the absolute path for local files, the URL itself otherwise) or, when
shards moved or are read through another URL scheme, through :func:`shard_name` (the
file name).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import urlparse

__all__ = ["expand_shard_urls", "is_local", "local_path", "shard_fingerprint", "shard_id", "shard_name"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def expand_shard_urls(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Expand webdataset URL specs into a list of shard URLs.

    Args:
        urls: one spec string (brace patterns like ``shard-{000..009}.tar``, several specs
            joined by ``::``, ``$WDS_*`` variables, as :class:`webdataset.WebDataset` expands
            them), a path, or a sequence of URLs (taken as they are).

    Returns:
        The URLs, in order.

    Raises:
        ValueError: no URL at all, or an entry that is not a string or path.

    Example:
        >>> expand_shard_urls("data/shard-{0..2}.tar")
        ['data/shard-0.tar', 'data/shard-1.tar', 'data/shard-2.tar']
    """
    from webdataset.shardlists import expand_urls

    if isinstance(urls, os.PathLike):
        urls = os.fspath(urls)
    if isinstance(urls, str):
        out = list(expand_urls(urls))
    else:
        out = []
        for i, u in enumerate(urls):
            if isinstance(u, os.PathLike):
                u = os.fspath(u)
            if not isinstance(u, str):
                raise ValueError(f"urls[{i}]={u!r} must be a str or path, got {type(u).__name__}")
            out.append(u)
    if not out:
        raise ValueError(f"urls={urls!r} names no shard; pass a path, a brace pattern or a list of URLs")
    return out


def is_local(url: str) -> bool:
    """Whether ``url`` is a local file (no scheme, or ``file:``), as webdataset's ``gopen`` decides.

    Example:
        >>> is_local("/data/a.tar"), is_local("pipe:curl -s http://h/a.tar")
        (True, False)
    """
    if not _SCHEME.match(url):
        return True
    return urlparse(url).scheme in ("file", "")


def local_path(url: str) -> str:
    """The file path of a local ``url`` (``file:`` prefix removed).

    Raises:
        ValueError: ``url`` is not local.
    """
    if not is_local(url):
        raise ValueError(f"url={url!r} is not a local file")
    return urlparse(url).path if _SCHEME.match(url) else url


def shard_id(url: str) -> str:
    """The identity of a shard: the normalised absolute path for local files, else the URL.

    Example:
        >>> shard_id("/data/./a.tar")
        '/data/a.tar'
    """
    if is_local(url):
        return os.path.abspath(os.path.expanduser(local_path(url)))
    return url


def shard_name(url: str) -> str:
    """The file name of a shard, also for ``pipe:`` and remote URLs.

    Example:
        >>> shard_name("pipe:curl -s https://host/data/shard-007.tar")
        'shard-007.tar'
    """
    if is_local(url):
        return os.path.basename(local_path(url))
    text = url[5:].strip().split()[-1] if url.startswith("pipe:") and url[5:].strip() else url
    path = urlparse(text).path if _SCHEME.match(text) else text
    return os.path.basename(path.rstrip("/")) or text


def shard_fingerprint(url: str) -> str:
    """What a shard's sidecar is valid for: size and ``mtime_ns`` of a local file; else the URL.

    Remote content cannot be checked cheaply, so a remote shard is trusted to keep its
    content for as long as its URL stays the same (rehash with ``refresh=True`` otherwise).

    Raises:
        FileNotFoundError: a local shard that does not exist.
    """
    if is_local(url):
        st = os.stat(local_path(url))
        return f"size={st.st_size};mtime_ns={st.st_mtime_ns}"
    return f"url={url}"
