"""Reporting: the results report of an output directory (markdown, PNG figures, CSV/JSON exports).

matplotlib is used here and, through :mod:`moelab.reporting.figures`, by the ``analyze-hf``
report of :mod:`moelab.interop`; figures are drawn on the Agg canvas. The registry declares each
experiment's checks, tables and figures with :mod:`moelab.reporting.declare` (no matplotlib); the
names below are imported on first use, so declaring stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "write_report": "moelab.reporting.report",
    "build_section": "moelab.reporting.report",
    "FigureSpec": "moelab.reporting.text",
    "Section": "moelab.reporting.text",
    "Table": "moelab.reporting.text",
    "Verdict": "moelab.reporting.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'moelab.reporting' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
