"""What an experiment declares about its report, beside its grid in the registry: checks (each
gives verdicts), tables and figures. The generic section (:mod:`moelab.reporting.render`) turns
the declarations into markdown and PNGs; nothing here draws, so the registry can import it cheaply.

Keys name an axis of the experiment (``"D"``), a dotted config path (``"task.d"``) or are a
function of a :class:`~moelab.reporting.grid.Cell`. ``where`` selects cells (key -> label, value or
predicate); ``per`` gives one verdict (or table, or figure) per combination of its keys' labels.
A check claiming a sign (a slope below or above 0) is never HELD while the slope's confidence
interval reaches the other side.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from moelab.reporting.aggregate import fit_slope, loglog_crossing, max_over_min, metric
from moelab.reporting.grid import Cell, Grid, Key, Select
from moelab.reporting.text import Table, Verdict, cell, count, num, ratio, sci, slope_text, status_of

Series = tuple[str, Select]  # (name in the report, which cells)
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_REL = 1e-6  # relative slack of "<=" / ">=" against another metric (rounding of stored floats)


def fmt(name: str):
    """The number format of a metric: scientific for errors, counts for parameters, else plain."""
    if name in ("test_mse", "test_sup", "bound"):
        return sci
    return count if "parameters" in name else num


HEADERS = {"test_mse": "test MSE", "test_sup": "sup error"}


def header(name: str) -> str:
    """How a metric is named in the report."""
    return HEADERS.get(name, name.replace("_", " "))


def groups(grid: Grid, where: Select | None, per: Sequence[Key]) -> dict[tuple[str, ...], list]:
    """The selected cells per combination of ``per`` and of the grid's split-off settings."""
    return grid.split(grid.select(where), tuple(per) + grid.extra)


def where_text(keys: Sequence[Key], combo: Sequence[str]) -> str:
    parts = [f"{k} {v}" if isinstance(k, str) else v for k, v in zip(keys, combo, strict=False)]
    return f" ({', '.join(parts)})" if parts else ""


def points(grid: Grid, cells: Sequence[Cell], x: Key, name: str) -> tuple[list, list]:
    """(x, metric) of every run of ``cells`` that has a position along ``x``."""
    pts = [(grid.x(c, x), metric(r, name)) for c in cells for r in c.runs]
    pts = [(a, b) for a, b in pts if a is not None]
    return [a for a, _ in pts], [b for _, b in pts]


def _last(grid: Grid, cells: Sequence[Cell], x: Key | None) -> Cell | None:
    if not cells:
        return None
    return max(cells, key=lambda c: grid.x(c, x) or -math.inf) if x is not None else cells[-1]


# -- checks: each gives one verdict per combination of ``per`` -------------------------------------

@dataclass(frozen=True)
class Flat:
    """Flat in ``x``: max/min of the medians over ``x`` at most ``tolerance``."""

    claim: str
    x: Key
    tolerance: float
    per: tuple[Key, ...] = ()
    where: Select | None = None
    metric: str = "test_mse"
    reference: Mapping[float, float] | None = None  # the paper's values: its own max/min is quoted

    def evaluate(self, grid: Grid) -> list[Verdict]:
        out = []
        for combo, cells in groups(grid, self.where, self.per).items():
            flat = max_over_min(c.spread(self.metric).median for c in cells
                                if grid.x(c, self.x) is not None)
            ref = (f" (paper's own {ratio(max_over_min(self.reference.values()))})"
                   if self.reference else "")
            fit = fit_slope(*points(grid, cells, self.x, self.metric))
            out.append(Verdict(
                status_of([flat <= self.tolerance] if math.isfinite(flat) else []),
                f"{self.claim}{where_text(self.per + grid.extra, combo)}: max/min of the medians "
                f"over {self.x} <= {self.tolerance:g}",
                f"max/min {ratio(flat)}{ref}; log-log slope in {self.x} {slope_text(fit)} "
                "(theory 0)"))
        return out


