"""Imports run one way: ``schemas`` <- ``conditioning`` <- ``flows``.

Every import statement of the three packages is read from the source (``ast``), including those inside
functions (lazy imports), so a cycle cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: A package may import the packages at or below its own rank, never one above.
RANK = {"schemas": 0, "conditioning": 1, "flows": 2}


def imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``tree`` that names one of the layered packages."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in RANK]
    return found


def upward_imports(root: Path = REPO) -> list[str]:
    bad = []
    for package, rank in RANK.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, target in imported_packages(ast.parse(path.read_text(), str(path))):
                if RANK[target] > rank:
                    bad.append(f"{path.relative_to(root)}:{line} imports {target} (a {package} module may not)")
    return bad


def test_imports_run_one_way():
    assert upward_imports() == []


def test_an_upward_import_is_found_even_inside_a_function(tmp_path: Path):
    for package in RANK:
        (tmp_path / package).mkdir()
    (tmp_path / "schemas" / "x.py").write_text("def f():\n    from conditioning.features import types\n")
    (tmp_path / "conditioning" / "y.py").write_text("import flows.cli\nimport schemas.records\n")
    (tmp_path / "flows" / "z.py").write_text("from conditioning import config\nfrom schemas import records\n")
    assert upward_imports(tmp_path) == [
        "schemas/x.py:2 imports conditioning (a schemas module may not)",
        "conditioning/y.py:1 imports flows (a conditioning module may not)",
    ]


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("schemas.records", ("conditioning", "flows", "torch")),
        # The feature estimators are pure numpy: the package's lazy exports keep torch out of them.
        ("conditioning.features.state", ("flows", "torch", "hnswlib")),
        # The pattern library needs neither flows nor the torch head (conditioning/rag.py); its search runs on
        # torch's product and top-k (conditioning/library.py).
        ("conditioning.library", ("flows", "conditioning.rag")),
    ],
)
def test_a_lower_layer_imports_without_the_upper_ones(module: str, absent: tuple[str, ...]):
    code = f"import sys, {module}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
