"""Run one task per shard: in this process, in spawned worker processes, or as Ray tasks.

Hashing shards (:mod:`torch_dedup.wds.shards`) and computing their colour_dct features
(:mod:`torch_dedup.wds.shard_fit`) share this runner, so both take ``workers``, ``engine``
and ``ray_address`` with one meaning. A task is a module-level function whose result is
plain data (never a custom exception), so it crosses process and Ray boundaries unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from torch_dedup.errors import ImageDecodeError

from .shard_urls import is_local, local_path
from .tar_samples import ShardReadError

__all__ = ["POOL_MIN_BYTES", "auto_workers", "check_engine", "raise_task_error", "run_shard_tasks"]

#: Below this many bytes of local shards to read, worker processes cost more than they save:
#: each spawned worker imports torch_dedup (and torch) first, seconds on a busy machine.
POOL_MIN_BYTES = 256 << 20


def check_engine(engine, ray_address) -> None:
    """``engine`` is one of :data:`torch_dedup.engines.ENGINES`; ``ray_address`` only with ``"ray"``.

    Raises:
        ValueError: naming the argument, its value and the valid choices.
    """
    from torch_dedup.engines import ENGINES

    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not an engine; use one of {ENGINES} ('ray' needs "
                         "pip install 'torch_dedup[ray]')")
    if ray_address is not None and engine != "ray":
        raise ValueError(f"ray_address={ray_address!r} is only used with engine='ray' (got engine={engine!r})")


def auto_workers(urls: list[str]) -> int:
    """Processes for ``urls``: none for one shard or under :data:`POOL_MIN_BYTES` of local shards,
    else one per core, at most one per shard."""
    if len(urls) < 2:
        return 0
    local = [u for u in urls if is_local(u)]
    if len(local) == len(urls) and sum(os.path.getsize(local_path(u)) for u in local) < POOL_MIN_BYTES:
        return 0
    return min(len(urls), os.cpu_count() or 1)


def run_shard_tasks(fn: Callable, tasks: list[tuple[int, str, tuple]], take: Callable[[int, object], None], *,
                    workers: int | None, engine: str, ray_address: str | None, progress: bool,
                    desc: str) -> None:
    """Run ``fn(url, *args)`` for each ``(index, url, args)`` of ``tasks``; ``take(index, result)`` as each ends.

    Args:
        fn: a module-level function (picklable for spawned processes and Ray).
        tasks: ``(index, url, args)``; ``index`` is handed back to ``take``.
        take: called in this process with each result, in completion order; what it raises
            stops the run (the tasks not started are cancelled).
        workers: processes (``None``: :func:`auto_workers`; 0: in this process). Local engine only.
        engine: ``"local"`` or ``"ray"`` (one Ray task per shard, retried when its worker dies).
        ray_address: with ``engine="ray"``, the cluster.
        progress: a tqdm bar over shards (shown for two shards or more).
        desc: the bar's label.
    """
    if not tasks:
        return
    if engine == "ray":
        from torch_dedup.engines.ray import ray_map

        index = [i for i, _, _ in tasks]
        for k, res in ray_map(fn, [(url, *args) for _, url, args in tasks], address=ray_address,
                              progress=progress and len(tasks) >= 2, desc=f"{desc} (ray)", unit="shard"):
            take(index[k], res)
        return
    if workers is None:
        workers = auto_workers([url for _, url, _ in tasks])
    from tqdm.auto import tqdm

    with tqdm(total=len(tasks), unit="shard", desc=desc, disable=not progress or len(tasks) < 2,
              leave=False) as bar:
        if workers == 0 or len(tasks) < 2:
            for i, url, args in tasks:
                take(i, fn(url, *args))
                bar.update(1)
            return
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, url, *args): i for i, url, args in tasks}
            try:
                for fut in as_completed(futures):
                    take(futures[fut], fut.result())
                    bar.update(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise


def raise_task_error(res: tuple) -> None:
    """Raise what a shard task returned as data: ``("shard_error", url, reason, offset, member,
    unopened)``, ``("image_error", source, reason, index)`` or ``("write_error", url, reason)``."""
    if res[0] == "shard_error":
        raise ShardReadError(res[1], res[2], res[3], res[4], unopened=res[5])
    if res[0] == "image_error":
        raise ImageDecodeError(res[1], res[2], res[3])
    raise OSError(f"cannot write the sidecar of shard {res[1]} anywhere ({res[2]}); pass sidecar_dir= "
                  "to a writable folder")