@dataclass(frozen=True)
class NearReference:
    """The median is at most ``factor`` x the reference value (the paper's) at every ``x``."""

    claim: str
    x: Key
    reference: Mapping[float, float]
    factor: float = 2.0
    where: Select | None = None
    metric: str = "test_mse"

    def evaluate(self, grid: Grid) -> list[Verdict]:
        out = []
        for combo, cells in groups(grid, self.where, ()).items():
            ratios = [(grid.label(c, self.x),
                       c.spread(self.metric).median / self.reference[grid.x(c, self.x)])
                      for c in cells if grid.x(c, self.x) in self.reference]
            ratios = [(x, r) for x, r in ratios if math.isfinite(r)]
            out.append(Verdict(
                status_of([r <= self.factor for _, r in ratios]),
                f"{self.claim}{where_text(grid.extra, combo)}: median <= {self.factor:g}x the "
                f"paper at every {self.x}",
                ", ".join(f"{self.x}={x}: {ratio(r)}x" for x, r in ratios)
                or f"no {self.x} with a paper value"))
        return out


@dataclass(frozen=True)
class Slopes:
    """Each series' log-log slope in ``x`` satisfies ``op threshold`` (``"<="``, ``">"``, ... or
    ``"ci<="``: the whole 95% interval at most the threshold). A bound at or below 0 also needs the
    interval below 0; at or above 0, above 0."""

    claim: str
    x: Key
    series: tuple[tuple[str, Select, str, float], ...]  # (name, which cells, op, threshold)
    per: tuple[Key, ...] = ()
    metric: str = "test_mse"
    paper: Mapping[str, Mapping[float, float]] = field(default_factory=dict)  # name -> points

    def evaluate(self, grid: Grid) -> list[Verdict]:
        out = []
        for combo, cells in groups(grid, None, self.per).items():
            flags, texts = [], []
            for name, which, op, bound in self.series:
                fit = fit_slope(*points(grid, [c for c in cells if c.matches(which)], self.x,
                                         self.metric))
                paper = fit_slope(list(self.paper[name]), list(self.paper[name].values())) \
                    if name in self.paper else None
                texts.append(f"{name} {slope_text(fit, predicted=paper and paper.slope)}")
                if fit is not None:
                    flags.append(_slope_holds(fit, op, bound))
            rules = ", ".join(f"{n} {op.replace('ci', 'interval ')} {b:g}"
                              for n, _, op, b in self.series)
            out.append(Verdict(
                status_of(flags if len(flags) == len(self.series) else []),
                f"{self.claim}{where_text(self.per + grid.extra, combo)}",
                f"log-log slope in {self.x}: {', '.join(texts)}; held when {rules}"))
        return out


def _slope_holds(fit, op: str, bound: float) -> bool:
    """``slope op bound``; ``"ci<="``: the whole interval at most ``bound``."""
    if op == "ci<=":
        return fit.ci_high <= bound
    return _OPS[op](fit.slope, bound) and _sign_ok(fit, op, bound)


def _sign_ok(fit, op: str, bound: float) -> bool:
    """The interval does not reach the sign opposite to the claim (NaN: no interval to check)."""
    if op in ("<=", "<") and bound <= 0:
        return not fit.ci_high >= 0
    if op in (">=", ">") and bound >= 0:
        return not fit.ci_low <= 0
    return True


@dataclass(frozen=True)
class Beats:
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

    def evaluate(self, grid: Grid) -> list[Verdict]:
        out = []
        for combo, cells in groups(grid, None, self.per).items():
            pair = self._pair(grid, cells)
            where = where_text(self.per + grid.extra, combo)
            if pair is None:
                out.append(Verdict(status_of([]), f"{self.claim}{where}",
                                   f"no {self.at or 'cell'} with runs of both"))
                continue
            flags, texts, finite = [], [], True
            for name, factor in self.within.items():
                b, w = pair[0].spread(name).median, pair[1].spread(name).median
                f, finite = fmt(name), finite and math.isfinite(b) and math.isfinite(w)
                if self.higher:
                    flags.append(b > w)
                else:
                    flags.append(b < w if factor == 1 else b <= factor * w)
                text = f"{header(name)} {f(b)} vs {f(w)}"
                if not self.higher and b > 0:
                    text += f", {self.worse[0]}/{self.better[0]} = {ratio(w / b)}x"
                texts.append(text + (f" (held within {factor:g}x)" if factor != 1 else ""))
            at = f"{self.at}={grid.label(pair[0], self.at)}: " if self.at else ""
            out.append(Verdict(status_of(flags if finite else []), f"{self.claim}{where}",
                               at + "; ".join(texts)))
        return out

    def _pair(self, grid: Grid, cells: Sequence[Cell]) -> tuple[Cell, Cell] | None:
        better = [c for c in cells if c.matches(self.better[1])]
        worse = [c for c in cells if c.matches(self.worse[1])]
        if self.at is not None:
            common = {grid.x(c, self.at) for c in better} & {grid.x(c, self.at) for c in worse}
            better = [c for c in better if grid.x(c, self.at) in common]
            worse = [c for c in worse if grid.x(c, self.at) in common]
        b, w = _last(grid, better, self.at), _last(grid, worse, self.at)
        return (b, w) if b is not None and w is not None else None


