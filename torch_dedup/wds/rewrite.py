"""Write deduplicated shards: the kept samples, byte for byte, into new shards.

Filtering in the stream still reads (and downloads) every dropped sample; writing new
shards without them saves that I/O for every later epoch, as webdataset's maintainer
recommends. :func:`rewrite_shards` reads each source shard once, checks it is the shard the
plan was made for, and writes every kept sample's files unchanged with webdataset's
``ShardWriter``, plus a sidecar for each new shard (from the plan's hashes: nothing is
decoded again). Source shards are only read; an output folder that holds a source shard
is refused; no member name can place a file outside the output folder. Each new shard is
written in a staging folder inside ``out_dir`` and moved to its name with ``os.replace``
once complete, so neither a crash nor an error (a damaged source, a full disk, an
interrupt) ever leaves a partial shard under a shard name.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from torch_dedup.errors import PlanError
from torch_dedup.sidecar import hash_environment

from .shard_plan import ShardPlan
from .shard_sidecar import ShardSidecar, shard_sidecar_paths, write_shard_sidecar
from .shard_urls import is_local, local_path, shard_fingerprint
from .tar_samples import ShardReadError, iter_tar_samples

__all__ = ["RewriteResult", "rewrite_shards"]

logger = logging.getLogger(__name__)

_PATTERN_FIELD = re.compile(r"%0?\d*d")
_STAGING_PREFIX = ".torch_dedup-rewrite-"


def _remove_dead_staging(out_dir: Path) -> None:
    """Delete staging folders left by a rewrite that was killed (its process no longer runs)."""
    for entry in out_dir.glob(f"{_STAGING_PREFIX}*.tmp"):
        try:
            pid = int(entry.name[len(_STAGING_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if _alive(pid):
            continue
        logger.info("removing %s, left by a rewrite that did not finish", entry)
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@dataclass
class RewriteResult:
    """What :func:`rewrite_shards` wrote.

    Attributes:
        shards: the new shard files, in order.
        sidecars: their sidecar files.
        n_written: samples written.
        n_dropped: samples dropped as the plan says.
        skipped: ``(url, key or None, reason)`` for samples or shard tails not written
            because of ``on_error="skip"`` (hostile member names, damaged shards).
    """

    shards: list = field(default_factory=list)
    sidecars: list = field(default_factory=list)
    n_written: int = 0
    n_dropped: int = 0
    skipped: list = field(default_factory=list)


def _check_pattern(pattern: str) -> None:
    if not isinstance(pattern, str) or len(_PATTERN_FIELD.findall(pattern)) != 1 or "%" in \
            _PATTERN_FIELD.sub("", pattern).replace("%%", ""):
        raise ValueError(f"pattern={pattern!r} must hold exactly one %d field, e.g. 'shard-%06d.tar'")
    name = pattern % 0
    if "/" in name or os.sep in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"pattern={pattern!r} must be a plain file name inside out_dir (no folders, no leading dot)")


def _unsafe_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return name.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts or bool(re.match(r"^[A-Za-z]:", name))


def _check_out_dir(plan: ShardPlan, out_dir: Path, pattern: str, overwrite: bool) -> None:
    for sh in plan.shards:
        if is_local(sh["url"]):
            src = Path(local_path(sh["url"])).expanduser().resolve().parent
            if src == out_dir:
                raise ValueError(f"out_dir={str(out_dir)!r} holds the source shard {sh['url']!r}; write the "
                                 "deduplicated shards to another folder (sources are never touched)")
    if out_dir.is_dir() and not overwrite:
        glob = _PATTERN_FIELD.sub("*", pattern).replace("%%", "%")
        existing = sorted(p.name for p in out_dir.glob(glob))
        if existing:
            raise ValueError(f"out_dir={str(out_dir)!r} already holds {len(existing)} shard(s) named like "
                             f"{pattern!r} (e.g. {existing[0]!r}); choose an empty folder or pass overwrite=True")


def rewrite_shards(plan: ShardPlan | str | os.PathLike, out_dir: str | os.PathLike, *,
                   pattern: str = "shard-%06d.tar", maxcount: int = 100_000, maxsize: float = 3e9,
                   on_error: str = "raise", overwrite: bool = False, write_sidecars: bool = True,
                   verify: bool = True) -> RewriteResult:
    """Write the samples ``plan`` keeps into new shards in ``out_dir``.

    Args:
        plan: a :class:`ShardPlan` or the path of a saved one.
        out_dir: folder for the new shards (created if missing); must not hold a source shard.
        pattern: file name pattern with one ``%d`` field (``ShardWriter`` numbering from 0).
        maxcount: at most this many samples per new shard.
        maxsize: start a new shard once one reaches this many bytes of member data.
        on_error: ``"raise"`` or ``"skip"``: a sample with a hostile member name (absolute,
            or with a ``..`` component) or a damaged source shard is recorded in
            ``skipped`` and the rest goes on.
        overwrite: allow ``out_dir`` to already hold files named like ``pattern``.
        write_sidecars: write a shard sidecar beside each new shard (hashes from the plan).
        verify: refuse a local source shard whose size or mtime differ from the plan's.

    Returns:
        A :class:`RewriteResult`.

    Raises:
        ValueError: bad arguments, ``out_dir`` is a source folder or already holds shards.
        PlanError: a source shard is not the one the plan was made for.
        ShardReadError: a damaged source shard or a hostile member name (``on_error="raise"``).

    Example:
        >>> res = rewrite_shards("shards/dedup.tdplan", "shards-dedup", maxcount=10_000)  # doctest: +SKIP
        >>> res.n_written, res.shards[:1]  # doctest: +SKIP
        (9588, ['shards-dedup/shard-000000.tar'])
    """
    import webdataset as wds

    if not isinstance(plan, ShardPlan):
        plan = ShardPlan.load(plan)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} must be 'raise' or 'skip'")
    if isinstance(maxcount, bool) or not isinstance(maxcount, int) or maxcount < 1:
        raise ValueError(f"maxcount={maxcount!r} must be an int >= 1")
    if isinstance(maxsize, bool) or not isinstance(maxsize, (int, float)) or not maxsize > 0:
        raise ValueError(f"maxsize={maxsize!r} must be a number of bytes > 0")
    _check_pattern(pattern)
    out_dir = Path(out_dir).expanduser().resolve()
    _check_out_dir(plan, out_dir, pattern, overwrite)
    where = plan.path or "<ShardPlan>"
    if verify:
        for sh in plan.shards:
            if is_local(sh["url"]):
                try:
                    now = shard_fingerprint(sh["url"])
                except OSError as exc:
                    raise PlanError(where, f"source shard {sh['url']!r} cannot be read: {exc}") from None
                if now != sh["fingerprint"]:
                    raise PlanError(where, f"source shard {sh['url']!r} changed since the plan was made "
                                           f"({now!r}, plan has {sh['fingerprint']!r}); hash and plan again")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out_dir)
    # Shards are written in a private staging folder and moved to their final name
    # (os.replace, same filesystem) only once complete: a crash never leaves a partial
    # shard under a name a reader would open, and a rerun with overwrite=True finishes the work.
    staging = out_dir / f"{_STAGING_PREFIX}{os.getpid()}-{os.urandom(4).hex()}.tmp"
    staging.mkdir()
    result = RewriteResult()
    written: dict[str, list[int]] = {}  # new shard (staging name) -> corpus indices written into it
    written_keys: dict[str, set] = {}
    finished: list[str] = []
    failed = False

    def publish(fname: str) -> None:
        if failed:
            # ShardWriter.close() finishes the shard in progress even when the copy failed: that
            # shard is partial, so it stays in staging (removed below) and never gets a final name
            return
        final = out_dir / Path(fname).name
        with open(fname, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(fname, final)
        finished.append((fname, str(final)))

    writer = wds.ShardWriter(str(staging / pattern), maxcount=maxcount, maxsize=maxsize, verbose=0,
                             encoder=False, keep_meta=True, post=publish)
    try:
        try:
            for s, sh in enumerate(plan.shards):
                _copy_shard(plan, s, sh["url"], writer, written, written_keys, result, on_error, where)
        except BaseException:
            failed = True
            if finished:
                logger.warning("rewrite_shards failed after %d complete shard(s) in %s (%s ... %s); the shard in "
                               "progress was discarded. Fix the cause and run again with overwrite=True",
                               len(finished), out_dir, Path(finished[0][1]).name, Path(finished[-1][1]).name)
            raise
        finally:
            writer.close()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.shards = [final for _, final in finished]
    result.n_written = sum(len(v) for v in written.values())
    if write_sidecars:
        result.sidecars = [_write_sidecar(plan, final, written.get(tmp, [])) for tmp, final in finished]
    logger.info("rewrite_shards: wrote %d samples into %d shards in %s (%d dropped)", result.n_written,
                len(result.shards), out_dir, result.n_dropped)
    return result


def _copy_shard(plan, s, url, writer, written, written_keys, result, on_error, where) -> None:
    a = int(plan.shard_offsets[s])
    keys = plan.shard_keys(s)
    drop = plan.shard_drop(s).tolist()
    j = 0
    try:
        for sample in iter_tar_samples(url):
            if j >= len(keys) or sample.key != keys[j]:
                raise PlanError(where, f"shard {url!r} sample {j} is {sample.key!r} but the plan has "
                                       f"{keys[j] if j < len(keys) else 'no more samples'!r}: the shard changed "
                                       "since the plan was made; hash and plan again")
            j += 1
            if drop[j - 1]:
                result.n_dropped += 1
                continue
            if not sample.complete:
                # the last sample before damage the plan did not foresee (the shard was damaged
                # after planning): some of its members may be cut off, so it is never written
                why = "cut by the damage to its shard (members may be missing); not written"
                logger.warning("shard %s sample %r: %s", url, sample.key, why)
                result.skipped.append((url, sample.key, why))
                continue
            names = [f"{sample.key}.{stored}" for stored, _ in sample.files.values()]
            bad = [n for n in names if _unsafe_name(n)]
            if bad:
                err = ShardReadError(url, f"member name {bad[0]!r} is absolute or leaves its folder ('..'); "
                                          "refusing to write it", sample.offset, bad[0])
                if on_error == "raise":
                    raise err
                logger.warning("%s; sample not written", err.detail)
                result.skipped.append((url, sample.key, err.reason))
                continue
            obj = {"__key__": sample.key}
            obj.update({stored: data for stored, data in sample.files.values()})
            if sample.key in written_keys.get(writer.fname, ()):
                # equal keys from different source shards must not meet in one new shard:
                # webdataset would merge neighbours, and (shard, key) would no longer name one sample
                writer.next_stream()
            writer.write(obj)
            written.setdefault(writer.fname, []).append(a + j - 1)
            written_keys.setdefault(writer.fname, set()).add(sample.key)
    except ShardReadError as exc:
        if on_error == "raise":
            raise
        logger.warning("%s; the samples after it are not written", exc.detail)
        result.skipped.append((url, None, exc.detail))
        return
    if j != len(keys):
        raise PlanError(where, f"shard {url!r} has {j} samples but the plan lists {len(keys)}: the shard "
                               "changed since the plan was made; hash and plan again")


def _write_sidecar(plan: ShardPlan, path: str, idx: list[int]) -> str:
    st = plan.settings
    idx_a = np.asarray(idx, dtype=np.int64)
    keys = [plan.sample(int(i))[1] for i in idx]
    has_image = plan.has_image[idx_a]
    valid = ~plan.plan.failed[idx_a]  # failed in the plan: no image, or an image that failed to hash
    failures = tuple((k, f"{path}:{keys[k]}", "could not be hashed in the source shard")
                     for k in np.flatnonzero(has_image & ~valid).tolist())
    hashes = plan.hashes[idx_a] if len(idx_a) else plan.hashes[:0]
    sc = ShardSidecar(url=path, keys=tuple(keys), hashes=np.ascontiguousarray(hashes), valid=valid,
                      has_image=has_image, failures=failures)
    # codes of a fitted method are keyed on their fit, in the name and in the meta, as hash_shards writes them
    fit_fp = st.get("fit")
    target = shard_sidecar_paths(path, st["method"], st["hash_size"], st["decode"], fit_fingerprint=fit_fp)[0]
    extra = {"image_exts": list(st["image_exts"]), "hash_env": st.get("hash_env") or hash_environment(),
             "rewritten_from": plan.path}
    if fit_fp is not None:
        extra["fit"] = fit_fp
    return str(write_shard_sidecar(target, sc, method=st["method"], hash_size=st["hash_size"],
                                   fingerprint=shard_fingerprint(path), decode=st["decode"], extra=extra))
