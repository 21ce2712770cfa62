"""Reporting: the results report of an output directory (markdown, PNG figures, CSV/JSON exports).

Figures are drawn by :mod:`moelab.plots` (shared with the ``analyze-hf`` report of
:mod:`moelab.interop`) on the Agg canvas. The registry declares each
experiment's checks, tables and figures with :mod:`moelab.reporting.declare` (no matplotlib); the
names below are imported on first use, so declaring stays cheap.
"""

from importlib import import_module

__all__ = ["FigureSpec", "Section", "Table", "Verdict", "build_section", "write_report"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'moelab.reporting' has no attribute {name!r}")
    module = "report" if name in ("build_section", "write_report") else "text"
    return getattr(import_module(f"moelab.reporting.{module}"), name)
