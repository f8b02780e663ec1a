"""Imports point down the layers of docs/architecture.md, over every module of torch_dedup.

The checker lives in tests/layering.py (with the layer table); these tests run it on the
real package and on small synthetic packages that each break exactly one rule.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from layering import (
    LAYERS,
    Violation,
    check,
    check_violations,
    from_targets,
    layer_of,
    resolve_base,
)


def test_real_package_follows_the_layers():
    # found on disk, not imported: the check must work while the package does not import
    pkg = Path(__file__).resolve().parents[1] / "torch_dedup"
    assert (pkg / "__init__.py").is_file()
    violations = check(pkg, LAYERS)
    assert not violations, "import rules broken (see tests/layering.py):\n" + "\n".join(violations)


# --- synthetic packages -----------------------------------------------------------------

TABLE = {
    "errors.py": 0,
    "_store.py": 1,
    "core/": 1,
    "plan.py": 2,
    "search/": 2,
    "loader.py": 3,
    "sampler.py": 4,
    "wds/": 4,
    "engines/": 4,
    "cli/": 5,
    "report.py": 5,
    "__init__.py": 5,
}

# A clean package using every import form the checker must resolve.
BASE = {
    "__init__.py": "from .sampler import Sampler\nfrom .core import hash_it\n",
    "errors.py": "class Err(Exception):\n    pass\n",
    "_store.py": "from .errors import Err\n",
    "core/__init__.py": "from .api import hash_it\n",
    "core/api.py": '''\
        """Hashing.

        >>> import torch
        >>> from pkg import sampler
        >>> from pkg.cli import main
        """
        from . import _kernels
        from ._pack import pack
        from .._store import save


        def hash_it():
            import pkg.core._pack
            return pkg.core._pack.pack()
        ''',
    "core/_kernels.py": "import numba\n",
    "core/_pack.py": "def pack():\n    return 1\n",
    "plan.py": "from .core import hash_it\nfrom . import errors\nimport pkg.core.api\n",
    "search/__init__.py": "from .pairs import pairs\n",
    "search/pairs.py": "from .. import plan\nfrom ._masks import masks, _inner\n\n\ndef pairs():\n    return masks()\n",
    "search/_masks.py": "_inner = 1\n\n\ndef masks():\n    return _inner\n",
    "loader.py": "import torch\nfrom .search import pairs\n",
    "sampler.py": "import torch.utils.data\nfrom pkg.search.pairs import pairs\nfrom .loader import *\n",
    "wds/__init__.py": "def f():\n    import webdataset\n",
    "engines/__init__.py": "",
    "engines/run.py": "from .._store import save\n\n\ndef f():\n    import ray\n",
    "cli/__init__.py": "from . import _opts\nfrom ..report import write\n",
    "cli/_opts.py": "from .. import sampler\n",
    "report.py": "from .plan import hash_it\n\n\ndef write():\n    pass\n",
}


def make_pkg(root: Path, changes: dict[str, str | None] | None = None) -> Path:
    """BASE written under root/pkg, with `changes` (relative path -> source, or None to delete)."""
    files = {**BASE, **(changes or {})}
    pkg = root / "pkg"
    for rel, text in files.items():
        if text is not None:
            path = pkg / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
    return pkg


def only(root: Path, table: dict[str, int] = TABLE) -> Violation:
    found = check_violations(root, table)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def test_clean_synthetic_package_passes(tmp_path):
    assert check(make_pkg(tmp_path), TABLE) == []


def test_lazy_upward_import_inside_function(tmp_path):
    late = "from ..core import hash_it\n\n\ndef f():\n    from ..sampler import Sampler\n"
    root = make_pkg(tmp_path, {"search/late.py": late})
    v = only(root)
    assert (v.path, v.line, v.rule, v.imported) == ("pkg/search/late.py", 5, "upward", "pkg.sampler.Sampler")
    assert str(v).startswith("pkg/search/late.py:5: [upward] pkg.search.late (layer 2) imports pkg.sampler (layer 4)")


def test_upward_import_that_closes_a_cycle_reports_both(tmp_path):
    plan = "from .core import hash_it\n\n\ndef f():\n    from .sampler import Sampler\n"
    root = make_pkg(tmp_path, {"plan.py": plan})
    assert [(v.path, v.line, v.rule) for v in check_violations(root, TABLE)] == [
        ("pkg/loader.py", 2, "cycle"), ("pkg/plan.py", 5, "upward")]


@pytest.mark.parametrize("source, imported", [
    ("def f():\n    import pkg.sampler\n", "pkg.sampler"),
    ("def f():\n    from .. import sampler\n", "pkg.sampler"),
    ("def f():\n    from pkg import Sampler\n", "pkg.Sampler"),  # a name of the top __init__ (layer 5)
    ("def f():\n    import importlib\n    importlib.import_module('pkg.loader')\n", "pkg.loader"),
])
def test_upward_import_forms(tmp_path, source, imported):
    v = only(make_pkg(tmp_path, {"search/extra.py": source}))
    assert (v.path, v.rule, v.imported) == ("pkg/search/extra.py", "upward", imported)


def test_import_cycle_with_lazy_import(tmp_path):
    root = make_pkg(tmp_path, {"search/a.py": "from .b import g\n\n\ndef f():\n    return g()\n",
                               "search/b.py": "def g():\n    from .a import f\n    return f\n"})
    v = only(root)
    assert (v.path, v.line, v.rule) == ("pkg/search/a.py", 1, "cycle")
    assert "pkg.search.a -> pkg.search.b -> pkg.search.a" in v.message


def test_submodule_importing_its_own_package_init_is_a_cycle(tmp_path):
    v = only(make_pkg(tmp_path, {"search/pairs.py": "from . import plan_name\n\n\ndef pairs():\n    pass\n",
                                 "search/__init__.py": "from .pairs import pairs\nplan_name = 1\n"}))
    assert v.rule == "cycle" and "pkg.search -> pkg.search.pairs -> pkg.search" in v.message


def test_private_module_from_another_package(tmp_path):
    v = only(make_pkg(tmp_path, {"wds/x.py": "from ..core._pack import pack\n"}))
    assert (v.path, v.line, v.rule, v.imported) == ("pkg/wds/x.py", 1, "private", "pkg.core._pack.pack")
    assert "private module pkg.core._pack" in v.message


def test_private_submodule_via_from_dot_import(tmp_path):
    v = only(make_pkg(tmp_path, {"wds/x.py": "\ndef f():\n    from ..core import _kernels\n"}))
    assert (v.line, v.rule, v.imported) == (3, "private", "pkg.core._kernels")


def test_private_name_from_another_package(tmp_path):
    source = "from pkg.search.pairs import pairs\nfrom ..search.pairs import _inner\n"
    v = only(make_pkg(tmp_path, {"engines/y.py": source}))
    assert (v.path, v.line, v.rule, v.imported) == ("pkg/engines/y.py", 2, "private", "pkg.search.pairs._inner")
    assert "private name _inner" in v.message


def test_private_module_named_in_from_import(tmp_path):
    v = only(make_pkg(tmp_path, {"engines/y.py": "from ..search._masks import masks\n"}))
    assert (v.line, v.rule, v.imported) == (1, "private", "pkg.search._masks.masks")


def test_shared_top_level_private_modules_are_importable_everywhere(tmp_path):
    table = {**TABLE, "_checks.py": 0, "_numba.py": 1}
    shared = "from .._checks import X\nfrom pkg._numba import numba\nimport pkg._store\n"
    root = make_pkg(tmp_path, {"_checks.py": "X = 1\n", "_numba.py": "import numba\n", "wds/z.py": shared})
    assert check(root, table) == []


def test_library_module_importing_cli(tmp_path):
    # the top __init__ is layer 5 like the CLI, yet still may not import it
    v = only(make_pkg(tmp_path, {"__init__.py": BASE["__init__.py"] + "\n\ndef main():\n    import pkg.cli\n"}))
    assert (v.path, v.line, v.rule, v.imported) == ("pkg/__init__.py", 6, "cli", "pkg.cli")


def test_module_missing_from_table(tmp_path):
    v = only(make_pkg(tmp_path, {"extras.py": "from .errors import Err\n"}))
    assert (v.path, v.rule) == ("pkg/extras.py", "unlisted")
    assert "tests/layering.py" in v.message and "docs/architecture.md" in v.message


def test_import_of_a_module_that_does_not_exist(tmp_path):
    v = only(make_pkg(tmp_path, {"plan.py": "from .index import plan_dataset\n"}))
    assert (v.line, v.rule, v.imported) == (1, "unresolved", "pkg.index")


@pytest.mark.parametrize("rel, source, dep", [
    ("core/api2.py", "def f():\n    import torch\n", "torch"),
    ("plan.py", "from torchvision import transforms\n", "torchvision"),
    ("sampler.py", "import webdataset as wds\n", "webdataset"),
    ("wds/r.py", "import ray.data\n", "ray"),
    ("search/fast.py", "from numba import njit\n", "numba"),
])
def test_third_party_placement(tmp_path, rel, source, dep):
    v = only(make_pkg(tmp_path, {rel: source}))
    assert (v.path, v.rule) == (f"pkg/{rel}", "third-party")
    assert v.imported.split(".")[0] == dep and dep in v.message


def test_numba_allowed_in_private_kernel_modules(tmp_path):
    assert check(make_pkg(tmp_path, {"search/_cluster_kernels.py": "import numba\n"}), TABLE) == []


def test_docstrings_and_strings_do_not_count(tmp_path):
    src = '"""Layer 0.\n\n>>> import torch\n>>> from pkg.sampler import Sampler\n"""\nX = "import ray"\n'
    assert check(make_pkg(tmp_path, {"errors.py": src}), TABLE) == []


def test_syntax_error_is_reported(tmp_path):
    v = only(make_pkg(tmp_path, {"plan.py": "def f(:\n"}))
    assert (v.path, v.rule) == ("pkg/plan.py", "syntax")


# --- unit cases -------------------------------------------------------------------------


@pytest.mark.parametrize("current, is_package, level, module, expected", [
    ("torch_dedup.hamming.search", False, 1, None, "torch_dedup.hamming"),          # from . import _kernels
    ("torch_dedup.hamming.search", False, 1, "_kernels", "torch_dedup.hamming._kernels"),
    ("torch_dedup.hamming.search", False, 2, None, "torch_dedup"),                  # from .. import errors
    ("torch_dedup.hamming.search", False, 2, "hashing", "torch_dedup.hashing"),     # from ..hashing import x
    ("torch_dedup.hamming", True, 1, "search", "torch_dedup.hamming.search"),       # __init__: from .search import x
    ("torch_dedup.hamming", True, 1, None, "torch_dedup.hamming"),                  # __init__: from . import x
    ("torch_dedup.hamming", True, 2, "plan", "torch_dedup.plan"),                   # __init__: from ..plan import x
    ("torch_dedup", True, 1, "errors", "torch_dedup.errors"),                       # top __init__
    ("torch_dedup.sampler", False, 1, None, "torch_dedup"),
    ("torch_dedup.sampler", False, 0, "torch_dedup.plan", "torch_dedup.plan"),      # absolute
    ("torch_dedup.sampler", False, 2, None, None),                                  # above the top package
    ("torch_dedup", True, 2, None, None),
])
def test_resolve_base(current, is_package, level, module, expected):
    assert resolve_base(current, is_package, level, module) == expected


MODULES = {"torch_dedup", "torch_dedup.hamming", "torch_dedup.hamming._kernels", "torch_dedup.hamming.search",
           "torch_dedup.errors"}


@pytest.mark.parametrize("base, names, expected", [
    ("torch_dedup.hamming", ["_kernels"], [("torch_dedup.hamming._kernels", None)]),     # a submodule
    ("torch_dedup.hamming", ["hamming_pairs"], [("torch_dedup.hamming", "hamming_pairs")]),  # a name of __init__
    ("torch_dedup", ["errors", "hamming", "DedupPlan"],
     [("torch_dedup.errors", None), ("torch_dedup.hamming", None), ("torch_dedup", "DedupPlan")]),
    ("torch_dedup.hamming.search", ["_kernels"], [("torch_dedup.hamming.search", "_kernels")]),  # not a package
    ("torch_dedup.hamming", ["*"], [("torch_dedup.hamming", None)]),
])
def test_from_targets(base, names, expected):
    assert from_targets(base, names, MODULES) == expected


@pytest.mark.parametrize("rel, expected", [
    ("hashing/api.py", 1),            # folder entry
    ("hashing/sub/deep.py", 1),       # folder entry covers subfolders
    ("hamming/_kernels.py", 1),       # file entry
    ("hamming/search.py", 2),
    ("hamming/__init__.py", 2),
    ("hamming/new.py", None),         # no folder entry for hamming/: must be listed
    ("cli/__main__.py", 5),
    ("__init__.py", 5),
    ("brand_new.py", None),
])
def test_layer_of_real_table(rel, expected):
    assert layer_of(rel, LAYERS) == expected


def test_layer_of_most_specific_entry_wins():
    table = {"a/": 4, "a/b/": 2, "a/b/c.py": 1}
    assert [layer_of(r, table) for r in ("a/x.py", "a/b/x.py", "a/b/c.py", "a/b/__init__.py")] == [4, 2, 1, 2]
