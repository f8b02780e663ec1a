"""Run one Ray task per item on an existing Ray cluster, or on a local one started for the call.

The only module of torch_dedup that imports ``ray`` (lazily, inside the functions). It is a
thin scheduler: the work itself is a plain picklable function (for shard hashing,
:func:`torch_dedup.wds.shards._hash_and_store`, the very function the local engine runs),
so a shard hashed on Ray writes the same sidecar, byte for byte in its hashes and keys,
as one hashed in a local worker process.

Failure handling is Ray's: a task whose worker dies (killed, out of memory, node lost)
is retried up to ``max_retries`` times; a task that raises one of ``retry_exceptions``
(transient I/O) is retried too. Errors that are a property of the data (a damaged shard,
an undecodable image) are returned as values by the task and never retried.

Cluster ownership: when Ray is already initialised in this process, that session is used
and left running. Otherwise :func:`ray_session` calls ``ray.init(address=...)`` (a local
cluster when ``address`` is None and none is running) and disconnects at the end; a
remote cluster it connected to keeps running.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

__all__ = ["DEFAULT_MAX_RETRIES", "RETRY_EXCEPTIONS", "import_ray", "ray_map", "ray_session"]

logger = logging.getLogger(__name__)

#: Retries of a task whose worker died or that raised a transient error.
DEFAULT_MAX_RETRIES = 3
#: Exceptions a task is retried for (transient I/O: network file systems, object stores).
RETRY_EXCEPTIONS = (ConnectionError, TimeoutError, InterruptedError, BlockingIOError)
_EXTRA = "pip install 'torch_dedup[ray]'"


def import_ray():
    """Import and return the ``ray`` module.

    Raises:
        ImportError: ray is not installed; the message names the extra to install.

    Example:
        >>> ray = import_ray()  # doctest: +SKIP
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"engine='ray' needs the ray package, which is not installed ({exc}); "
                          f"install it with: {_EXTRA}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, **init_kwargs) -> Iterator[object]:
    """Use the Ray session of this process, or connect (or start a local one) for the block.

    Args:
        address: a cluster address (``"ray://head:10001"``, ``"head:6379"``, ``"auto"``); None:
            ``RAY_ADDRESS`` or a cluster already running on this machine, else a new local one.
        **init_kwargs: passed to ``ray.init`` when this call initialises Ray (e.g. ``num_cpus``).

    Yields:
        The ``ray`` module, initialised.

    Raises:
        ImportError: ray is not installed.
        ValueError: ``address`` is not a non-empty string or None.
    """
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(f"ray_address={address!r} must be None (local or RAY_ADDRESS) or a cluster address "
                         "like 'ray://head:10001' or 'auto'")
    ray = import_ray()
    if ray.is_initialized():
        if address is not None:
            logger.info("Ray is already initialised in this process; using that session, not %s", address)
        yield ray
        return
    ray.init(address=address, **{"log_to_driver": False, **init_kwargs})
    logger.info("connected to Ray at %s (%s CPUs)", address or "a local cluster",
                ray.cluster_resources().get("CPU"))
    try:
        yield ray
    finally:
        ray.shutdown()  # disconnects; stops the cluster only if this call started it locally


def ray_map(fn: Callable, items: Sequence[tuple], *, address: str | None = None,
            max_retries: int = DEFAULT_MAX_RETRIES, retry_exceptions: Sequence[type] = RETRY_EXCEPTIONS,
            num_cpus: float = 1, max_in_flight: int | None = None, progress: bool = True,
            desc: str = "ray tasks", unit: str = "task") -> Iterator[tuple[int, object]]:
    """Run ``fn(*items[i])`` as one Ray task per item; yield ``(i, result)`` as tasks finish.

    Args:
        fn: a picklable function (module level, or a closure cloudpickle can carry).
        items: the argument tuples, one per task.
        address: Ray cluster address (see :func:`ray_session`).
        max_retries: retries of a task whose worker died or that raised ``retry_exceptions``.
        retry_exceptions: exception types retried (others fail the task at once).
        num_cpus: CPUs each task reserves.
        max_in_flight: tasks submitted at once (None: 4 per cluster CPU); more are queued
            here, so a million shards do not become a million pending tasks.
        progress: a tqdm bar over completed tasks.
        desc, unit: the bar's label and unit.

    Yields:
        ``(index into items, fn's return value)`` in completion order.

    Raises:
        ImportError: ray is not installed.
        ValueError: a bad argument.
        ray.exceptions.RayTaskError: a task failed after its retries (other tasks are cancelled).

    Example:
        >>> dict(ray_map(pow, [(2, 3), (3, 2)], progress=False))  # doctest: +SKIP
        {0: 8, 1: 9}
    """
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries={max_retries!r} must be an int >= 0")
    if max_in_flight is not None and (isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int)
                                      or max_in_flight < 1):
        raise ValueError(f"max_in_flight={max_in_flight!r} must be None or an int >= 1")
    items = list(items)
    if not items:
        return
    from tqdm.auto import tqdm

    with ray_session(address) as ray:
        remote = ray.remote(fn).options(num_cpus=num_cpus, max_retries=max_retries,
                                        retry_exceptions=list(retry_exceptions) or False)
        window = max_in_flight or max(4, 4 * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict = {}
        nxt = 0
        with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, leave=False) as bar:
            try:
                while nxt < len(items) or pending:
                    while nxt < len(items) and len(pending) < window:
                        pending[remote.remote(*items[nxt])] = nxt
                        nxt += 1
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        i = pending.pop(ref)
                        result = ray.get(ref)
                        bar.update(1)
                        yield i, result
            finally:
                for ref in pending:  # an error or an abandoned generator: stop the rest
                    ray.cancel(ref, force=True)
