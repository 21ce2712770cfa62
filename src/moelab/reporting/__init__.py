"""Reporting: the results report of an output directory (markdown, PNG figures, CSV/JSON exports).

Each experiment declares its checks, tables and figures with its grid in the registry
(:mod:`moelab.experiments.checks`, :mod:`moelab.experiments.displays`); reporting renders them
for the experiments of a results database and writes the files. Figures are drawn by
:mod:`moelab.plots`.
"""

from moelab.experiments.checks import Verdict
from moelab.experiments.displays import FigureSpec, Table
from moelab.reporting.markdown import Section
from moelab.reporting.report import build_section, write_report

__all__ = ["FigureSpec", "Section", "Table", "Verdict", "build_section", "write_report"]
