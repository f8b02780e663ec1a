"""Every snippet of docs/webdataset.md and docs/ray.md runs, as written, on real shards.

The harness (``tests/doc_snippets.py``) finds each fenced ```python block and each shell block that
runs ``torch-dedup``, ``python`` or ``ray``, substitutes the placeholders of the explicit tables below
(and nothing else), runs it, then checks what it produced. A snippet that raises fails its test with
the doc's name and line, and the snippet's first line.

How each doc runs:

* **docs/webdataset.md: one sequence.** Its snippets build on each other (``urls`` and ``plan`` of
  the first are used by the pipeline snippets), so they run in doc order in one namespace, in a temp
  folder holding ``shards/shard-000000.tar`` ... written by ``make_demo_shards``; the relative paths
  of the doc (``shards/dedup.tdplan``, ``shards-dedup/``) land there. Running one snippet's test alone
  runs the ones before it first. The names the doc leaves to the reader (``world_size``,
  ``num_workers``, ``shard_descriptors``) come from ``WDS_CONTEXT``. The pipeline snippets run here in
  one process; ``tests/test_wds_ddp.py`` runs them on 2 ranks x 2 DataLoader workers (checked below).
* **docs/ray.md: independent snippets** against one local two-node Ray cluster that the doc's own
  ``ray start`` lines start (head, then a worker node joining ``HEAD_IP``), each ``--block`` in its own
  process group and private temp folder, stopped by process group at the end (never ``ray stop``,
  which would stop every Ray of this user on the machine). ``ray_address="auto"`` / ``--ray-address
  auto`` find it through ``RAY_ADDRESS`` (what "auto" reads first), since the private temp folder keeps
  the machine's shared ``/tmp/ray`` record untouched. Each snippet starts with no sidecars and no plan.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from doc_snippets import (
    LocalRayCluster,
    SnippetFailed,
    Substitutions,
    fences,
    free_port,
    run_python,
    run_python_subprocess,
    run_shell,
    shell_commands,
    snippets,
)
from PIL import Image

from torch_dedup.wds import ShardPlan, plan_shards
from torch_dedup.wds.synthetic import make_demo_shards

ROOT = Path(__file__).resolve().parents[1]
WDS_DOC = ROOT / "docs" / "webdataset.md"
RAY_DOC = ROOT / "docs" / "ray.md"
DDP_TEST = ROOT / "tests" / "test_wds_ddp.py"

# ---------------------------------------------------------------------------------------------------
# The explicit tables. A snippet added to a doc must be added here (the meta-tests fail otherwise).

# Every snippet of each doc, in order: (text that identifies it, how it is executed).
SNIPPETS = {
    WDS_DOC: [
        ("from torch_dedup.wds import dedup_filter, plan_shards", "run here"),
        ("torch-dedup wds rewrite --plan", "run here (3 commands)"),
        ("wds.DataPipeline(", "run here in one process; 2 ranks x 2 workers in tests/test_wds_ddp.py"),
        ("plan.split_kept_counts(world_size, num_workers)",
         "run here in one process; 2 ranks x 2 workers in tests/test_wds_ddp.py"),
        ("wids.ShardListDataset(shard_descriptors)", "run here"),
    ],
    RAY_DOC: [
        ('engine="ray",', "run here (fresh interpreter, local 2-node cluster)"),
        ("ray start --head --port=6379", "run here (ray start lines by the cluster fixture)"),
    ],
}
# Snippets run by another test file instead of this one: {doc: {identifying text: test file}}.
COVERED_ELSEWHERE: dict[Path, dict[str, str]] = {WDS_DOC: {}, RAY_DOC: {}}
# Snippets that test_wds_ddp.py must also run on 2 ranks x 2 workers (the doc says it does).
MULTI_RANK = ["wds.DataPipeline(", "plan.split_kept_counts(world_size, num_workers)"]
# Fenced blocks that are not snippets (run no command), with the reason and what checks them instead.
NOT_SNIPPETS = {
    RAY_DOC: {"pip install 'torch_dedup[ray]'":
              "installs packages; test_ray_install_line_names_the_extra checks the extra exists"},
    WDS_DOC: {},
}

N_SHARDS = 12
WDS_SUBST = {  # placeholder in docs/webdataset.md -> what the harness runs (relative to the temp folder)
    "shards/shard-{000000..000099}.tar": f"shards/shard-{{000000..{N_SHARDS - 1:06d}}}.tar",
}
WDS_CONTEXT_NAMES = ("world_size", "num_workers", "shard_descriptors")  # names the doc leaves to the reader
RAY_SHARDS = 4
# docs/ray.md's placeholders; values marked <...> are filled in by the fixture.
RAY_SUBST_KEYS = ("/mnt/shared/laion/shard-{000000..099999}.tar", "/mnt/shared/laion-sidecars",
                  "/mnt/shared/laion.tdplan", "--port=6379", "HEAD_IP:6379", "--num-cpus=64")
# text that must never reach a command: each doc's placeholder markers
LEFTOVER_MARKERS = {WDS_DOC: ["{000000..000099}"],
                    RAY_DOC: ["/mnt/shared", "HEAD_IP", "099999", "--port=6379", "--num-cpus=64"]}


def _one(doc: Path, needle: str):
    found = [s for s in snippets(doc) if needle in s.code]
    assert len(found) == 1, f"{len(found)} snippets of {doc.name} contain {needle!r}: {[s.where for s in found]}"
    return found[0]


def _torch_dedup_warnings(seen) -> list[str]:
    return [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in seen
            if f"{os.sep}torch_dedup{os.sep}" in w.filename]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def _samples_in(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()))


# ---------------------------------------------------------------------------------------------------
# Meta-tests: every fenced block is classified; found == executed + covered elsewhere.

@pytest.mark.parametrize("doc", [WDS_DOC, RAY_DOC], ids=lambda d: d.name)
def test_every_snippet_is_executed_or_listed_as_covered(doc):
    found = snippets(doc)
    table = SNIPPETS[doc]
    # each table entry names exactly one snippet, in doc order, and each snippet is named once
    named = [_one(doc, needle) for needle, _ in table]
    assert [s.line for s in named] == [s.line for s in found], (
        f"{doc.name}: snippets found at lines {[s.where for s in found]}, the table names "
        f"{[s.where for s in named]}: add the new snippet to SNIPPETS (and run it)")
    covered = {_one(doc, needle).line for needle in COVERED_ELSEWHERE[doc]}
    executed = {s.line for s in found} - covered
    assert len(found) == len(executed) + len(covered)
    assert {s.line for s in found} == {s.line for s in _executed_here(doc)} | covered


@pytest.mark.parametrize("doc", [WDS_DOC, RAY_DOC], ids=lambda d: d.name)
def test_every_other_fence_is_listed_with_a_reason(doc):
    others = [f for f in fences(doc) if f.kind is None]
    listed = NOT_SNIPPETS[doc]
    for needle in listed:
        assert sum(needle in f.code for f in others) == 1, f"{needle!r} names no non-snippet block of {doc.name}"
    for f in others:
        assert any(needle in f.code for needle in listed), f"{f.describe()} is neither run nor listed in NOT_SNIPPETS"


def test_covered_elsewhere_snippets_are_referenced_by_their_test():
    for doc, entries in COVERED_ELSEWHERE.items():
        for needle, test_file in entries.items():
            _one(doc, needle)
            assert needle in (ROOT / test_file).read_text(), f"{test_file} does not reference {needle!r}"


def test_the_multi_rank_snippets_are_the_ones_test_wds_ddp_runs():
    """test_wds_ddp.py reads its snippets from docs/webdataset.md with ``doc_snippet(needle)``: those
    needles must name exactly the MULTI_RANK snippets (the doc says they run on 2 ranks x 2 workers)."""
    needles = re.findall(r'doc_snippet\("([^"]+)"\)', DDP_TEST.read_text())
    assert needles, f"{DDP_TEST.name} no longer reads snippets from the doc"
    assert {_one(WDS_DOC, n).line for n in needles} == {_one(WDS_DOC, n).line for n in MULTI_RANK}
    assert "webdataset.md" in DDP_TEST.read_text()


def test_substitution_tables_name_text_in_the_docs():
    """A stale placeholder (no longer in the doc) fails here instead of silently substituting nothing."""
    for doc, keys in ((WDS_DOC, WDS_SUBST), (RAY_DOC, RAY_SUBST_KEYS)):
        code = "\n".join(s.code for s in snippets(doc))
        for key in keys:
            assert key in code, f"placeholder {key!r} is in no snippet of {doc.name}"


def test_shell_blocks_split_into_the_commands_shown():
    got = [argv[:3] for _, argv in shell_commands(_one(RAY_DOC, "ray start --head").code)]
    assert got == [["ray", "start", "--head"], ["ray", "start", "--address=HEAD_IP:6379"],
                   ["torch-dedup", "wds", "hash"], ["torch-dedup", "wds", "plan"]]


def test_ray_install_line_names_the_extra():
    """The not-run ``pip install 'torch_dedup[ray]'`` line: the extra exists and requires ray, and it
    is the command the Ray engine's missing-ray message names."""
    from torch_dedup.engines import ray as engine

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("ray") for req in extras["ray"])
    assert "pip install 'torch_dedup[ray]'" in engine._EXTRA


