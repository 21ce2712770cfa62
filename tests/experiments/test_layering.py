"""Dependencies point one way: an experiment declares what its report checks and shows
(moelab.experiments), and reporting renders it and draws the figures.

- experiments and analysis never import moelab.reporting, so declaring an experiment never loads
  the report writer or matplotlib;
- interop imports from reporting only its figure plumbing, moelab.reporting.figures: the
  ``analyze-hf`` report (interop/hf_report.py) draws on its ``figure()`` and saves with its
  ``png_bytes()``, so both reports draw alike;
- matplotlib is imported only under reporting/ and by interop/hf_report.py.

The imports are read from the source (ast), top level or not, so the test needs nothing installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "moelab"
MATPLOTLIB_ALLOWED = ("reporting/", "interop/hf_report.py")


def _imported(path: Path, package: str = "") -> set[str]:
    """Every name ``path`` imports, as a dotted path: ``import a.b`` gives ``a.b``, ``from a
    import b`` gives ``a.b`` (a relative import is resolved against ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def _imports(files, starts: str) -> set[tuple[str, str]]:
    """(file, imported name) for each import of ``starts`` or a name below it."""
    out = set()
    for path in files:
        package = ".".join(("moelab", *path.relative_to(SRC).parent.parts))
        out |= {(path.relative_to(SRC).as_posix(), name) for name in _imported(path, package)
                if name == starts or name.startswith(starts + ".")}
    return out


def test_experiments_and_analysis_never_import_reporting():
    files = [*(SRC / "experiments").rglob("*.py"), *(SRC / "analysis").rglob("*.py")]
    assert not _imports(files, "moelab.reporting")


def test_interop_takes_only_the_figures_from_reporting():
    imports = _imports((SRC / "interop").rglob("*.py"), "moelab.reporting")
    assert {(f, n) for f, n in imports if not n.startswith("moelab.reporting.figures.")} == set()
    assert ("interop/hf_report.py", "moelab.reporting.figures.figure") in imports


def test_matplotlib_is_imported_only_in_reporting_and_the_hf_report():
    imports = _imports(SRC.rglob("*.py"), "matplotlib")
    assert {(f, n) for f, n in imports if not f.startswith(MATPLOTLIB_ALLOWED)} == set()
    assert any(f == "reporting/figures.py" for f, _ in imports)  # the check sees real imports


def test_the_check_finds_each_form_of_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from moelab import reporting\nimport moelab.reporting.report\n"
                    "def f():\n    from matplotlib.figure import Figure\n"
                    "from .figures import png_bytes\n")
    assert _imported(path, "moelab.reporting") == {
        "moelab.reporting", "moelab.reporting.report", "matplotlib.figure.Figure",
        "moelab.reporting.figures.png_bytes"}
