"""A small doc-test harness for the Markdown docs: find the fenced code blocks, substitute the
placeholders named in an explicit table, run them, and on failure name the doc, the line and the
snippet's first line.

Used by ``tests/test_docs_snippets.py``. Standard library only, so ``python tests/doc_snippets.py
run-python ...`` can run a snippet in a fresh interpreter (the Ray snippets run that way).

What counts as a *snippet*: every fenced ```python block, and every shell block (fence tag
``bash``, ``console``, ``sh``, ``shell`` or none) with a command line that starts with ``torch-dedup``,
``python`` or ``ray``. Every other fenced block is "not a snippet" and must be listed as such by the
test, with a reason, so nothing new in the docs goes unclassified.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
SHELL_TAGS = ("", "bash", "console", "sh", "shell")
COMMANDS = ("torch-dedup", "python", "ray")  # shell lines that make a block a snippet


@dataclass(frozen=True)
class Fence:
    """One fenced block of a Markdown file."""

    doc: Path
    tag: str   # the fence's info string ("python", "bash", "")
    line: int  # 1-based line in the doc of the block's first code line
    code: str

    @property
    def first_line(self) -> str:
        return next((ln.strip() for ln in self.code.splitlines() if ln.strip()), "")

    @property
    def kind(self) -> str | None:
        """``"python"``, ``"shell"`` (a block that runs a command) or None (not a snippet)."""
        if self.tag == "python":
            return "python"
        if self.tag in SHELL_TAGS and any(argv[0] in COMMANDS for _, argv in shell_commands(self.code)):
            return "shell"
        return None

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.line}"

    def describe(self) -> str:
        return f"{self.where} ({self.tag or 'untagged'} block starting {self.first_line!r})"


def fences(doc: Path) -> list[Fence]:
    """Every fenced block of ``doc``, in order."""
    text = doc.read_text(encoding="utf-8")
    return [Fence(doc, m.group(1), text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text)]


def snippets(doc: Path) -> list[Fence]:
    """The fenced blocks of ``doc`` that are snippets (python, or shell running a command), in order."""
    return [f for f in fences(doc) if f.kind is not None]


def shell_commands(code: str) -> list[tuple[int, list[str]]]:
    """The commands of a shell block as ``(0-based line offset, argv)``: ``\\``-continued lines joined,
    ``# comments`` and a leading ``$ `` prompt dropped, quotes removed as a shell would (no globbing,
    no variables: a brace pattern in quotes stays one argument)."""
    out: list[tuple[int, list[str]]] = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i]
        i += 1
        text = text.strip()
        text = text.removeprefix("$ ")
        argv = shlex.split(text, comments=True)
        if argv:
            out.append((start, argv))
    return out


class Substitutions:
    """An explicit placeholder table: ``{text in the doc: replacement}`` (a replacement may be a
    callable, evaluated when first needed, e.g. an address known only once a cluster runs). Records
    which entries were used, so a stale entry (its placeholder no longer in the doc) can fail a test."""

    def __init__(self, table: Mapping[str, str | Callable[[], str]]):
        self.table = dict(table)
        self.used: set[str] = set()

    def __call__(self, text: str) -> str:
        for old, new in self.table.items():
            if old in text:
                self.used.add(old)
                text = text.replace(old, new() if callable(new) else new)
        return text


class SnippetFailed(AssertionError):
    """A snippet raised (or a command failed); the message names the doc line and the snippet."""


def _failure(fence: Fence, what: str) -> SnippetFailed:
    return SnippetFailed(f"{fence.describe()} failed:\n{what}")


def compile_at(fence: Fence, code: str):
    """``code`` compiled so that tracebacks name the doc and its line numbers."""
    return compile("\n" * (fence.line - 1) + code, str(fence.doc), "exec")


def run_python(fence: Fence, code: str, namespace: dict) -> list[warnings.WarningMessage]:
    """Run ``code`` (``fence``'s code after substitution) in ``namespace``, with Python's default
    warning filters (as a user's script runs, not pytest's "error"); return the warnings it raised."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            exec(compile_at(fence, code), namespace)  # noqa: S102 - running the doc's snippet is the point
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise _failure(fence, traceback.format_exc()) from None
    return list(seen)


def run_python_subprocess(fence: Fence, code: str, *, cwd: Path, env: Mapping[str, str] | None = None,
                          timeout: float = 120, log_info: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (``python tests/doc_snippets.py run-python``), tracebacks
    naming the doc's lines; ``log_info``: loggers set to INFO on stderr. Fails on a non-zero exit."""
    code_file = Path(cwd) / f"snippet_{fence.doc.stem}_{fence.line}.py"
    code_file.write_text(code, encoding="utf-8")
    cmd = [sys.executable, str(Path(__file__).resolve()), "run-python", str(fence.doc), str(fence.line),
           str(code_file), *log_info]
    return _run(fence, cmd, cwd=cwd, env=env, timeout=timeout, what=f"the snippet (python, in {cwd})")


def _run(fence: Fence, argv: Sequence[str], *, cwd, env, timeout, what) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(list(argv), cwd=cwd, env=None if env is None else dict(env), timeout=timeout,
                             capture_output=True, text=True, check=False)
    except subprocess.TimeoutExpired as exc:
        raise _failure(fence, f"{what} ran past {timeout} s: {shlex.join(argv)}\n{exc.stdout}\n{exc.stderr}") from None
    except OSError as exc:
        raise _failure(fence, f"cannot run {shlex.join(argv)}: {exc}") from None
    if res.returncode != 0:
        raise _failure(fence, f"{what} exited with status {res.returncode}: {shlex.join(argv)}\n"
                              f"--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-6000:]}")
    return res


def run_shell(fence: Fence, subst: Substitutions, *, cwd: Path, env: Mapping[str, str], timeout: float = 120,
              handlers: Mapping[str, Callable[[list[str]], None]] | None = None,
              skip: Callable[[list[str]], bool] | None = None) -> list[subprocess.CompletedProcess]:
    """Run the commands of a shell block one by one (no shell: argv as a shell would split it), each
    substituted just before it runs. ``handlers``: ``{"ray start": fn}`` runs ``fn(argv)`` instead for
    commands starting with those words. ``skip(argv)``: commands already run elsewhere (checked by the
    caller). Fails with the doc line of the command that failed."""
    results = []
    for offset, _ in shell_commands(fence.code):
        line_fence = Fence(fence.doc, fence.tag, fence.line + offset, fence.code.splitlines()[offset])
        # substitute the command's own text (continuations included), then split it again
        argv = shell_commands(subst(_command_text(fence.code, offset)))[0][1]
        if skip is not None and skip(argv):
            continue
        handler = next((fn for words, fn in (handlers or {}).items() if argv[:len(words.split())] == words.split()),
                       None)
        if handler is not None:
            try:
                handler(argv)
            except SnippetFailed:
                raise
            except Exception:  # noqa: BLE001
                raise _failure(line_fence, traceback.format_exc()) from None
            continue
        results.append(_run(line_fence, argv, cwd=cwd, env=env, timeout=timeout, what="the command"))
    return results


def _command_text(code: str, offset: int) -> str:
    lines = code.splitlines()
    text, i = lines[offset], offset
    while text.rstrip().endswith("\\") and i + 1 < len(lines):
        i += 1
        text = text + "\n" + lines[i]
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """Ray nodes started by ``ray start ... --block`` in their own process group, in a private temp
    folder (so Ray's shared ``/tmp/ray/ray_current_cluster`` record is never written), and stopped
    by process group id: never ``ray stop``, which would stop every Ray of this user on the machine.
    """

    HARNESS_FLAGS = ("--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                     "--object-store-memory=150000000")

    def __init__(self, temp_dir: Path, env: Mapping[str, str], start_timeout: float = 60):
        self.temp_dir = Path(temp_dir)
        self.env = dict(env)
        self.start_timeout = start_timeout
        self.procs: list[subprocess.Popen] = []
        self.commands: list[list[str]] = []  # the doc's commands, as started (before the harness flags)
        self.address: str | None = None
        self.last_status = ""

    @property
    def record(self) -> Path:
        return self.temp_dir / "ray_current_cluster"

    def ray_start(self, argv: list[str]) -> None:
        """Run a doc's ``ray start ...`` (head or worker) with the harness flags added."""
        head = "--head" in argv
        if not head and self.address is None:
            raise RuntimeError(f"{shlex.join(argv)}: no head node started yet")
        extra = [f"--temp-dir={self.temp_dir}"] + (["--include-dashboard=false"] if head else [])
        before = 0 if head else self.node_count()
        log = open(self.temp_dir / f"node{len(self.procs)}.log", "wb")  # noqa: SIM115 - kept open by the node
        proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), *argv[1:], *self.HARNESS_FLAGS, *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.procs.append(proc)
        self.commands.append(list(argv))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{shlex.join(argv)} exited with status {proc.returncode}:\n" + self.log(-1))
            if head and self.record.exists() and self.record.read_text().strip():
                self.address = self.record.read_text().strip()
                return
            if not head and self.node_count() > before:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{shlex.join(argv)}: node not up after {self.start_timeout} s:\n" + self.log(-1))

    def node_count(self) -> int:
        """Alive nodes, as ``ray status`` reports them (0 when it fails)."""
        try:
            res = subprocess.run([str(Path(sys.executable).with_name("ray")), "status", f"--address={self.address}"],
                                 capture_output=True, text=True, timeout=30, env=self.env, check=False)
        except subprocess.TimeoutExpired:
            return 0
        self.last_status = res.stdout + res.stderr
        active = res.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in res.stdout else ""
        return len(re.findall(r"^\s*\d+\s+node_", active, flags=re.MULTILINE))

    def wait_for_nodes(self, n: int, timeout: float = 30) -> bool:
        """Whether ``ray status`` shows ``n`` alive nodes within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.node_count() != n:
            if time.monotonic() > deadline:
                return False
            time.sleep(1)
        return True

    def log(self, i: int) -> str:
        logs = sorted(self.temp_dir.glob("node*.log"))
        return logs[i].read_text(errors="replace")[-4000:] if logs else ""

    def stop(self, grace_s: float = 5) -> None:
        """SIGTERM each node's process group, then SIGKILL what is left after ``grace_s``."""
        for proc in reversed(self.procs):
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in reversed(self.procs):
            _signal_group(proc.pid, signal.SIGKILL)  # the group's stragglers (gcs_server, raylet, workers)
            proc.wait()
        self.procs.clear()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _main(argv: list[str]) -> int:
    """``run-python DOC LINE CODE_FILE [LOGGER...]``: run a snippet, tracebacks naming the doc's lines."""
    if len(argv) < 4 or argv[0] != "run-python":
        print(__doc__, file=sys.stderr)
        return 2
    doc, line, code_file, loggers = Path(argv[1]), int(argv[2]), Path(argv[3]), argv[4:]
    if loggers:
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        for name in loggers:
            logging.getLogger(name).setLevel(logging.INFO)
            logging.getLogger(name).addHandler(handler)
    fence = Fence(doc, "python", line, code_file.read_text(encoding="utf-8"))
    exec(compile_at(fence, fence.code), {"__name__": "__main__"})  # noqa: S102 - the doc's snippet
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
