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
from moelab.reporting.declare import Columns
from moelab.reporting.grid import Grid, MissingData, build_grid, deviations
from moelab.reporting.text import FigureSpec, Section, slug

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

    def grid_of(name: str) -> Grid:
        return build_grid(name, related(name) if related is not None else (), registered(name))

    checks, tables, figures = (exp.checks, exp.tables, exp.figures) if exp else ((), (), ())
    verdicts = _declared(checks, notes, lambda s: [
        replace(v, provisional=provisional) for v in s.evaluate(grid)])
    tables = _declared(tables or (Columns(),), notes, lambda s: s.tables(grid, grid_of))
    figures = _declared(figures, notes, lambda s: s.figures(grid)) or _points(grid)
    return Section(
        experiment=experiment, title=exp.title if exp else experiment,
        claim=exp.claim if exp else UNREGISTERED, num_runs=len(runs),
        seeds=tuple(sorted({r.seed for r in runs})), seconds=float(sum(r.seconds for r in runs)),
        verdicts=verdicts, tables=tables, figures=figures,
        notes=tuple(notes) + (exp.notes if exp else ()))


def _declared(specs: Sequence, notes: list[str], render: Callable) -> tuple:
    """What ``render(spec)`` gives for each declaration; one that asks for data the runs lack
    (:class:`MissingData`) becomes a note."""
    out = []
    for spec in specs:
        try:
            out += render(spec)
        except MissingData as exc:
            notes.append(exc.note or f"*Skipped {type(spec).__name__} ({exc}).*")
    return tuple(out)


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


def _points(grid: Grid) -> tuple[FigureSpec, ...]:
    """The figure of an experiment that declares none: test MSE per grid point."""
    from moelab.reporting.figures import points_figure

    cells = [c for c in grid.cells if c.spread("test_mse").ok]
    if not cells:
        return ()
    labels = [", ".join(c.labels[a] for a in grid.axes) or grid.experiment for c in cells]
    spreads = [(s.median, s.low, s.high) for s in (c.spread("test_mse") for c in cells)]
    return (FigureSpec(f"{slug(grid.experiment)}-test-mse", "Test MSE per grid point (median "
                       "over seeds, [min, max] bars)", partial(points_figure, labels, spreads)),)
