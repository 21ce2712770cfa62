"""Dependencies point one way: an experiment declares what its report checks and shows
(moelab.experiments), and reporting renders it. Nothing the registry is built from imports
moelab.reporting, so declaring an experiment never loads the report writer."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "moelab"


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, ``from moelab import x`` counted as ``moelab.x``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_experiments_analysis_and_plots_never_import_reporting():
    files = [*(SRC / "experiments").rglob("*.py"), *(SRC / "analysis").rglob("*.py"),
             SRC / "plots.py", *(SRC / "interop").rglob("*.py")]
    upward = {f"{path.relative_to(SRC)} -> {name}" for path in files for name in _imported(path)
              if name == "moelab.reporting" or name.startswith("moelab.reporting.")}
    assert not upward, sorted(upward)


def test_the_check_finds_an_upward_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from moelab import reporting\nimport moelab.reporting.report\n")
    assert {"moelab.reporting", "moelab.reporting.report"} <= _imported(path)
