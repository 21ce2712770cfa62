"""Reporting: the results report of an output directory (markdown, PNG figures, CSV/JSON exports).

Each experiment declares its checks, tables and figures with its grid in the registry
(:mod:`moelab.experiments.checks`, :mod:`moelab.experiments.displays`); reporting renders them
(:mod:`moelab.reporting.render`) for the experiments of a results database and writes the files.
matplotlib is used here only (:mod:`moelab.reporting.figures`, on the Agg canvas), and through
that module by the ``analyze-hf`` report of :mod:`moelab.interop`. The names below are imported
on first use, so importing :mod:`moelab.reporting.figures` loads neither the registry nor the
report writer.
"""

from importlib import import_module

__all__ = ["FigureSpec", "Section", "Table", "Verdict", "build_section", "write_report"]
_HOME = {"FigureSpec": "moelab.reporting.render", "Table": "moelab.reporting.render",
         "Section": "moelab.reporting.markdown", "Verdict": "moelab.experiments.checks",
         "build_section": "moelab.reporting.report", "write_report": "moelab.reporting.report"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'moelab.reporting' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
