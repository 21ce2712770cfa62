"""The tables and figures of an experiment's section, rendered from what it declares
(:mod:`moelab.experiments.displays`) and the grid of its runs: a :class:`Table` of preformatted
strings (written as markdown by :mod:`moelab.reporting.markdown`), a :class:`FigureSpec` whose
``make()`` draws with :mod:`moelab.reporting.figures`.

:func:`render_tables` and :func:`render_figures` dispatch on the declaration's type
(:func:`functools.singledispatch`): a new kind of display is a declaration in experiments and its
renderer registered here (``@render_tables.register(MyTable)``); a declaration without one is a
TypeError naming it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial, singledispatch
from typing import TYPE_CHECKING

from moelab.analysis.rates import max_over_min
from moelab.experiments.displays import Columns, Curves, Pictures, Related, VersusPaper
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
from moelab.experiments.grid import Cell, Grid, MissingData, largest, loglog_slope
from moelab.experiments.paper import paper_slope
from moelab.reporting import figures as F

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Another experiment's grid by name (for a :class:`~moelab.experiments.displays.Related` table).
GridOf = Callable[[str], Grid]


@dataclass(frozen=True)
class Table:
    """A table: ``caption`` above, ``header`` and ``rows`` of preformatted strings."""

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


def _no_renderer(what: str, display: object) -> TypeError:
    kind = type(display)
    return TypeError(f"no {what} renderer for a {kind.__module__}.{kind.__qualname__} "
                     f"({display!r}); register one in moelab.reporting.render with "
                     f"@render_{what}.register({kind.__qualname__})")


# -- tables (each renderer takes its declaration as ``d``) -----------------------------------------

@singledispatch
def render_tables(display: object, grid: Grid, grid_of: GridOf | None = None) -> list[Table]:
    """The tables of a table declaration on ``grid`` (``grid_of(name)``: another experiment's grid).

    Raises:
        TypeError: no renderer is registered for the type of ``display``.
    """
    raise _no_renderer("tables", display)


@render_tables.register(Columns)
def _columns(d: Columns, grid: Grid, grid_of: GridOf | None = None) -> list[Table]:
    header = grid.axes + ("runs",) + tuple(" / ".join(map(metric_header, m.split(" / ")))
                                           for m in d.metrics)
    rows = tuple(tuple(c.labels[a] for a in grid.axes) + (str(len(c.runs)),)
                 + tuple(_entry(c, m) for m in d.metrics) for c in grid.select(d.where))
    return [Table(d.caption, header, rows)]


def _entry(c: Cell, name: str) -> str:
    if " / " not in name:
        return cell(c.spread(name), metric_format(name))
    return " / ".join(metric_format(m)(c.median(m)) for m in name.split(" / "))


@render_tables.register(VersusPaper)
def _versus_paper(d: VersusPaper, grid: Grid, grid_of: GridOf | None = None) -> list[Table]:
    out = []
    for combo, cells in grid.groups(None, d.per).items():
        xs = [x for (x,) in grid.split(cells, (d.x,))]
        header, columns = [str(d.x)], []  # columns: per series, a triple per row
        for s, scells in grid.split(cells, (d.series,) if d.series else ()).items():
            ref = d.paper.get(" ".join(s), d.paper.get("", {}))
            header += [f"ours{where_text((d.series,), s)}", "paper", "ours / paper"]
            columns.append([_versus_row(d, x, ref, scells) for x in xs]
                           + [_versus_summary(d, ref, scells)])
        xs.append(f"{'max/min' if d.summary == 'flat' else 'slope'} over {d.x}")
        rows = tuple((x,) + tuple(h for col in columns for h in col[i]) for i, x in enumerate(xs))
        out.append(Table(f"{d.caption}{where_text(d.per + grid.extra, combo)}",
                         tuple(header), rows))
    return out


def _versus_row(d: VersusPaper, x: str, ref: Mapping[float, float], cells: list[Cell]
                ) -> tuple[str, ...]:
    c = next((c for c in cells if c.label(d.x) == x), None)
    if c is None:
        return ("-", "-", "-")
    ours, paper = c.spread(d.metric), ref.get(c.x(d.x))
    return (cell(ours), sci(paper), ratio(ours.median / paper) if paper else "-")


def _versus_summary(d: VersusPaper, ref: Mapping[float, float], cells: list[Cell]
                    ) -> tuple[str, ...]:
    if d.summary == "flat":
        return (ratio(max_over_min(c.median(d.metric) for c in cells)),
                ratio(max_over_min(ref.values())), "")
    return (slope_text(loglog_slope(cells, d.x, d.metric)), slope_text(paper_slope(ref)), "")


@render_tables.register(Related)
def _related(d: Related, grid: Grid, grid_of: GridOf | None = None) -> list[Table]:
    if grid_of is None:
        raise TypeError(f"a Related table ({d.experiment!r}) needs grid_of, the grids of "
                        "other experiments")
    other = grid_of(d.experiment)
    if not other.select(d.columns.where):
        raise MissingData(f"no runs of {d.experiment}", note=d.missing)
    return render_tables(d.columns, other)


# -- figures: specs whose make() draws; nothing is drawn until the report asks -----------------------

@singledispatch
def render_figures(display: object, grid: Grid) -> list[FigureSpec]:
    """The figure specs of a figure declaration on ``grid``.

    Raises:
        TypeError: no renderer is registered for the type of ``display``.
    """
    raise _no_renderer("figures", display)


@render_figures.register(Curves)
def _curves_figures(d: Curves, grid: Grid) -> list[FigureSpec]:
    out, per = [], (d.per,) if d.per is not None else ()
    by_panel = (d.panels,) if d.panels else ()
    for combo, cells in grid.groups(d.where, per).items():
        panels = [F.Panel(where_text(by_panel, label).strip(" ()"), _curves(d, grid, pcells))
                  for label, pcells in grid.split(cells, by_panel).items()]
        if not any(p.curves for p in panels):
            continue
        xs = sorted({x for p in panels for c in p.curves for x in c.x})
        name = "-".join(filter(None, [grid.experiment, d.name, *map(slug, combo)]))
        out.append(FigureSpec(name, d.caption + where_text(per + grid.extra, combo), partial(
            F.curves_figure, panels, xlabel=d.xlabel or str(d.x), ylabel=d.ylabel,
            logx=d.logx, logy=d.logy, xbase=d.xbase,
            xticks=xs if isinstance(d.x, str) else None)))
    return out


def _curves(d: Curves, grid: Grid, cells: Sequence[Cell]) -> tuple[F.Curve, ...]:
    """One panel's curves: a series' medians with [min, max] bars, then the reference curves."""
    curves, colors = [], {}
    series = grid.split(cells, (d.series,) if d.series else ())
    for i, (label, scells) in enumerate(series.items()):
        pts = sorted(((x, s) for c in scells if (x := c.x(d.x)) is not None
                      and (s := c.spread(d.metric)).ok), key=lambda p: p[0])
        if not pts:
            continue
        name = " ".join(label) or d.metric
        fit = loglog_slope(scells, d.x, d.metric)
        if fit is not None and d.logx and d.logy:
            name += f" (log-log slope {fit.slope:+.2f})"
        colors[" ".join(label)] = F.color(i)
        xs, spreads = zip(*pts, strict=True)
        curves.append(F.Curve(name, xs, tuple(s.median for s in spreads),
                              tuple(s.low for s in spreads), tuple(s.high for s in spreads),
                              color=F.color(i)))
    for name, ref in d.reference.items():
        col = next((c for series, c in colors.items() if series and name.startswith(series)),
                   "black")
        curves.append(F.Curve(name, tuple(ref), tuple(ref.values()), kind="reference", color=col))
    return tuple(curves)


@render_figures.register(Pictures)
def _pictures_figures(d: Pictures, grid: Grid) -> list[FigureSpec]:
    pictures = []
    for (label,), cells in grid.split(grid.select(d.where), (d.panels,)).items():
        c = largest(cells, d.last)
        run = min(c.runs, key=lambda r: (r.seed != 0, r.seed, r.run_id))  # seed 0, else lowest
        pic = run.routing.get("picture") or {}
        if pic.get("kind") != d.kind or not pic.get("paths"):
            continue
        title = f"{d.panels}={label}"
        title += f", {d.last}={c.label(d.last)}" if d.last else ""
        title += f", seed {run.seed}" if run.seed != 0 else ""
        pictures.append(F.RoutingPicture(title, d.kind, tuple(pic["coords"]), tuple(pic["paths"]),
                                         path_names(run.routing.get("load", []))))
    return [FigureSpec(f"{grid.experiment}-{d.name}", d.caption,
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
