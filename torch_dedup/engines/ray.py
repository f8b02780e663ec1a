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

Bounded connect: ``ray.init`` waits a long time (minutes) on a cluster address whose
processes are gone, e.g. the "current cluster" record ``ray start`` leaves in Ray's temp
folder when the cluster was killed instead of stopped with ``ray stop``. So before
``ray.init``, :func:`resolve_cluster` finds the address Ray would use (the argument,
``RAY_ADDRESS``, or that record) and checks within :data:`CONNECT_TIMEOUT_S` that
something listens there: a dead record with no address given is logged and a local
cluster started instead; a dead address that was asked for raises ``ConnectionError``
naming it, where it came from, and the fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["CONNECT_TIMEOUT_S", "DEFAULT_MAX_RETRIES", "RETRY_EXCEPTIONS", "Cluster", "import_ray", "ray_map",
           "ray_session", "resolve_cluster"]

logger = logging.getLogger(__name__)

#: Retries of a task whose worker died or that raised a transient error.
DEFAULT_MAX_RETRIES = 3
#: Exceptions a task is retried for (transient I/O: network file systems, object stores).
RETRY_EXCEPTIONS = (ConnectionError, TimeoutError, InterruptedError, BlockingIOError)
_EXTRA = "pip install 'torch_dedup[ray]'"
#: Seconds to wait for a TCP connection to a cluster's address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Cluster:
    """Which Ray cluster a call will use, decided before ``ray.init``.

    Attributes:
        address: what to pass to ``ray.init`` (``"local"``: start a local cluster).
        source: where it came from: ``"argument"``, ``"RAY_ADDRESS"``, the record file's path, or
            ``"none"`` (nothing given or recorded).
    """

    address: str
    source: str

    def describe(self) -> str:
        """Words for the log: ``"a new local cluster"`` or ``"host:port (from RAY_ADDRESS)"``."""
        if self.address == "local":
            return "a new local cluster" + ("" if self.source == "none" else f" (instead of {self.source})")
        return f"{self.address} (from {self.source})"


def _record_path(ray) -> str:
    """Ray's record of the cluster the last ``ray start`` on this machine started."""
    try:
        return ray._private.utils.get_ray_address_file(None)
    except Exception:  # a Ray without this helper: its long-standing default place
        import tempfile

        return os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _reachable(address: str, timeout: float) -> bool:
    hp = _host_port(address)
    if hp is None:
        return True  # not host:port (a Ray shorthand): let ray.init decide
    try:
        with socket.create_connection(hp, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_cluster(address: str | None = None, *, timeout: float = CONNECT_TIMEOUT_S, ray=None) -> Cluster:
    """The Ray cluster :func:`ray_session` will use, checked to be listening within ``timeout`` s.

    Args:
        address: ``None`` (``RAY_ADDRESS``, else the cluster ``ray start`` recorded on this
            machine, else a new local one), ``"auto"`` (``RAY_ADDRESS`` or the recorded cluster;
            one must run), ``"local"``, or a cluster address (``"head:6379"``, ``"ray://head:10001"``).
        timeout: seconds to wait for a TCP connection.
        ray: the ray module (imported when None).

    Returns:
        A :class:`Cluster`.

    Raises:
        ConnectionError: the address asked for (argument, ``RAY_ADDRESS``, or the record with
            ``"auto"``) does not answer; the message names it, where it came from, and the fix.

    Example:
        >>> resolve_cluster("local")
        Cluster(address='local', source='argument')
    """
    ray = ray or import_ray()
    if address == "local":
        return Cluster("local", "argument")
    env = os.environ.get("RAY_ADDRESS") or None
    if address not in (None, "auto"):
        given, source = address, "argument"
    elif env is not None:
        given, source = env, "RAY_ADDRESS"
    else:
        record = _record_path(ray)
        try:
            with open(record, encoding="utf-8") as f:
                given = f.read().strip() or None
        except OSError:
            given = None
        source = f"Ray's current-cluster record {record}"
        if given is None:
            if address == "auto":
                raise ConnectionError("ray_address='auto': no Ray cluster is recorded on this machine (no "
                                      f"RAY_ADDRESS, no {record}); start one with `ray start --head`, or pass "
                                      "ray_address=None to start a local cluster for this call")
            return Cluster("local", "none")
        if not _reachable(given, timeout):
            if address == "auto":
                raise ConnectionError(
                    f"ray_address='auto': {source} names {given}, where nothing answers within {timeout:g} s: the "
                    "cluster was stopped without `ray stop` and the record is stale. Run `ray stop` (or delete "
                    f"{record}), start a cluster with `ray start --head`, or pass ray_address=None to start a "
                    "local cluster for this call")
            logger.warning("%s names %s, where nothing answers within %g s (a cluster stopped without "
                           "`ray stop`); starting a local cluster instead. Run `ray stop` or delete %s to "
                           "remove the stale record", source, given, timeout, record)
            return Cluster("local", f"the stale {source}")
        return Cluster(given, source)
    if not _reachable(given, timeout):
        what = "ray_address" if source == "argument" else "RAY_ADDRESS"
        raise ConnectionError(f"{what}={given!r}: nothing answers there within {timeout:g} s; check that the "
                              "cluster runs (`ray status --address HOST:PORT`) and the address and port, or "
                              + ("unset RAY_ADDRESS" if source == "RAY_ADDRESS" else "pass ray_address=None")
                              + " to start a local cluster for this call")
    return Cluster(given, source)


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
        ConnectionError: the cluster asked for does not answer (:func:`resolve_cluster`).
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
    cluster = resolve_cluster(address, ray=ray)
    ray.init(address=cluster.address, **{"log_to_driver": False, **init_kwargs})
    logger.info("Ray engine: using %s, GCS %s, %s CPUs", cluster.describe(),
                ray.get_runtime_context().gcs_address, ray.cluster_resources().get("CPU"))
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
