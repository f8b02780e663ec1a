"""The package runs on the oldest numpy that pyproject.toml admits, not only on the one installed here.

``np.bitwise_count`` (numpy 2.0) once slipped into the components path and the Ray planner
while pyproject says ``numpy>=1.24``; on 1.24 it is an AttributeError at run time, in a
branch a quick test may never reach. A source scan catches it before any test has to.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

PKG = Path(importlib.import_module("torch_dedup").__file__).parent
PYPROJECT = PKG.parent / "pyproject.toml"

#: numpy attributes newer than 1.24, with the version that added them (or re-added: ``np.bool``,
#: ``np.long``). Popcounts go through ``torch_dedup.hamming.popcount64`` instead of the first.
NEWER_THAN_FLOOR = {
    "bitwise_count": (2, 0), "unique_all": (2, 0), "unique_counts": (2, 0), "unique_inverse": (2, 0),
    "unique_values": (2, 0), "concat": (2, 0), "isdtype": (2, 0), "permute_dims": (2, 0),
    "matrix_transpose": (2, 0), "vecdot": (2, 0), "astype": (2, 0), "cumulative_sum": (2, 0),
    "cumulative_prod": (2, 0), "long": (2, 0), "ulong": (2, 0), "bool": (2, 0), "trapezoid": (2, 0),
    "pow": (2, 0), "acos": (2, 0), "asin": (2, 0), "atan": (2, 0), "atan2": (2, 0), "acosh": (2, 0),
    "asinh": (2, 0), "atanh": (2, 0), "bitwise_left_shift": (2, 0), "bitwise_right_shift": (2, 0),
    "bitwise_invert": (2, 0), "unstack": (2, 1), "exceptions": (1, 25), "dtypes": (1, 25),
}


def _numpy_floor() -> tuple[int, int]:
    m = re.search(r'"numpy\s*>=\s*(\d+)\.(\d+)', PYPROJECT.read_text())
    assert m, f"no numpy>=X.Y requirement found in {PYPROJECT}"
    return int(m.group(1)), int(m.group(2))


def _sources() -> list[Path]:
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 20, files  # the scan sees the package, not an empty folder
    return files


def test_no_bitwise_count_anywhere_in_the_package():
    # plain text: also catches getattr(np, "bitwise_count") and aliases like `bc = np.bitwise_count`
    hits = [f"{p.relative_to(PKG.parent)}:{i}" for p in _sources()
            for i, line in enumerate(p.read_text().splitlines(), 1) if "bitwise_count" in line]
    assert not hits, f"np.bitwise_count needs numpy>=2.0, pyproject admits {_numpy_floor()}; use " \
                     f"torch_dedup.hamming.popcount64 (numpy 1.24+) at: {hits}"


def _newer_uses(tree: ast.AST, floor: tuple[int, int]) -> list[tuple[int, str]]:
    aliases = {"numpy"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if a.name == "numpy")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            name = node.attr
        elif isinstance(node, ast.ImportFrom) and node.module == "numpy":
            out.extend((node.lineno, a.name) for a in node.names if NEWER_THAN_FLOOR.get(a.name, (0, 0)) > floor)
            continue
        else:
            continue
        if NEWER_THAN_FLOOR.get(name, (0, 0)) > floor:
            out.append((node.lineno, name))
    return sorted(out)


def test_no_numpy_attribute_newer_than_the_floor():
    floor = _numpy_floor()
    if floor >= (2, 1):
        pytest.skip(f"pyproject requires numpy>={floor[0]}.{floor[1]}: every name in the list exists")
    hits = [f"{p.relative_to(PKG.parent)}:{line}: np.{name} (numpy {'.'.join(map(str, NEWER_THAN_FLOOR[name]))})"
            for p in _sources() for line, name in _newer_uses(ast.parse(p.read_text()), floor)]
    assert not hits, f"pyproject admits numpy>={floor[0]}.{floor[1]}, but the package uses newer names: {hits}"


def test_the_scan_sees_what_it_looks_for():
    src = "import numpy as xp\nfrom numpy import concat\nxp.bitwise_count(a)\nxp.bool_(1)\n"
    assert _newer_uses(ast.parse(src), (1, 24)) == [(2, "concat"), (3, "bitwise_count")]
    assert _newer_uses(ast.parse(src), (2, 0)) == []
