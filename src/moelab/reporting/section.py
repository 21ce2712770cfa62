"""A report section: an experiment's verdicts, tables and figure specs, and its markdown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from matplotlib.figure import Figure

from moelab.reporting.text import Table, Verdict, duration


@dataclass(frozen=True)
class FigureSpec:
    """A figure to draw: ``make()`` returns a matplotlib Figure, saved as ``figures/<name>.png``."""

    name: str
    caption: str
    make: Callable[[], Figure] = field(compare=False, repr=False)


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
            parts.append("### Verdicts\n\n" + "\n".join(v.markdown() for v in self.verdicts))
        if self.tables:
            parts.append("### Tables")
            parts += [t.markdown() for t in self.tables]
        if self.figures:
            parts.append("### Figures")
            parts += [f"![{f.caption}]({figure_dir}/{f.name}.png)\n\n*{f.caption}*"
                      for f in self.figures]
        return "\n\n".join(parts)
