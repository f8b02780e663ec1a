"""Worker processes that decode and hash image files, started and ended by one hashing call.

Why not ``multiprocessing``: a ``spawn`` (or ``forkserver``) worker re-imports the caller's
main module, so a training script's ``import torch`` (and ``torch_dedup/__init__``, which
imports torch for the sampler) cost every worker hundreds of MB, and a script without an
``if __name__ == "__main__":`` guard re-ran itself in every worker. ``fork`` is unsafe in a
process that has started threads (numba, torch, data loaders).

So each worker is a fresh ``python -c`` interpreter that imports only this package folder,
``torch_dedup.hashing`` (numpy, Pillow, numba; never torch, never the caller's code): the
``torch_dedup`` parent package is registered as a bare namespace so its ``__init__`` does
not run. Requests and replies are pickled over the worker's stdin/stdout pipes (the data
are our own tuples and numpy arrays, between processes we started; nothing read from disk
is unpickled). :class:`FilePool` is a context manager: the workers end when the hashing
that needed them ends, also on an error or Ctrl-C; a worker whose parent died sees its
stdin close and exits.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence

__all__ = ["FilePool", "WorkerDied", "serve"]

logger = logging.getLogger(__name__)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the worker: make ``torch_dedup`` a bare package (its __init__ imports torch), then serve.
_BOOT = (
    "import sys, types\n"
    "pkg = types.ModuleType('torch_dedup')\n"
    "pkg.__path__ = [sys.argv[1]]\n"
    "sys.modules['torch_dedup'] = pkg\n"
    "from torch_dedup.hashing._workers import serve\n"
    "serve()\n"
)

class WorkerDied(RuntimeError):
    """A worker process ended or broke its pipe before answering (OOM killer, a decoder crash)."""


class _Batch:
    """The chunks of one :meth:`FilePool.hash_chunks` call and how many are still being hashed."""

    def __init__(self, chunks, request):
        self.chunks, self.request = chunks, request
        self.results: list = [None] * len(chunks)
        self.pending = len(chunks)
        self.error: BaseException | None = None
        self.done = threading.Condition()

    def finish(self, k: int, result, error: BaseException | None = None) -> None:
        with self.done:
            self.results[k] = result
            if error is not None and self.error is None:
                self.error = error
            self.pending -= 1
            self.done.notify_all()


class FilePool:
    """``workers`` hashing processes for the duration of a ``with`` block.

    Each worker takes chunks only once it has started (imports done, numba kernels for
    ``method``/``hash_size`` loaded); the calling process hashes chunks too meanwhile, so a
    pool costs little even where the workers never get to start.

    Args:
        workers: number of processes (>= 1).
        method: hash method the workers warm up for.
        hash_size: hash size the workers warm up for.

    Example:
        >>> with FilePool(2, "phash", 8) as pool:  # doctest: +SKIP
        ...     results = pool.hash_chunks([[(0, "a.jpg")], [(1, "b.jpg")]], "phash", 8, False)
    """

    def __init__(self, workers: int, method: str = "phash", hash_size: int = 8):
        if workers < 1:
            raise ValueError(f"workers={workers!r} must be >= 1 for a FilePool; 0 hashes in this process")
        self.workers = int(workers)
        self._warm = (method, int(hash_size))
        self._procs: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = False
        self._died: list[str] = []

    def __enter__(self) -> FilePool:
        env = dict(os.environ)
        # Parallelism comes from the processes: one numba/BLAS thread each avoids oversubscription.
        env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            for w in range(self.workers):
                self._procs.append(subprocess.Popen(
                    [sys.executable, "-c", _BOOT, _PACKAGE_DIR, self._warm[0], str(self._warm[1])],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True))
                thread = threading.Thread(target=self._drive, args=(w,), daemon=True, name=f"torch_dedup-hash-{w}")
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.close()
            raise
        logger.debug("started %d hashing worker processes: %s", self.workers, self.pids)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [p.pid for p in self._procs]

    def close(self) -> None:
        """End every worker and its thread (a worker still starting is ended too)."""
        self._closing = True
        for _ in self._threads:
            self._jobs.put(None)
        # Called with no chunk in flight: a worker is idle or still starting, and holds nothing
        # worth waiting for. Ended first, pipes closed after: closing a pipe a thread is
        # reading from would wait for that read (the whole start-up of a starting worker).
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        for p in self._procs:
            p.wait()
        for p in self._procs:
            for pipe in (p.stdin, p.stdout):
                try:
                    pipe.close()
                except OSError:  # a broken pipe to a dead worker: nothing left to close
                    pass
        for t in self._threads:
            t.join()
        self._procs, self._threads = [], []

    def _ask(self, w: int, request: tuple):
        p = self._procs[w]
        try:
            if request is not None:
                pickle.dump(request, p.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                p.stdin.flush()
            status, payload = pickle.load(p.stdout)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            raise WorkerDied(f"hashing worker {p.pid} ended (exit code {p.poll()}): {type(exc).__name__}: {exc}"
                             ) from None
        if status != "ok":
            raise RuntimeError(f"hashing worker {p.pid} failed: {payload}")
        return payload

    def _drive(self, w: int) -> None:
        """Worker ``w``'s thread: wait until it has started, then feed it chunks until closed."""
        try:
            self._ask(w, None)  # its "ready"
        except (WorkerDied, RuntimeError) as exc:
            if not self._closing:
                self._died.append(str(exc))
            return
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, batch, k = job
            try:
                if kind == "modules":
                    batch.finish(k, self._ask(w, ("modules",)))
                else:
                    batch.finish(k, self._ask(w, batch.request(batch.chunks[k])))
            except WorkerDied as exc:
                batch.finish(k, None)  # the caller hashes this chunk itself
                if not self._closing:
                    self._died.append(str(exc))
                return
            except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
                batch.finish(k, None, exc)

    def modules(self) -> list[list[str]]:
        """The names in ``sys.modules`` of each worker, once each has started (what a worker costs)."""
        batch = _Batch([None] * self.workers, None)
        for k in range(self.workers):
            self._jobs.put(("modules", batch, k))
        with batch.done:
            batch.done.wait_for(lambda: batch.pending == 0)
        return batch.results

    def hash_chunks(self, chunks: Sequence[Sequence[tuple[int, str]]], method: str, hash_size: int,
                    fast_decode: bool) -> list:
        """``hash_files`` of each chunk, by the started workers and this process; results in chunk order."""
        from PIL import Image

        from torch_dedup.hashing._decode import hash_files

        max_pixels = Image.MAX_IMAGE_PIXELS  # the caller's setting, applied in every worker
        batch = _Batch(chunks, lambda chunk: ("hash", chunk, method, hash_size, fast_decode, max_pixels))
        for k in range(len(chunks)):
            self._jobs.put(("hash", batch, k))
        died_before = len(self._died)
        while batch.error is None:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # a closing sentinel: leave it for the threads
                self._jobs.put(None)
                break
            _, mine, k = job
            mine.finish(k, hash_files(mine.chunks[k], method, hash_size, fast_decode))
        with batch.done:
            batch.done.wait_for(lambda: batch.pending == 0 or batch.error is not None)
        if batch.error is not None:
            raise batch.error
        if len(self._died) > died_before:
            logger.warning("%d of %d hashing worker processes died (%s); hashing their files in this process "
                           "instead (slower). Out of memory? Pass fewer workers=, or workers=0.",
                           len(self._died), self.workers, self._died[-1])
        for k, got in enumerate(batch.results):
            if got is None:  # its worker died while hashing it
                batch.results[k] = hash_files(chunks[k], method, hash_size, fast_decode)
        return batch.results


def serve() -> None:
    """The worker's loop: start, say "ready", answer requests from stdin until it closes."""
    import signal

    import numpy as np
    from PIL import Image

    from torch_dedup.hashing._decode import hash_files
    from torch_dedup.hashing._stack import hash_stack

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends us
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library that prints must not corrupt the reply stream
    sys.stdout = sys.stderr
    method, hash_size = sys.argv[2], int(sys.argv[3])
    for channels in (1, 3):  # load the numba kernels files will need before taking any
        hash_stack(np.zeros((1, 40, 40, channels), np.uint8), method, hash_size)
    reply: tuple = ("ok", "ready")
    while True:
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
        try:
            request = pickle.load(inp)
        except EOFError:
            return
        try:
            if request[0] == "hash":
                tasks, method, hash_size, fast_decode, Image.MAX_IMAGE_PIXELS = request[1:]
                reply = ("ok", hash_files(tasks, method, hash_size, fast_decode))
            elif request[0] == "modules":
                reply = ("ok", sorted(sys.modules))
            else:
                reply = ("error", f"unknown request {request[0]!r}")
        except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it
            reply = ("error", f"{type(exc).__name__}: {exc}")
