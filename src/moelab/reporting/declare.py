"""What an experiment declares about its report, beside its grid in the registry: checks (each
gives verdicts), tables and figures, each rendering itself from the experiment's grid. Nothing here
draws at import, so the registry can import it cheaply; matplotlib is loaded when a figure is made.

Keys name an axis of the experiment (``"D"``), a dotted config path (``"task.d"``) or are a
function of a :class:`~moelab.reporting.grid.Cell`. ``where`` selects cells (key -> label, value or
predicate); ``per`` gives one verdict (or table, or figure) per combination of its keys' labels.
A check claiming a sign (a slope below or above 0) is never HELD while the slope's confidence
interval reaches the other side.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from moelab.analysis.rates import RateFit, fit_slope, loglog_crossing, max_over_min
from moelab.reporting.grid import Cell, Grid, Key, MissingData, Select, metric
from moelab.reporting.text import (
    FigureSpec,
    Table,
    Verdict,
    cell,
    metric_format,
    metric_header,
    ratio,
    sci,
    slope_text,
    slug,
    status_of,
)

Series = tuple[str, Select]  # (name in the report, which cells)
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_REL = 1e-6  # relative slack of "<=" / ">=" against another metric (rounding of stored floats)


def groups(grid: Grid, where: Select | None, per: Sequence[Key]) -> dict[tuple[str, ...], list]:
    """The selected cells per combination of ``per`` and of the grid's split-off settings."""
    return grid.split(grid.select(where), tuple(per) + grid.extra)


def where_text(keys: Sequence[Key], combo: Sequence[str]) -> str:
    parts = [f"{k} {v}" if isinstance(k, str) else v for k, v in zip(keys, combo, strict=False)]
    return f" ({', '.join(parts)})" if parts else ""


def loglog_slope(cells: Sequence[Cell], x: Key, name: str) -> RateFit | None:
    """The fitted log-log slope of metric ``name`` in ``x`` over every run of ``cells`` that has a
    position along ``x``."""
    pts = [(at, metric(r, name)) for c in cells if (at := c.x(x)) is not None for r in c.runs]
    return fit_slope([a for a, _ in pts], [b for _, b in pts])


def paper_slope(values: Mapping[float, float]) -> RateFit | None:
    """The fitted log-log slope of the paper's ``{x: value}``."""
    return fit_slope(list(values), list(values.values()))


def _last(cells: Sequence[Cell], x: Key | None) -> Cell:
    return max(cells, key=lambda c: c.x(x) or -math.inf) if x is not None else cells[-1]


# -- checks: each gives one verdict per combination of ``per`` -------------------------------------

class Check:
    """A check's verdicts: one per combination of ``per`` (and of the grid's split-off settings)
    among the cells ``where`` selects; a subclass judges one combination's cells in
    ``verdict(grid, cells, check)``, ``check`` the claim with that combination."""

    per: tuple[Key, ...] = ()
    where: Select | None = None

    def evaluate(self, grid: Grid) -> list[Verdict]:
        return [self.verdict(grid, cells, self.claim + where_text(self.per + grid.extra, combo))
                for combo, cells in groups(grid, self.where, self.per).items()]


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
        pair = _last(better, self.at), _last(worse, self.at)
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
                for combo, cells in groups(grid, None, self.per).items()]

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


# -- tables: each gives its tables from the grid; ``grid_of(name)`` is another experiment's grid --

GridOf = Callable[[str], Grid]


@dataclass(frozen=True)
class Columns:
    """A table with one row per selected cell: its labels, its number of runs and each metric
    (median [min, max] over seeds; ``"a / b"``: the two medians)."""

    caption: str = "Test error per grid point (median [min, max] over seeds)"
    metrics: tuple[str, ...] = ("test_mse", "test_sup")
    where: Select | None = None

    def tables(self, grid: Grid, grid_of: GridOf | None = None) -> list[Table]:
        header = grid.axes + ("runs",) + tuple(" / ".join(map(metric_header, m.split(" / ")))
                                               for m in self.metrics)
        rows = tuple(tuple(c.labels[a] for a in grid.axes) + (str(len(c.runs)),)
                     + tuple(_entry(c, m) for m in self.metrics) for c in grid.select(self.where))
        return [Table(self.caption, header, rows)]


