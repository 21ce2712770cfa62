"""The checks an experiment declares beside its grid in the registry: each turns the grid of its
runs into verdicts (:class:`Verdict`) on the experiment's claim, with the numbers behind them.

Keys name an axis of the experiment (``"D"``), a dotted config path (``"task.d"``) or are a
function of a :class:`~moelab.experiments.grid.Cell`. ``where`` selects cells (key -> label, value
or predicate); ``per`` gives one verdict per combination of its keys' labels. A check claiming a
sign (a slope below or above 0) is never HELD while the slope's confidence interval reaches the
other side. docs/extending.md lists the checks and shows how to write a new one.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from moelab.analysis.rates import RateFit, loglog_crossing, max_over_min
from moelab.experiments.formats import metric_format, metric_header, ratio, slope_text, where_text
from moelab.experiments.grid import Cell, Grid, Key, Select, largest, loglog_slope
from moelab.experiments.paper import paper_slope

Series = tuple[str, Select]  # (name in the report, which cells)
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_REL = 1e-6  # relative slack of "<=" / ">=" against another metric (rounding of stored floats)


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


class Check:
    """A check's verdicts: one per combination of ``per`` (and of the grid's split-off settings)
    among the cells ``where`` selects; a subclass judges one combination's cells in
    ``verdict(grid, cells, check)``, ``check`` the claim with that combination."""

    per: tuple[Key, ...] = ()
    where: Select | None = None

    def evaluate(self, grid: Grid) -> list[Verdict]:
        return [self.verdict(grid, cells, self.claim + where_text(self.per + grid.extra, combo))
                for combo, cells in grid.groups(self.where, self.per).items()]


@dataclass(frozen=True)
class Flat(Check):
    """Flat in ``x``: max/min of the medians over ``x`` at most ``tolerance``."""

    claim: str
    x: Key
    tolerance: float
    per: tuple[Key, ...] = ()
    where: Select | None = None
    metric: str = "test_mse"
    reference: Mapping[float, float] | None = None  # the paper's values: its own max/min is quoted

    def verdict(self, grid: Grid, cells: list[Cell], check: str) -> Verdict:
        flat = max_over_min(c.median(self.metric) for c in cells if c.x(self.x) is not None)
        ref = f" (paper's own {ratio(max_over_min(self.reference.values()))})" if self.reference else ""
        fit = loglog_slope(cells, self.x, self.metric)
        return Verdict(status_of([flat <= self.tolerance] if math.isfinite(flat) else []),
                       f"{check}: max/min of the medians over {self.x} <= {self.tolerance:g}",
                       f"max/min {ratio(flat)}{ref}; log-log slope in {self.x} {slope_text(fit)} "
                       "(theory 0)")


@dataclass(frozen=True)
class NearReference(Check):
    """The median is at most ``factor`` x the reference value (the paper's) at every ``x``."""

    claim: str
    x: Key
    reference: Mapping[float, float]
    factor: float = 2.0
    where: Select | None = None
    metric: str = "test_mse"

    def verdict(self, grid: Grid, cells: list[Cell], check: str) -> Verdict:
        ratios = [(c.label(self.x), r) for c in cells if c.x(self.x) in self.reference
                  if math.isfinite(r := c.median(self.metric) / self.reference[c.x(self.x)])]
        return Verdict(status_of([r <= self.factor for _, r in ratios]),
                       f"{check}: median <= {self.factor:g}x the paper at every {self.x}",
                       ", ".join(f"{self.x}={x}: {ratio(r)}x" for x, r in ratios)
                       or f"no {self.x} with a paper value")


@dataclass(frozen=True)
class Slopes(Check):
    """Each series' log-log slope in ``x`` satisfies ``op threshold`` (``"<="``, ``">"``, ... or
    ``"ci<="``: the whole 95% interval at most the threshold). A bound at or below 0 also needs the
    interval below 0; at or above 0, above 0."""

    claim: str
    x: Key
    series: tuple[tuple[str, Select, str, float], ...]  # (name, which cells, op, threshold)
    per: tuple[Key, ...] = ()
    metric: str = "test_mse"
    paper: Mapping[str, Mapping[float, float]] = field(default_factory=dict)  # name -> points

    def verdict(self, grid: Grid, cells: list[Cell], check: str) -> Verdict:
        flags, texts = [], []
        for name, which, op, bound in self.series:
            fit = loglog_slope([c for c in cells if c.matches(which)], self.x, self.metric)
            paper = paper_slope(self.paper[name]) if name in self.paper else None
            texts.append(f"{name} {slope_text(fit, predicted=paper and paper.slope)}")
            if fit is not None:
                flags.append(_slope_holds(fit, op, bound))
        rules = ", ".join(f"{n} {op.replace('ci', 'interval ')} {b:g}" for n, _, op, b in self.series)
        return Verdict(status_of(flags if len(flags) == len(self.series) else []), check,
                       f"log-log slope in {self.x}: {', '.join(texts)}; held when {rules}")


def _slope_holds(fit: RateFit, op: str, bound: float) -> bool:
    """``slope op bound``; ``"ci<="``: the whole interval at most ``bound``. A claimed sign also
    needs the interval on that side of 0 (a NaN interval, from two points, is not checked)."""
    if op == "ci<=":
        return fit.ci_high <= bound
    if (op in ("<=", "<") and bound <= 0 and fit.ci_high >= 0
            or op in (">=", ">") and bound >= 0 and fit.ci_low <= 0):
        return False
    return _OPS[op](fit.slope, bound)


@dataclass(frozen=True)
class Beats(Check):
    """``better`` beats ``worse`` at the largest ``at`` where both have runs (or their last cell):
    for each metric, better < worse, or better <= factor x worse for a factor above 1; with
    ``higher`` a larger value is better (better > worse)."""

    claim: str
    better: Series
    worse: Series
    at: Key | None = None
    within: Mapping[str, float] = field(default_factory=lambda: {"test_mse": 1.0})
    per: tuple[Key, ...] = ()
    higher: bool = False

    def verdict(self, grid: Grid, cells: list[Cell], check: str) -> Verdict:
        better, worse = ([c for c in cells if c.matches(s[1])] for s in (self.better, self.worse))
        if self.at is not None:
            common = {c.x(self.at) for c in better} & {c.x(self.at) for c in worse}
            better, worse = ([c for c in cs if c.x(self.at) in common] for cs in (better, worse))
        if not better or not worse:
            return Verdict(status_of([]), check, f"no {self.at or 'cell'} with runs of both")
        pair = largest(better, self.at), largest(worse, self.at)
        flags, texts = [], []
        for name, factor in self.within.items():
            b, w = (c.median(name) for c in pair)
            flags.append(b > w if self.higher else b < w if factor == 1 else b <= factor * w)
            text = f"{metric_header(name)} {metric_format(name)(b)} vs {metric_format(name)(w)}"
            if not self.higher and b > 0:
                text += f", {self.worse[0]}/{self.better[0]} = {ratio(w / b)}x"
            texts.append(text + (f" (held within {factor:g}x)" if factor != 1 else ""))
        finite = all(math.isfinite(c.median(name)) for c in pair for name in self.within)
        at = f"{self.at}={pair[0].label(self.at)}: " if self.at else ""
        return Verdict(status_of(flags if finite else []), check, at + "; ".join(texts))


@dataclass(frozen=True)
class Bounds(Check):
    """At every selected cell, each ``(metric, op, other)`` holds for the medians over seeds;
    ``other`` is a number or another metric (compared with a relative slack of 1e-6)."""

    claim: str
    conditions: tuple[tuple[str, str, str | float], ...]
    per: tuple[Key, ...] = ()
    where: Select | None = None

    def verdict(self, grid: Grid, cells: list[Cell], check: str) -> Verdict:
        flags, texts = [], []
        for name, op, other in self.conditions:
            held = [_OPS[op](c.median(name), _limit(c, op, other)) for c in cells]
            flags.append(all(held))
            texts.append(f"{metric_header(name)} {op} {other}: {sum(held)} of {len(held)} cells "
                         f"({', '.join(metric_format(name)(c.median(name)) for c in cells)})")
        return Verdict(status_of(flags if cells else []), check, "; ".join(texts))


def _limit(c: Cell, op: str, other: str | float) -> float:
    """A number, or the median of another metric loosened by the relative slack."""
    if not isinstance(other, str):
        return float(other)
    return c.median(other) * {"<=": 1 + _REL, ">=": 1 - _REL}.get(op, 1.0)


@dataclass(frozen=True)
class CostToMatch(Check):
    """How many times the ``cost`` (e.g. activated parameters) of each ``cheap`` model a ``dear``
    model needs for the same median ``metric`` (log-log interpolation along the dear models'
    curve); held when at least ``fraction`` x the value at ``expected`` (e.g. E) of the cheap one.
    In the numbers, ``>`` means no dear model reached that error, ``<=`` that the smallest did."""

    claim: str
    cheap: Select
    dear: Select
    expected: str
    cost: str = "active_parameters"
    fraction: float = 0.5
    per: tuple[Key, ...] = ()
    metric: str = "test_mse"

    def evaluate(self, grid: Grid) -> list[Verdict]:  # its verdicts name ``per`` only
        return [self.verdict(grid, cells, self.claim + where_text(self.per, combo))
                for combo, cells in grid.groups(None, self.per).items()]

    def verdict(self, grid: Grid, cells: list[Cell], check: str) -> Verdict:
        dear = sorted((c.median(self.cost), c.median(self.metric))
                      for c in cells if c.matches(self.dear))
        flags, texts = [], []
        for c in (c for c in cells if c.matches(self.cheap)):
            cross = loglog_crossing([p for p, _ in dear], [v for _, v in dear], c.median(self.metric))
            if cross is None:
                continue
            factor = cross.size / c.median(self.cost)
            flags.append(factor >= self.fraction * float(c.config(self.expected) or 1)
                         and cross.bound != "<=")
            name = ", ".join(v for k, v in c.labels.items() if k not in self.per)
            bound = {"=": "", "<=": "<= ", ">": "> "}[cross.bound]
            texts.append(f"{name}: {bound}{ratio(factor)}x")
        return Verdict(status_of(flags), check, ", ".join(texts) or "no models to compare")