@dataclass(frozen=True)
class Bounds:
    """At every selected cell, each ``(metric, op, other)`` holds for the medians over seeds;
    ``other`` is a number or another metric (compared with a relative slack of 1e-6)."""

    claim: str
    conditions: tuple[tuple[str, str, str | float], ...]
    per: tuple[Key, ...] = ()
    where: Select | None = None

    def evaluate(self, grid: Grid) -> list[Verdict]:
        out = []
        for combo, cells in groups(grid, self.where, self.per).items():
            flags, texts = [], []
            for name, op, other in self.conditions:
                held = [self._holds(c, name, op, other) for c in cells]
                flags.append(all(held))
                texts.append(f"{header(name)} {op} {other}: {sum(held)} of {len(held)} cells "
                             f"({', '.join(fmt(name)(c.spread(name).median) for c in cells)})")
            out.append(Verdict(status_of(flags if cells else []),
                               f"{self.claim}{where_text(self.per + grid.extra, combo)}",
                               "; ".join(texts)))
        return out

    @staticmethod
    def _holds(c: Cell, name: str, op: str, other: str | float) -> bool:
        value = c.spread(name).median
        limit = float(other) if not isinstance(other, str) else c.spread(other).median
        if isinstance(other, str) and op in ("<=", ">="):
            limit *= 1 + _REL if op == "<=" else 1 - _REL
        return _OPS[op](value, limit)


@dataclass(frozen=True)
class CostToMatch:
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

    def evaluate(self, grid: Grid) -> list[Verdict]:
        out = []
        for combo, cells in groups(grid, None, self.per).items():
            dear = sorted((c.spread(self.cost).median, c.spread(self.metric).median)
                          for c in cells if c.matches(self.dear))
            flags, texts = [], []
            for c in (c for c in cells if c.matches(self.cheap)):
                cross = loglog_crossing([p for p, _ in dear], [v for _, v in dear],
                                        c.spread(self.metric).median)
                if cross is None:
                    continue
                factor = cross.size / c.spread(self.cost).median
                bound = {"=": "", "<=": "<= ", ">": "> "}[cross.bound]
                flags.append(factor >= self.fraction * float(c.config(self.expected) or 1)
                             and cross.bound != "<=")
                name = ", ".join(v for k, v in c.labels.items() if k not in self.per)
                texts.append(f"{name}: {bound}{ratio(factor)}x")
            out.append(Verdict(status_of(flags), f"{self.claim}{where_text(self.per, combo)}",
                               ", ".join(texts) or "no models to compare"))
        return out


# -- tables and figures -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Columns:
    """A table with one row per selected cell: its labels, its number of runs and each metric
    (median [min, max] over seeds)."""

    caption: str = "Test error per grid point (median [min, max] over seeds)"
    metrics: tuple[str, ...] = ("test_mse", "test_sup")  # "a / b": two medians, e.g. paths
    where: Select | None = None

    def table(self, grid: Grid) -> Table:
        rows = tuple(tuple(c.labels[a] for a in grid.axes) + (str(len(c.runs)),)
                     + tuple(self._cell(c, m) for m in self.metrics)
                     for c in grid.select(self.where))
        return Table(self.caption, grid.axes + ("runs",) + tuple(
            " / ".join(map(header, m.split(" / "))) for m in self.metrics), rows)

    @staticmethod
    def _cell(c: Cell, name: str) -> str:
        if " / " not in name:
            return cell(c.spread(name), fmt(name))
        return " / ".join(fmt(m)(c.spread(m).median) for m in name.split(" / "))


