"""The dependency rules of the layout, checked on the source: backend/ stays free of gradio,
torch and device/; device/ never imports the app; nothing the app runs imports conversion/
(torch stays an optional install)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


RULES = [
    ("backend", {"gradio", "torch", "device", "conversion", "app", "litert_torch", "testing", "tests"}),
    ("device", {"app", "gradio", "torch", "conversion", "litert_torch", "testing", "tests"}),
    ("conversion", {"app", "gradio", "device", "testing", "tests"}),
]


@pytest.mark.parametrize("package,banned", RULES, ids=[r[0] for r in RULES])
def test_package_imports_respect_the_layout(package, banned):
    offenders = {str(p.relative_to(REPO)): sorted(_imported_roots(p) & banned)
                 for p in sorted((REPO / package).rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_app_does_not_import_conversion_or_torch():
    assert _imported_roots(REPO / "app.py") & {"conversion", "torch", "litert_torch", "testing", "tests"} == set()


def test_nothing_patches_sys_path():
    """Imports work because the project is a package (pyproject.toml), not because a file edits sys.path."""
    sources = [p for folder in ("backend", "device", "conversion", "benchmarks", "testing", "tests")
               for p in (REPO / folder).rglob("*.py")] + [REPO / "app.py"]
    edit = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*[+]?=")
    offenders = [str(p.relative_to(REPO)) for p in sources if edit.search(p.read_text())]
    assert offenders == []


def test_the_rule_checker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import torch\n    from gradio import Blocks\n")
    assert _imported_roots(sample) == {"torch", "gradio"}
