"""Import-direction checker for torch_dedup: layers, cycles, privacy, optional dependencies.

`check(root, layers)` parses every ``.py`` module under a package folder with :mod:`ast`
(so docstrings and doctests never count), resolves every import — module level or inside
a function, absolute or relative — and returns the violations as readable strings.
It knows nothing of torch_dedup beyond the data below, so the tests can run it on small
synthetic packages too. Rules (the tag in brackets starts each message):

- [unlisted] every module has a layer in LAYERS;
- [upward] a module imports modules of its own layer or lower only;
- [cycle] no import cycles (an ``__init__`` importing its own submodules is no cycle by itself);
- [private] a private module (a path part starting with "_") or a private name is imported
  only from its own folder; the top-level SHARED_PRIVATE modules are open to every module;
- [cli] only modules under cli/ import the CLI;
- [third-party] torch, webdataset, ray and numba only where THIRD_PARTY allows;
- [unresolved] an import of a torch_dedup module that does not exist; [syntax] a file that
  does not parse.

`import a.b.c` is an edge to a.b.c only (not to the a and a.b that Python also runs), and
importing a package means its ``__init__``.

Keep :data:`LAYERS` in step with the layer table in docs/architecture.md.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

# Module path relative to the package folder -> layer. An entry ending in "/" covers every
# module under that folder unless a more specific entry exists; the most specific wins
# (a file entry beats any folder entry, a longer folder beats a shorter one).
# Entries for files that do not exist (yet, or any more) are harmless.
LAYERS: dict[str, int] = {
    # 0: no torch_dedup imports at all
    "errors.py": 0,
    "_checks.py": 0,
    # 1: kernels and hashing (numpy, numba, PIL, imagehash)
    "_numba.py": 1,
    "_store.py": 1,
    "embedded.py": 1,
    "hashing/": 1,
    "hamming/_kernels.py": 1,
    "hamming/_cluster_kernels.py": 1,
    # 2: sidecars, plans, search and clustering
    "sidecar.py": 2,
    "plan.py": 2,
    "options.py": 2,
    "hamming/search.py": 2,
    "hamming/cluster.py": 2,
    "hamming/sweep.py": 2,
    "hamming/streaming.py": 2,
    "hamming/block_index.py": 2,
    "hamming/_search_io.py": 2,
    "hamming/_key_graph.py": 2,
    "hamming/views.py": 2,
    "hamming/__init__.py": 2,
    # 3: datasets -> images, hashes, plans (torch only where needed)
    "sources.py": 3,
    "image_source.py": 3,
    "source_wrappers.py": 3,
    "dataset_hashes.py": 3,
    "dataset_fits.py": 3,
    "embedding.py": 3,
    "fused_hashes.py": 3,
    "dataset_views.py": 3,
    "model_embeddings.py": 3,
    "distributed_hashing.py": 3,
    "planning.py": 3,
    "hf_datasets.py": 3,  # Hugging Face datasets (imported lazily, here only)
    "distributed.py": 3,  # deprecated alias
    "index.py": 3,  # deprecated alias
    "sample.py": 3,  # deprecated alias
    # 4: consumers of a DedupPlan
    "sampler.py": 4,
    "dataset.py": 4,
    "wds/": 4,
    "engines/": 4,
    # 5: the front doors
    "cli/": 5,
    "report.py": 5,
    "demo.py": 5,
    "__init__.py": 5,
}

# Top-level private modules that are shared infrastructure of the whole package: any module,
# in any subpackage, may import them although their names start with "_". Private *names*
# inside them stay private to their own folder.
SHARED_PRIVATE: frozenset[str] = frozenset({"_store.py", "_numba.py", "_checks.py"})

# The one subpackage folder that may import the command line (relative to the package folder).
CLI_FOLDER = "cli/"

# Where third-party packages may be imported: top-level import name -> (kind, argument).
#   ("min_layer", n): only in modules of layer n or above
#   ("under", "folder/"): only in modules under that folder
#   ("file_glob", (patterns...)): only in modules whose file name matches one of the patterns
THIRD_PARTY: dict[str, tuple[str, object]] = {
    "torch": ("min_layer", 3),
    "torchvision": ("min_layer", 3),
    "webdataset": ("under", "wds/"),
    "ray": ("under", "engines/"),
    "numba": ("file_glob", ("_numba.py", "_*kernels*.py")),
    "datasets": ("file_glob", ("hf_datasets.py",)),
    # the training frameworks are recognised by their class names, never imported by the library
    "lightning": ("file_glob", ()),
    "pytorch_lightning": ("file_glob", ()),
    "accelerate": ("file_glob", ()),
    "wids": ("file_glob", ()),
}

TABLE_FILES = "tests/layering.py (LAYERS) and the layer table in docs/architecture.md"


@dataclass(frozen=True, order=True)
class Violation:
    """One broken rule, at one import statement."""

    path: str  # file, relative to the folder above the package (e.g. "torch_dedup/plan.py")
    line: int
    rule: str  # unlisted | unresolved | upward | cycle | private | cli | third-party | syntax
    imported: str  # the module (or module.name) the statement imports; "" when none
    message: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "torch_dedup.hamming.search"; a package is named by its folder
    rel: str  # path relative to the package folder, e.g. "hamming/search.py"
    shown: str  # path shown in messages, e.g. "torch_dedup/hamming/search.py"
    is_package: bool  # an __init__.py

    @property
    def folder(self) -> str:
        """The folder the module lives in, relative to the package folder ("" at the top)."""
        parent = self.rel.rpartition("/")[0]
        return f"{parent}/" if parent else ""


@dataclass(frozen=True)
class Import:
    """One import edge as written in the source."""

    line: int
    target: str | None  # internal module it resolves to; None for third-party or unresolved
    name: str | None = None  # the attribute imported from `target` (from m import name), if not a submodule
    external: str | None = None  # top-level third-party name, e.g. "torch"
    written: str = ""  # the imported module as resolved, for messages


# --- table lookup -----------------------------------------------------------------------


def layer_of(rel: str, layers: dict[str, int]) -> int | None:
    """Layer of the module at `rel` (relative path) by the most specific table entry, or None."""
    if rel in layers:
        return layers[rel]
    best: tuple[int, int] | None = None
    for entry, layer in layers.items():
        folder = entry if entry.endswith("/") else (None if entry.endswith(".py") else entry + "/")
        if folder and rel.startswith(folder) and (best is None or len(folder) > best[0]):
            best = (len(folder), layer)
    return best[1] if best else None


# --- resolving imports ------------------------------------------------------------------


def resolve_base(current: str, is_package: bool, level: int, module: str | None) -> str | None:
    """Absolute dotted name of what `from <level dots><module> import ...` imports from.

    `current` is the importing module's dotted name; in a package's ``__init__`` (where
    `is_package`) one dot means the package itself, elsewhere the module's parent package.
    Returns None when the dots climb above the top-level package.
    """
    if level == 0:
        return module
    parts = current.split(".") if is_package else current.split(".")[:-1]
    up = level - 1
    if up >= len(parts):
        return None
    base = parts[: len(parts) - up]
    return ".".join(base + ([module] if module else []))


def from_targets(base: str, names: list[str], modules: set[str]) -> list[tuple[str, str | None]]:
    """What `from base import names` binds: (module, None) for each name that is a submodule
    of `base`, (base, name) for each name that is an attribute of `base` itself."""
    out = []
    for name in names:
        sub = f"{base}.{name}"
        if name != "*" and sub in modules:
            out.append((sub, None))
        else:
            out.append((base, None if name == "*" else name))
    return out


def _imports_of(tree: ast.AST, mod: Module, root_name: str, modules: set[str]) -> list[Import]:
    found: list[Import] = []

    def absolute(dotted: str, line: int) -> None:
        top = dotted.split(".")[0]
        if top != root_name:
            found.append(Import(line, None, external=top, written=dotted))
        else:
            # `import a.b.c` also runs a and a.b; the edge that matters is to a.b.c itself
            found.append(Import(line, dotted if dotted in modules else None, written=dotted))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                absolute(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_base(mod.name, mod.is_package, node.level, node.module)
            shown = "." * node.level + (node.module or "")
            if base is None:
                found.append(Import(node.lineno, None, written=shown))
                continue
            if base.split(".")[0] != root_name:
                if node.level == 0:
                    found.append(Import(node.lineno, None, external=base.split(".")[0], written=base))
                else:
                    found.append(Import(node.lineno, None, written=shown))
                continue
            if base not in modules:
                found.append(Import(node.lineno, None, written=base))
                continue
            for target, name in from_targets(base, [a.name for a in node.names], modules):
                found.append(Import(node.lineno, target, name, written=target if name is None else f"{target}.{name}"))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")
              and (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")
                   or isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            # importlib.import_module("pkg.mod") with a literal name is an import too
            absolute(node.args[0].value, node.lineno)
    return found


# --- the checker ------------------------------------------------------------------------


def _discover(root: Path) -> dict[str, Module]:
    root_name = root.name
    mods: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel.split("/"):
            continue
        parts = rel[:-3].split("/")
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join([root_name, *parts])
        mods[name] = Module(name, rel, f"{root_name}/{rel}", is_package)
    return mods


def _is_private(component: str) -> bool:
    return component.startswith("_") and not (component.startswith("__") and component.endswith("__"))


def _private_module_problem(src: Module, dst: Module) -> str | None:
    """Why importing `dst` from `src` breaks privacy, or None when it is fine."""
    if dst.rel in SHARED_PRIVATE:
        return None  # shared infrastructure, see SHARED_PRIVATE
    parts = dst.rel[:-3].split("/")
    for i, part in enumerate(parts):
        if _is_private(part):
            owner = "/".join(parts[:i])
            owner = f"{owner}/" if owner else ""
            if src.folder != owner:
                return (f"{src.name} imports private module {dst.name} from outside its folder "
                        f"{owner or '(top level)'}; import a public name instead (re-export it)")
            return None
    return None


def _third_party_problem(src: Module, layer: int | None, top: str) -> str | None:
    rule = THIRD_PARTY.get(top)
    if rule is None:
        return None
    kind, arg = rule
    if kind == "min_layer":
        if layer is not None and layer < arg:
            return f"{src.name} (layer {layer}) imports {top}, which is allowed only in layers >= {arg}"
    elif kind == "under":
        if not src.rel.startswith(arg):
            return f"{src.name} imports {top}, which is allowed only under {arg}"
    elif kind == "file_glob":
        if not any(fnmatch.fnmatch(src.rel.rpartition("/")[2], pat) for pat in arg):
            return f"{src.name} imports {top}, which is allowed only in modules named {' or '.join(arg)}"
    else:  # pragma: no cover - a typo in THIRD_PARTY
        raise ValueError(f"unknown third-party rule {kind!r} for {top!r}")
    return None


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import), each as one
    concrete cycle starting at its smallest module name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # recursion depth is bounded by the module count
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, {}):
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sorted(sccs):
        members = set(comp)
        start = comp[0]
        # shortest path back to start inside the component (BFS)
        prev: dict[str, str] = {}
        queue = [start]
        seen = {start}
        end = None
        while queue and end is None:
            nxt = []
            for v in queue:
                for w in sorted(edges.get(v, {})):
                    if w == start:
                        end = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            queue = nxt
        path = [end]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append(list(reversed(path)))
    return cycles


def check(root: Path, layers: dict[str, int] = LAYERS) -> list[str]:
    """Every rule broken by the package in folder `root`, as sorted readable strings."""
    return [str(v) for v in check_violations(root, layers)]


def check_violations(root: Path, layers: dict[str, int] = LAYERS) -> list[Violation]:
    """Every rule broken by the package in folder `root` (see the module docstring)."""
    root = Path(root)
    root_name = root.name
    mods = _discover(root)
    names = set(mods)
    out: list[Violation] = []
    layer = {name: layer_of(m.rel, layers) for name, m in mods.items()}
    edges: dict[str, dict[str, int]] = {name: {} for name in mods}  # src -> dst -> first line

    for name, mod in mods.items():
        def report(line: int, rule: str, imported: str, message: str, mod: Module = mod) -> None:
            out.append(Violation(mod.shown, line, rule, imported, message))

        if layer[name] is None:
            report(1, "unlisted", "", f"{name} has no layer: add {mod.rel!r} to {TABLE_FILES}")
        try:
            tree = ast.parse((root / mod.rel).read_text(encoding="utf-8"), filename=mod.shown)
        except SyntaxError as exc:
            report(exc.lineno or 1, "syntax", "", f"{name} does not parse: {exc.msg}")
            continue

        for imp in _imports_of(tree, mod, root_name, names):
            if imp.external is not None:
                problem = _third_party_problem(mod, layer[name], imp.external)
                if problem:
                    report(imp.line, "third-party", imp.written, problem)
                continue
            if imp.target is None:
                report(imp.line, "unresolved", imp.written,
                       f"{name} imports {imp.written}, which is not a module of {root_name}")
                continue
            dst = mods[imp.target]
            if imp.target != name:  # a package __init__ importing a name of its own is no edge
                edges[name].setdefault(imp.target, imp.line)
            src_layer, dst_layer = layer[name], layer[imp.target]
            if src_layer is not None and dst_layer is not None and dst_layer > src_layer:
                report(imp.line, "upward", imp.written,
                       f"{name} (layer {src_layer}) imports {imp.target} (layer {dst_layer}); "
                       "imports must point down to the same or a lower layer")
            if dst.rel.startswith(CLI_FOLDER) and not mod.rel.startswith(CLI_FOLDER):
                report(imp.line, "cli", imp.written,
                       f"{name} imports {imp.target}; only modules under {CLI_FOLDER} may import the CLI")
            problem = _private_module_problem(mod, dst)
            if problem:
                report(imp.line, "private", imp.written, problem)
            elif imp.name is not None and _is_private(imp.name) and mod.folder != dst.folder:
                report(imp.line, "private", imp.written,
                       f"{name} imports private name {imp.name} from {imp.target} outside its folder "
                       f"{dst.folder or '(top level)'}; make it public or move the code")

    for cycle in _cycles(edges):
        first = mods[cycle[0]]
        second = cycle[1] if len(cycle) > 1 else cycle[0]
        loop = " -> ".join([*cycle, cycle[0]])
        out.append(Violation(first.shown, edges[cycle[0]][second], "cycle", second,
                             f"import cycle {loop} (lazy imports count); break it by moving "
                             "the shared code down a layer"))
    return sorted(out)
