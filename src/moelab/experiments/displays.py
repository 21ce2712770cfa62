"""What an experiment shows in its report beside its verdicts, declared with it in the registry:
tables (:class:`Table`, rows of formatted numbers) and figures (:class:`FigureSpec`, drawn on
demand by :mod:`moelab.plots`). Each declaration renders itself from the experiment's grid, so
the report needs no code of its own per experiment; matplotlib is loaded only when a figure is
made, so the registry imports this cheaply.

Keys, ``where`` and ``per`` are as for the checks (:mod:`moelab.experiments.checks`): ``per``
gives one table or figure per combination of its keys' labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Literal

from moelab.analysis.rates import max_over_min
from moelab.experiments.formats import (
    cell,
    metric_format,
    metric_header,
    ratio,
    sci,
    slope_text,
    slug,
    where_text,
)
from moelab.experiments.grid import Cell, Grid, Key, MissingData, Select, largest, loglog_slope
from moelab.experiments.paper import paper_slope

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Table:
    """A table: ``caption`` above, ``header`` and ``rows`` of preformatted strings (written as
    markdown by :mod:`moelab.reporting`)."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"table {self.caption!r}: row {row!r} has {len(row)} cells, "
                                 f"header has {len(self.header)}")


@dataclass(frozen=True)
class FigureSpec:
    """A figure to draw: ``make()`` returns a matplotlib Figure, saved as ``figures/<name>.png``."""

    name: str
    caption: str
    make: Callable[[], Figure] = field(compare=False, repr=False)


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
        for combo, cells in grid.groups(None, self.per).items():
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
        for combo, cells in grid.groups(self.where, per).items():
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
            c = largest(cells, self.last)
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
