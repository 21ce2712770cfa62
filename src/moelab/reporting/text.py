"""The report's words and numbers: number formats (three significant digits throughout), verdicts,
markdown tables and sections. Pure: no matplotlib, no registry, so experiments can declare with it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from moelab.analysis import RateFit
    from moelab.reporting.grid import Spread


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def sci(x: float | None) -> str:
    """``3.40e-04``; ``n/a`` for None or NaN."""
    return "n/a" if _missing(x) else f"{x:.2e}"


def num(x: float | None) -> str:
    """Three significant digits in plain notation where short (``1.12``, ``12``, ``0.981``)."""
    return "n/a" if _missing(x) else f"{x:.3g}"


def ratio(x: float | None) -> str:
    """A ratio to three significant digits, trailing zeros kept (``1.00``, ``0.379``, ``22.6``);
    large ones as whole numbers (``545``, ``2.50e+03``)."""
    if _missing(x):
        return "n/a"
    return f"{x:.0f}" if 100 <= abs(x) < 1000 else f"{x:#.3g}"


def count(x: float | None) -> str:
    """A (median) count such as a parameter number, rounded: ``2,304``."""
    return "n/a" if _missing(x) else f"{round(x):,}"


def metric_format(name: str) -> Callable[[float | None], str]:
    """The number format of a metric: scientific for errors, counts for parameters, else plain."""
    if name in ("test_mse", "test_sup", "bound"):
        return sci
    return count if "parameters" in name else num


def metric_header(name: str) -> str:
    """How a metric is named in the report."""
    return {"test_mse": "test MSE", "test_sup": "sup error"}.get(name, name.replace("_", " "))


def cell(s: Spread, fmt: Callable[[float], str] = sci) -> str:
    """``median [min, max]`` over seeds; a bare median for one seed; notes diverged runs."""
    if not s.ok:
        text = "n/a"
    elif s.n == 1:
        text = fmt(s.median)
    else:
        text = f"{fmt(s.median)} [{fmt(s.low)}, {fmt(s.high)}]"
    if s.ok and s.missing:
        text += f" ({s.missing} run{'s' if s.missing > 1 else ''} without a finite value)"
    return text


def slope_text(slope: RateFit | None, *, predicted: float | None = None) -> str:
    """``-1.52 [-1.70, -1.34]`` (the fitted log-log slope and its 95% interval) or ``n/a``."""
    if slope is None:
        return "n/a"
    text = f"{slope.slope:+.2f}"
    if not math.isnan(slope.ci_low):
        text += f" [{slope.ci_low:+.2f}, {slope.ci_high:+.2f}]"
    if predicted is not None:
        text += f" (paper {predicted:+.2f})"
    return text


def duration(seconds: float) -> str:
    """``45 s``, ``12.3 min`` or ``2.05 h``."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def slug(text: str) -> str:
    """``text`` as a file-name part: lower case, each other character than a letter or digit a dash."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def status_of(flags: Sequence[bool]) -> str:
    """HELD if every check passed, NOT HELD if none did, PARTLY otherwise (NO DATA if none ran)."""
    if not flags:
        return "NO DATA"
    return "HELD" if all(flags) else "PARTLY" if any(flags) else "NOT HELD"


@dataclass(frozen=True)
class Verdict:
    """One checked claim: a status (HELD / PARTLY / NOT HELD / NO DATA), what was checked, the
    numbers behind it, and whether it is provisional (settings or seeds differ from the
    registered experiment)."""

    status: str
    check: str
    detail: str
    provisional: bool = False

    def markdown(self) -> str:
        mark = " (provisional)" if self.provisional else ""
        return f"- **{self.status}**{mark}: {self.check}: {self.detail}"


@dataclass(frozen=True)
class Table:
    """A markdown table: ``caption`` above, ``header`` and ``rows`` of preformatted strings."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"table {self.caption!r}: row {row!r} has {len(row)} cells, "
                                 f"header has {len(self.header)}")

    def markdown(self) -> str:
        align = ("---",) + ("--:",) * (len(self.header) - 1)  # labels left, numbers right
        return f"**{self.caption}**\n\n" + "\n".join(
            "| " + " | ".join(c.replace("|", "/") for c in row) + " |"
            for row in (self.header, align, *self.rows))


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