@dataclass(frozen=True)
class VersusPaper:
    """Ours beside the paper, one table per combination of ``per``: a row per ``x``; for each
    series ours (median [min, max]), the paper's value and ours / paper; a last row with the
    max/min over ``x`` (``summary="flat"``) or the log-log slope in ``x`` (``"slope"``).
    ``paper`` maps a series label (``""``: every series) to ``{x: value}``."""

    caption: str
    x: Key
    paper: Mapping[str, Mapping[float, float]]
    series: Key | None = None
    per: tuple[Key, ...] = ()
    summary: str = "flat"
    metric: str = "test_mse"

    def tables(self, grid: Grid) -> list[Table]:
        out = []
        for combo, cells in groups(grid, None, self.per).items():
            by = grid.split(cells, (self.series,) if self.series else ())
            header = (str(self.x),) + tuple(h for s in by for h in (
                f"ours{where_text((self.series,), s)}", "paper", "ours / paper"))
            xs = grid.split(cells, (self.x,))
            rows = [(x[0],) + tuple(h for s, cs in by.items() for h in self._row(grid, x[0], s, cs))
                    for x in xs]
            rows.append((f"{'max/min' if self.summary == 'flat' else 'slope'} over {self.x}",)
                        + tuple(h for s, cs in by.items() for h in self._summary(grid, s, cs)))
            out.append(Table(f"{self.caption}{where_text(self.per + grid.extra, combo)}",
                             header, tuple(rows)))
        return out

    def _ref(self, series: tuple[str, ...]) -> Mapping[float, float]:
        return self.paper.get(" ".join(series), self.paper.get("", {}))

    def _row(self, grid: Grid, x: str, series, cells) -> tuple[str, str, str]:
        c = next((c for c in cells if grid.label(c, self.x) == x), None)
        if c is None:
            return ("-", "-", "-")
        ours, paper = c.spread(self.metric), self._ref(series).get(grid.x(c, self.x))
        return (cell(ours), sci(paper), ratio(ours.median / paper) if paper else "-")

    def _summary(self, grid: Grid, series, cells) -> tuple[str, str, str]:
        ref = self._ref(series)
        if self.summary == "flat":
            return (ratio(max_over_min(c.spread(self.metric).median for c in cells)),
                    ratio(max_over_min(ref.values())), "")
        ours = fit_slope(*points(grid, cells, self.x, self.metric))
        return (slope_text(ours), slope_text(fit_slope(list(ref), list(ref.values()))), "")


@dataclass(frozen=True)
class Related:
    """A table of another experiment's runs in the same database (e.g. the hand-built networks of
    ``constructions`` beside the trained ones); ``missing`` says how to produce them."""

    experiment: str
    columns: Columns
    missing: str


@dataclass(frozen=True)
class Curves:
    """A figure ``<experiment>-<name>.png`` of ``metric`` (median over seeds, [min, max] bars)
    against ``x``: one curve per
    ``series`` label, one panel per ``panels`` label, one figure per ``per`` label; ``reference``
    curves (label -> {x: value}, e.g. the paper's) are drawn dashed, in the colour of the series
    whose label begins theirs (else black). On log-log axes each curve's label gives its fitted
    log-log slope."""

    name: str
    caption: str
    x: Key
    series: Key | None = None
    panels: Key | None = None
    per: Key | None = None
    where: Select | None = None
    metric: str = "test_mse"
    xlabel: str = ""
    ylabel: str = "test MSE"
    logx: bool = True
    logy: bool = True
    xbase: int = 2
    reference: Mapping[str, Mapping[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Pictures:
    """A figure ``<experiment>-<name>.png`` of routing pictures (``kind`` "circle" or "grid") of
    the seed-0 run of one cell per ``panels`` label (the one at the largest ``last``, if given)."""

    name: str
    caption: str
    kind: str
    panels: Key
    where: Select | None = None
    last: Key | None = None
