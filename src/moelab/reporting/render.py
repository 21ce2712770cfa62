"""The generic section: an experiment's grid of runs rendered through what its registration
declares (checks, tables, figures). Experiments that declare nothing, and unregistered ones, get a
table and a figure of their test error per grid point.

Each section says how its runs differ from the registered experiment (settings, seeds); verdicts
drawn from such runs are marked provisional.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

from moelab.experiments.registry import EXPERIMENTS
from moelab.experiments.spec import Experiment
from moelab.experiments.store import StoredRun
from moelab.reporting import figures as F
from moelab.reporting.aggregate import fit_slope, path_names, pick_run
from moelab.reporting.declare import (
    Columns,
    Curves,
    Pictures,
    Related,
    VersusPaper,
    groups,
    points,
    where_text,
)
from moelab.reporting.grid import Grid, MissingData, build_grid, deviations
from moelab.reporting.section import FigureSpec, Section
from moelab.reporting.text import Table

Lookup = Callable[[str], Sequence[StoredRun]]
UNREGISTERED = "(not a registered experiment: no claim to check)"


def registered(name: str) -> Experiment | None:
    """The registered experiment ``name``, or None."""
    factory = EXPERIMENTS.get(name)
    return factory() if factory is not None else None


def build_section(experiment: str, runs: Sequence[StoredRun], *,
                  related: Lookup | None = None) -> Section:
    """The section of ``experiment``'s ``runs``, rendered from its registered declarations;
    ``related(name)`` gives another experiment's runs (for a :class:`Related` table)."""
    exp = registered(experiment)
    grid = build_grid(experiment, runs, exp)
    notes, provisional = _honesty(grid, runs, exp)
    verdicts, tables, figures = [], [], []
    for spec in (exp.checks if exp else ()):
        verdicts += _declared(spec, notes, lambda s: [
            replace(v, provisional=provisional) for v in s.evaluate(grid)])
    for spec in (exp.tables if exp else ()) or (Columns(),):
        tables += _declared(spec, notes, lambda s: _tables(s, grid, related, notes))
    for spec in (exp.figures if exp else ()):
        figures += _declared(spec, notes, lambda s: _figures(s, grid))
    if not figures:
        figures = _points(grid)
    return Section(
        experiment=experiment, title=exp.title if exp else experiment,
        claim=exp.claim if exp else UNREGISTERED, num_runs=len(runs),
        seeds=tuple(sorted({r.seed for r in runs})), seconds=float(sum(r.seconds for r in runs)),
        verdicts=tuple(verdicts), tables=tuple(tables), figures=tuple(figures),
        notes=tuple(notes) + (exp.notes if exp else ()))


def _declared(spec, notes: list[str], render: Callable) -> list:
    """``render(spec)``; a declaration whose config paths the runs lack becomes a note."""
    try:
        return render(spec)
    except MissingData as exc:
        notes.append(f"*Skipped {type(spec).__name__} ({exc}).*")
        return []


def _honesty(grid: Grid, runs: Sequence[StoredRun], exp: Experiment | None
             ) -> tuple[list[str], bool]:
    """Notes on how the runs differ from the registration, and whether verdicts are provisional."""
    notes = []
    if grid.extra:
        notes.append(f"*Not pooled:* runs with the same labels differ in {', '.join(grid.extra)}; "
                     "each configuration is its own grid point, reported apart.")
    if exp is None:
        return notes, False
    changed = deviations(runs, exp)
    if changed:
        notes.append("*Settings that differ from the registered experiment:* "
                     + "; ".join(changed) + ".")
    fewest = min(len({r.seed for r in c.runs}) for c in grid.cells)
    if fewest < exp.seeds:
        notes.append(f"*Seeds:* as few as {fewest} per grid point (registered: {exp.seeds}).")
    provisional = bool(changed) or fewest < exp.seeds
    if provisional:
        notes.append("*Verdicts are provisional:* they come from settings or seeds other than "
                     "the registered ones.")
    return notes, provisional


def _tables(spec, grid: Grid, related: Lookup | None, notes: list[str]) -> list[Table]:
    if isinstance(spec, Columns):
        return [spec.table(grid)]
    if isinstance(spec, VersusPaper):
        return spec.tables(grid)
    if isinstance(spec, Related):
        runs = related(spec.experiment) if related is not None else ()
        other = build_grid(spec.experiment, runs, registered(spec.experiment))
        if not other.select(spec.columns.where):
            notes.append(spec.missing)
            return []
        return [spec.columns.table(other)]
    raise TypeError(f"tables: {spec!r} is not a Columns, VersusPaper or Related declaration")


