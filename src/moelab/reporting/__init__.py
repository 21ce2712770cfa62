"""Reporting: the results report of an output directory (markdown, PNG figures, CSV/JSON exports).

matplotlib is used here and nowhere else in moelab; figures are drawn on the Agg canvas.
"""

from moelab.reporting.report import build_section, write_report
from moelab.reporting.section import FigureSpec, Section, Table, Verdict

__all__ = ["FigureSpec", "Section", "Table", "Verdict", "build_section", "write_report"]