def _executed_here(doc: Path):
    return [s for s in snippets(doc)
            if not any(needle in s.code for needle in COVERED_ELSEWHERE[doc])]


# ---------------------------------------------------------------------------------------------------
# docs/webdataset.md: the doc's sequence on 12 generated shards.

class WdsSession:
    """The namespace and temp folder the doc's snippets share, run in order (and at most once each)."""

    def __init__(self, root: Path, shards: list[str], min_removed: int = 1):
        self.root = root
        self.shards = shards
        self.min_removed = min_removed  # the planted copies the plan must drop, at least
        self.subst = Substitutions(WDS_SUBST)
        self.ns: dict = {"__name__": "__doc_snippet__"}
        self.ns.update(world_size=1, num_workers=1,  # this process is the only rank and worker
                       # a user's wids descriptors: the shards in plan order, counted from the tars
                       shard_descriptors=[{"url": f"shards/{Path(u).name}", "nsamples": len(_samples_in(Path(u)))}
                                          for u in self.shards])
        assert set(WDS_CONTEXT_NAMES) <= set(self.ns)
        self.done: dict[int, str | None] = {}  # snippet line -> None (ran) or why it failed
        self.order = snippets(WDS_DOC)

    def run_upto(self, line: int) -> None:
        for s in self.order:
            if s.line in self.done:
                if self.done[s.line] is not None:
                    pytest.fail(f"{s.describe()} failed earlier, so the doc's sequence stops there:\n"
                                f"{self.done[s.line]}" if s.line != line else self.done[s.line], pytrace=False)
            else:
                self.done[s.line] = "interrupted"
                try:
                    with _chdir(self.root), _private_wids_cache(self.root / "wids-cache"):
                        self._run(s)
                except BaseException as exc:
                    self.done[s.line] = str(exc)
                    raise
                self.done[s.line] = None
            if s.line == line:
                return

    def _run(self, s) -> None:
        code = self.subst(s.code)
        for marker in LEFTOVER_MARKERS[WDS_DOC]:
            assert marker not in code, f"{s.where}: placeholder {marker!r} left after substitution"
        if s.kind == "python":
            seen = run_python(s, code, self.ns)
        else:
            run_shell(s, self.subst, cwd=self.root, env=_env(), timeout=120)
            seen = []
        assert not _torch_dedup_warnings(seen), f"{s.describe()} warned: {_torch_dedup_warnings(seen)}"
        check = next((fn for needle, fn in WDS_CHECKS.items() if needle in s.code), None)
        assert check is not None, f"{s.describe()}: no check in WDS_CHECKS"
        check(self)