def _figures(spec, grid: Grid) -> list[FigureSpec]:
    if isinstance(spec, Curves):
        return _curves(spec, grid)
    if isinstance(spec, Pictures):
        return _pictures(spec, grid)
    raise TypeError(f"figures: {spec!r} is not a Curves or Pictures declaration")


def _curves(spec: Curves, grid: Grid) -> list[FigureSpec]:
    out = []
    per = (spec.per,) if spec.per is not None else ()
    for combo, cells in groups(grid, spec.where, per).items():
        panels, xs = [], set()
        for label, pcells in grid.split(cells, (spec.panels,) if spec.panels else ()).items():
            curves = _series(spec, grid, pcells)
            xs |= {x for c in curves for x in c.x}
            panels.append(F.Panel(where_text((spec.panels,), label).strip(" ()")
                                  if spec.panels else "", tuple(curves)))
        if not any(p.curves for p in panels):
            continue
        name = "-".join(filter(None, [grid.experiment, spec.name, *map(_slug, combo)]))
        out.append(FigureSpec(name, spec.caption + where_text(per + grid.extra, combo), partial(
            F.curves_figure, panels, xlabel=spec.xlabel or str(spec.x), ylabel=spec.ylabel,
            logx=spec.logx, logy=spec.logy, xbase=spec.xbase,
            xticks=sorted(xs) if isinstance(spec.x, str) else None)))
    return out


def _series(spec: Curves, grid: Grid, cells) -> list[F.Curve]:
    curves, colors = [], {}
    for i, (label, scells) in enumerate(grid.split(cells, (spec.series,) if spec.series else ())
                                        .items()):
        name = " ".join(label) or spec.metric
        pts = sorted(((grid.x(c, spec.x), c.spread(spec.metric)) for c in scells),
                     key=lambda p: p[0] if p[0] is not None else 0.0)
        pts = [(x, s) for x, s in pts if x is not None and s.ok]
        if not pts:
            continue
        fit = fit_slope(*points(grid, scells, spec.x, spec.metric))
        if fit is not None and spec.logx and spec.logy:
            name += f" (log-log slope {fit.slope:+.2f})"
        colors[" ".join(label)] = F.color(i)
        curves.append(F.Curve(name, tuple(x for x, _ in pts), tuple(s.median for _, s in pts),
                              tuple(s.low for _, s in pts), tuple(s.high for _, s in pts),
                              color=F.color(i)))
    for name, ref in spec.reference.items():
        col = next((c for series, c in colors.items() if series and name.startswith(series)),
                   "black")
        curves.append(F.Curve(name, tuple(ref), tuple(ref.values()), kind="reference", color=col))
    return curves


def _pictures(spec: Pictures, grid: Grid) -> list[FigureSpec]:
    pictures = []
    for (label,), cells in grid.split(grid.select(spec.where), (spec.panels,)).items():
        c = max(cells, key=lambda c: grid.x(c, spec.last) or 0.0) if spec.last else cells[-1]
        run = pick_run(c.runs)
        pic = run.routing.get("picture") or {}
        if pic.get("kind") != spec.kind or not pic.get("paths"):
            continue
        title = f"{spec.panels}={label}"
        title += f", {spec.last}={grid.label(c, spec.last)}" if spec.last else ""
        title += f", seed {run.seed}" if run.seed != 0 else ""
        pictures.append(F.RoutingPicture(title, spec.kind, tuple(pic["coords"]),
                                         tuple(pic["paths"]),
                                         path_names(run.routing.get("load", []))))
    if not pictures:
        return []
    return [FigureSpec(f"{grid.experiment}-{spec.name}", spec.caption,
                       partial(F.routing_figure, pictures))]


def _points(grid: Grid) -> list[FigureSpec]:
    """The figure of an experiment that declares none: test MSE per grid point."""
    cells = [c for c in grid.cells if c.spread("test_mse").ok]
    if not cells:
        return []
    labels = [", ".join(c.labels[a] for a in grid.axes) or grid.experiment for c in cells]
    spreads = [(s.median, s.low, s.high) for s in (c.spread("test_mse") for c in cells)]
    return [FigureSpec(f"{_slug(grid.experiment)}-test-mse", "Test MSE per grid point (median "
                       "over seeds, [min, max] bars)", partial(F.points_figure, labels, spreads))]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
