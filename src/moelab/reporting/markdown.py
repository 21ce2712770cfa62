"""The report's markdown: a verdict as a line, a table, and each experiment's section. The
verdicts come from the experiment's checks (:mod:`moelab.experiments.checks`), the tables and
figures from its displays (:mod:`moelab.reporting.render`); only their writing is here."""

from __future__ import annotations

from dataclasses import dataclass

from moelab.experiments.checks import Verdict
from moelab.experiments.formats import duration
from moelab.reporting.render import FigureSpec, Table


def verdict_line(verdict: Verdict) -> str:
    """``- **HELD** (provisional): check: detail``."""
    mark = " (provisional)" if verdict.provisional else ""
    return f"- **{verdict.status}**{mark}: {verdict.check}: {verdict.detail}"


def table_markdown(table: Table) -> str:
    """The caption in bold, then the table: labels aligned left, numbers right."""
    align = ("---",) + ("--:",) * (len(table.header) - 1)
    return f"**{table.caption}**\n\n" + "\n".join(
        "| " + " | ".join(c.replace("|", "/") for c in row) + " |"
        for row in (table.header, align, *table.rows))


@dataclass(frozen=True)
class Section:
    """One experiment's part of the report."""

    experiment: str
    title: str
    claim: str
    num_runs: int
    seeds: tuple[int, ...]
    seconds: float
    verdicts: tuple[Verdict, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[FigureSpec, ...] = ()
    notes: tuple[str, ...] = ()

    def markdown(self, figure_dir: str) -> str:
        seeds = ", ".join(str(s) for s in self.seeds)
        parts = [f"## {self.experiment}: {self.title}",
                 f"*Claim:* {self.claim}",
                 f"{self.num_runs} runs (seeds {seeds}), {duration(self.seconds)} of compute."]
        parts += list(self.notes)
        if self.verdicts:
            parts.append("### Verdicts\n\n" + "\n".join(verdict_line(v) for v in self.verdicts))
        if self.tables:
            parts.append("### Tables")
            parts += [table_markdown(t) for t in self.tables]
        if self.figures:
            parts.append("### Figures")
            parts += [f"![{f.caption}]({figure_dir}/{f.name}.png)\n\n*{f.caption}*"
                      for f in self.figures]
        return "\n\n".join(parts)