@contextlib.contextmanager
def _chdir(path: Path):
    """contextlib.chdir, which Python 3.10 lacks."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _private_wids_cache(path: Path):
    """wids copies shards into a cache named after the URL (default ``/tmp/_wids_cache``, shared by
    every run on the machine): ``shards/shard-000000.tar`` of another folder would be served from it."""
    old = os.environ.get("WIDS_CACHE")
    os.environ["WIDS_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("WIDS_CACHE", None)
        else:
            os.environ["WIDS_CACHE"] = old


def _check_quickstart(sess: WdsSession) -> None:
    plan = sess.ns["plan"]
    assert Path("shards/dedup.tdplan").is_file() and plan.n_removed >= sess.min_removed > 0
    assert len(plan.shards) == N_SHARDS
    assert plan.n == sum(d["nsamples"] for d in sess.ns["shard_descriptors"])
    items = list(sess.ns["ds"])
    assert len(items) == plan.n_kept  # the filter passes exactly the kept samples
    assert all(isinstance(img, Image.Image) and isinstance(cls, int) for img, cls in items)  # decoded


def _check_pipeline(sess: WdsSession) -> None:
    plan = sess.ns["plan"]
    batches = list(sess.ns["pipe"])
    assert sum(len(b[0]) for b in batches) == plan.n_kept and len(batches[0][0]) == 64


def _check_equal_counts(sess: WdsSession) -> None:
    counts = sess.ns["counts"]
    assert counts.shape == (1, 1) and int(counts.min()) == sess.ns["plan"].n_kept >= 64
    batches = list(sess.ns["pipe"])
    assert len(batches) == int(counts.min()) // 64 and {len(b[0]) for b in batches} == {64}


def _check_wids(sess: WdsSession) -> None:
    plan, ds, sampler = sess.ns["plan"], sess.ns["ds"], sess.ns["sampler"]
    kept = plan.as_dedup_plan().kept_indices.tolist()
    assert len(ds) == plan.n and sorted(sampler) == kept
    for i in kept[::7]:
        assert ds[i]["__key__"] == plan.sample(i)[1]


def _check_cli(sess: WdsSession) -> None:
    plan = ShardPlan.load("shards/dedup.tdplan")
    assert plan.n_kept == sess.ns["plan"].n_kept and list(plan.kept()) == list(sess.ns["plan"].kept())
    out = sorted(Path("shards-dedup").glob("*.tar"))
    assert out and sum(len(_samples_in(p)) for p in out) == plan.n_kept


WDS_CHECKS = {  # identifying text -> what the snippet must have produced (run in the temp folder)
    "from torch_dedup.wds import dedup_filter, plan_shards": _check_quickstart,
    "torch-dedup wds rewrite --plan": _check_cli,
    "wds.DataPipeline(": _check_pipeline,
    "plan.split_kept_counts(world_size, num_workers)": _check_equal_counts,
    "wids.ShardListDataset(shard_descriptors)": _check_wids,
}


def _cifar_shards(out: Path, cifar: Path, per_shard: int = 110, planted: int = 10) -> list[str]:
    """N_SHARDS shards of CIFAR-10 test JPEGs (``jpg`` + ``cls``), each with ``planted`` byte-exact
    copies (new keys) of images of earlier shards or earlier in the shard."""
    import webdataset as wds

    classes = sorted(p.name for p in (cifar / "test").iterdir())
    paths = sorted((cifar / "test").rglob("*.jpg"))[::7][:N_SHARDS * (per_shard - planted)]
    rng = np.random.default_rng(3)
    out.mkdir(parents=True)
    written: list[tuple[bytes, int]] = []
    urls, it = [], iter(paths)
    for s in range(N_SHARDS):
        url = out / f"shard-{s:06d}.tar"
        with wds.TarWriter(str(url), encoder=False) as sink:
            for k in range(per_shard):
                if k % (per_shard // planted) == per_shard // planted - 1 and written:
                    data, cls = written[int(rng.integers(len(written)))]
                else:
                    p = next(it)
                    data, cls = p.read_bytes(), classes.index(p.parent.name)
                    written.append((data, cls))
                sink.write({"__key__": f"{k:06d}", "jpg": data, "cls": str(cls).encode()})
        urls.append(str(url))
    return urls


@pytest.fixture(scope="module", params=["synthetic", pytest.param("cifar10", marks=pytest.mark.slow)])
def wds_session(request, tmp_path_factory):
    """The doc's sequence on generated shards, and (slow, skipped without the shared data) on CIFAR-10
    JPEGs with planted exact copies."""
    pytest.importorskip("webdataset")
    root = tmp_path_factory.mktemp(f"webdataset_md_{request.param}")
    if request.param == "synthetic":
        shards = make_demo_shards(root / "shards", n_shards=N_SHARDS, per_shard=24, dup_fraction=0.3, size=32,
                                  seed=7)
    else:
        shards = _cifar_shards(root / "shards", request.getfixturevalue("cifar10_jpg"))
        return WdsSession(root, shards, min_removed=N_SHARDS * 10)  # 10 planted copies per shard
    return WdsSession(root, shards)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("line", [s.line for s in _executed_here(WDS_DOC)],
                         ids=[s.where for s in _executed_here(WDS_DOC)])
def test_webdataset_md_snippet(wds_session, line):
    if "wids" in _by_line(WDS_DOC, line).code:
        pytest.importorskip("wids")
    wds_session.run_upto(line)


def _by_line(doc: Path, line: int):
    return next(s for s in snippets(doc) if s.line == line)


# ---------------------------------------------------------------------------------------------------
# docs/ray.md: a local two-node cluster started by the doc's own `ray start` lines.

def _is_ray_start(argv: list[str]) -> bool:
    return argv[:2] == ["ray", "start"]


@pytest.fixture(scope="module")
def ray_doc(tmp_path_factory):
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("ray_md")
    urls = make_demo_shards(root / "laion", n_shards=RAY_SHARDS, per_shard=20, dup_fraction=0.3, size=32, seed=5)
    local = plan_shards(urls, 6, workers=0, progress=False, sidecar_dir=root / "local-sidecars")
    # Ray's unix sockets live under the temp folder: keep its path short
    ray_tmp = Path(tempfile.mkdtemp(prefix="tdray", dir="/tmp"))
    node_env = _env(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    node_env.pop("RAY_ADDRESS", None)
    cluster = LocalRayCluster(ray_tmp, node_env)
    port = free_port()
    subst = Substitutions({
        "/mnt/shared/laion/shard-{000000..099999}.tar": f"{root}/laion/shard-{{000000..{RAY_SHARDS - 1:06d}}}.tar",
        "/mnt/shared/laion-sidecars": f"{root}/laion-sidecars",
        "/mnt/shared/laion.tdplan": f"{root}/laion.tdplan",
        "--port=6379": f"--port={port}",
        "HEAD_IP:6379": lambda: cluster.address,
        "--num-cpus=64": "--num-cpus=2",  # 64 would prestart 64 Python workers on this small machine
    })
    assert set(subst.table) == set(RAY_SUBST_KEYS)
    block = _one(RAY_DOC, "ray start --head")
    try:
        # the doc's `ray start` lines (head, then the worker node), as the cluster for every snippet
        run_shell(block, subst, cwd=root, env=node_env, handlers={"ray start": cluster.ray_start},
                  skip=lambda argv: not _is_ray_start(argv))
        assert cluster.wait_for_nodes(2), f"the worker node did not join the head:\n{cluster.last_status}"
        yield {"root": root, "urls": urls, "local": local, "cluster": cluster, "subst": subst,
               "env": _env(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_ADDRESS=cluster.address)}
    finally:
        cluster.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _check_ray_outputs(doc_env: dict) -> None:
    root, local = doc_env["root"], doc_env["local"]
    sidecars = list((root / "laion-sidecars").iterdir())
    assert len(sidecars) == RAY_SHARDS, sidecars
    plan = ShardPlan.load(root / "laion.tdplan")
    assert plan.n == local.n and list(plan.kept()) == list(local.kept()) and plan.n_removed == local.n_removed > 0
    np.testing.assert_array_equal(plan.hashes, local.hashes)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("line", [s.line for s in _executed_here(RAY_DOC)],
                         ids=[s.where for s in _executed_here(RAY_DOC)])
def test_ray_md_snippet(ray_doc, line):
    s = _by_line(RAY_DOC, line)
    root, subst, env = ray_doc["root"], ray_doc["subst"], ray_doc["env"]
    for stale in (root / "laion-sidecars", root / "laion.tdplan"):  # each snippet starts from nothing
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    code = subst(s.code)
    if s.kind == "python":
        for marker in LEFTOVER_MARKERS[RAY_DOC]:
            assert marker not in code, f"{s.where}: placeholder {marker!r} left after substitution"
        res = run_python_subprocess(s, code, cwd=root, env=env, timeout=90, log_info=["torch_dedup"])
        # "auto" joined the test's cluster (through RAY_ADDRESS), not a new local one
        assert f"using {ray_doc['cluster'].address} (from RAY_ADDRESS)" in res.stderr, res.stderr[-3000:]
    else:
        # the `ray start` lines of this block are the ones the fixture ran
        starts = [argv for _, argv in shell_commands(subst(s.code)) if _is_ray_start(argv)]
        assert starts == ray_doc["cluster"].commands
        for marker in LEFTOVER_MARKERS[RAY_DOC]:
            assert marker not in code, f"{s.where}: placeholder {marker!r} left after substitution"
        run_shell(s, subst, cwd=root, env=env, timeout=90, skip=_is_ray_start)
    _check_ray_outputs(ray_doc)


def test_harness_names_the_doc_line_of_a_failing_snippet(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n```python\nx = 1\nraise ValueError('boom')\n```\n\n```bash\ntorch-dedup --no-such-flag\n```\n")
    py, sh = snippets(doc)
    with pytest.raises(SnippetFailed) as err:
        run_python(py, py.code, {})
    assert "doc.md:4" in str(err.value) and "'x = 1'" in str(err.value)
    assert f'File "{doc}", line 5' in str(err.value) and "boom" in str(err.value)
    with pytest.raises(SnippetFailed, match=r"(?s)doc\.md:9 .*'torch-dedup --no-such-flag'.*status 2"):
        run_shell(sh, Substitutions({}), cwd=tmp_path, env=_env())