def _entry(c: Cell, name: str) -> str:
    if " / " not in name:
        return cell(c.spread(name), metric_format(name))
    return " / ".join(metric_format(m)(c.median(m)) for m in name.split(" / "))


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

    def tables(self, grid: Grid, grid_of: GridOf | None = None) -> list[Table]:
        out = []
        for combo, cells in groups(grid, None, self.per).items():
            xs = [x for (x,) in grid.split(cells, (self.x,))]
            header, columns = [str(self.x)], []  # columns: per series, a triple per row
            for s, scells in grid.split(cells, (self.series,) if self.series else ()).items():
                ref = self.paper.get(" ".join(s), self.paper.get("", {}))
                header += [f"ours{where_text((self.series,), s)}", "paper", "ours / paper"]
                columns.append([self._row(x, ref, scells) for x in xs] + [self._summary(ref, scells)])
            xs.append(f"{'max/min' if self.summary == 'flat' else 'slope'} over {self.x}")
            rows = tuple((x,) + tuple(h for col in columns for h in col[i]) for i, x in enumerate(xs))
            out.append(Table(f"{self.caption}{where_text(self.per + grid.extra, combo)}",
                             tuple(header), rows))
        return out

    def _row(self, x: str, ref: Mapping[float, float], cells: list[Cell]) -> tuple[str, ...]:
        c = next((c for c in cells if c.label(self.x) == x), None)
        if c is None:
            return ("-", "-", "-")
        ours, paper = c.spread(self.metric), ref.get(c.x(self.x))
        return (cell(ours), sci(paper), ratio(ours.median / paper) if paper else "-")

    def _summary(self, ref: Mapping[float, float], cells: list[Cell]) -> tuple[str, ...]:
        if self.summary == "flat":
            return (ratio(max_over_min(c.median(self.metric) for c in cells)),
                    ratio(max_over_min(ref.values())), "")
        return (slope_text(loglog_slope(cells, self.x, self.metric)),
                slope_text(paper_slope(ref)), "")


@dataclass(frozen=True)
class Related:
    """A table of another experiment's runs in the same database (e.g. the hand-built networks of
    ``constructions`` beside the trained ones); ``missing`` says how to produce them."""

    experiment: str
    columns: Columns
    missing: str

    def tables(self, grid: Grid, grid_of: GridOf) -> list[Table]:
        other = grid_of(self.experiment)
        if not other.select(self.columns.where):
            raise MissingData(f"no runs of {self.experiment}", note=self.missing)
        return self.columns.tables(other)


# -- figures: each gives its figure specs; matplotlib is imported when they are made ---------------

@dataclass(frozen=True)
class Curves:
    """A figure ``<experiment>-<name>.png`` of ``metric`` (median over seeds, [min, max] bars)
    against ``x``: one curve per ``series`` label, one panel per ``panels`` label, one figure per
    ``per`` label; ``reference`` curves (label -> {x: value}, e.g. the paper's) are drawn dashed,
    in the colour of the series whose label begins theirs (else black). On log-log axes each
    curve's label gives its fitted log-log slope."""

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

    def figures(self, grid: Grid) -> list[FigureSpec]:
        from moelab import plots as F

        out, per = [], (self.per,) if self.per is not None else ()
        by_panel = (self.panels,) if self.panels else ()
        for combo, cells in groups(grid, self.where, per).items():
            panels = [F.Panel(where_text(by_panel, label).strip(" ()"), self._curves(grid, pcells))
                      for label, pcells in grid.split(cells, by_panel).items()]
            if not any(p.curves for p in panels):
                continue
            xs = sorted({x for p in panels for c in p.curves for x in c.x})
            name = "-".join(filter(None, [grid.experiment, self.name, *map(slug, combo)]))
            out.append(FigureSpec(name, self.caption + where_text(per + grid.extra, combo), partial(
                F.curves_figure, panels, xlabel=self.xlabel or str(self.x), ylabel=self.ylabel,
                logx=self.logx, logy=self.logy, xbase=self.xbase,
                xticks=xs if isinstance(self.x, str) else None)))
        return out

    def _curves(self, grid: Grid, cells: Sequence[Cell]) -> tuple:
        from moelab import plots as F

        curves, colors = [], {}
        series = grid.split(cells, (self.series,) if self.series else ())
        for i, (label, scells) in enumerate(series.items()):
            pts = sorted(((x, s) for c in scells if (x := c.x(self.x)) is not None
                          and (s := c.spread(self.metric)).ok), key=lambda p: p[0])
            if not pts:
                continue
            name = " ".join(label) or self.metric
            fit = loglog_slope(scells, self.x, self.metric)
            if fit is not None and self.logx and self.logy:
                name += f" (log-log slope {fit.slope:+.2f})"
            colors[" ".join(label)] = F.color(i)
            xs, spreads = zip(*pts, strict=True)
            curves.append(F.Curve(name, xs, tuple(s.median for s in spreads),
                                  tuple(s.low for s in spreads), tuple(s.high for s in spreads),
                                  color=F.color(i)))
        for name, ref in self.reference.items():
            col = next((c for series, c in colors.items() if series and name.startswith(series)),
                       "black")
            curves.append(F.Curve(name, tuple(ref), tuple(ref.values()), kind="reference", color=col))
        return tuple(curves)


@dataclass(frozen=True)
class Pictures:
    """A figure ``<experiment>-<name>.png`` of routing pictures (``kind`` "circle" or "grid") of
    the seed-0 run of one cell per ``panels`` label (the one at the largest ``last``, if given)."""

    name: str
    caption: str
    kind: Literal["circle", "grid"]
    panels: Key
    where: Select | None = None
    last: Key | None = None

    def figures(self, grid: Grid) -> list[FigureSpec]:
        from moelab import plots as F

        pictures = []
        for (label,), cells in grid.split(grid.select(self.where), (self.panels,)).items():
            c = _last(cells, self.last)
            run = min(c.runs, key=lambda r: (r.seed != 0, r.seed, r.run_id))  # seed 0, else lowest
            pic = run.routing.get("picture") or {}
            if pic.get("kind") != self.kind or not pic.get("paths"):
                continue
            title = f"{self.panels}={label}"
            title += f", {self.last}={c.label(self.last)}" if self.last else ""
            title += f", seed {run.seed}" if run.seed != 0 else ""
            pictures.append(F.RoutingPicture(title, self.kind, tuple(pic["coords"]),
                                             tuple(pic["paths"]),
                                             path_names(run.routing.get("load", []))))
        return [FigureSpec(f"{grid.experiment}-{self.name}", self.caption,
                           partial(F.routing_figure, pictures))] if pictures else []


def path_names(load: Sequence[Sequence[float]]) -> dict[int, str]:
    """Legend text for each path code of a model whose MoE layers have ``len(load[l])`` experts:
    ``"expert e"`` for one layer, ``"(e1, e2, ...)"`` for several (experts numbered from 0, the
    first layer the most significant digit, as the runner encodes paths)."""
    radices = [len(layer) for layer in load]
    if not radices or min(radices) < 1:
        return {}
    paths = itertools.product(*map(range, radices))  # last layer varies fastest
    return {code: f"expert {p[0]}" if len(p) == 1 else f"({', '.join(map(str, p))})"
            for code, p in enumerate(paths)}
