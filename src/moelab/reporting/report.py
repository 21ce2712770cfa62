"""The results report of an output directory: ``report.md``, ``figures/*.png`` and the
``results.csv`` / ``results.json`` exports, all from ``results.sqlite``.

Each experiment's section is its grid of runs rendered through what its registration declares
(checks, tables, figures); experiments that declare nothing, and unregistered ones, get a table and
a figure of their test error per grid point. Each section says how its runs differ from the
registered experiment (settings, seeds); verdicts drawn from such runs are marked provisional.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from moelab import __version__
from moelab.atomic import atomic_write
from moelab.experiments.displays import Columns
from moelab.experiments.formats import duration, slug
from moelab.experiments.grid import Grid, MissingData, build_grid, deviations
from moelab.experiments.registry import EXPERIMENTS
from moelab.experiments.spec import Experiment
from moelab.experiments.store import DB_NAME, ResultStore, StoredRun
from moelab.reporting.figures import png_bytes, points_figure
from moelab.reporting.markdown import Section
from moelab.reporting.render import FigureSpec, render_figures, render_tables

Lookup = Callable[[str], Sequence[StoredRun]]
REPORT_NAME = "report.md"
FIGURE_DIR = "figures"
UNREGISTERED = "(not a registered experiment: no claim to check)"

DETERMINISM = (
    "*Determinism:* every run here is bit-reproducible from its seed on CPU (same config and "
    "seed: identical weights, metrics and history; `tests/training/test_loop.py`). On a GPU the "
    "forward pass stays deterministic (each output cell is written once, no atomic adds), but the "
    "backward pass of the token gather (an index_add) and cuBLAS reductions may differ in the "
    "last bits between runs unless `torch.use_deterministic_algorithms(True)` is set."
)

HOW_TO_READ = (
    "*How to read:* a cell `a [b, c]` is the median over seeds `a` with the smallest and largest "
    "seed `[b, c]`; \"paper\" columns hold the paper's published values and ratios are "
    "ours / paper (below 1: lower error than the paper). Each verdict names its check, its "
    "threshold and the numbers behind it: HELD (every check passed), PARTLY (some did), "
    "NOT HELD (none did). A slope claimed below 0 (or above 0) also needs its 95% interval "
    "below 0 (above 0). A verdict marked provisional comes from settings or seeds other than "
    "the registered experiment's (its section lists them)."
)


def write_report(directory: str | Path, *, experiments: Sequence[str] | None = None) -> Path:
    """Write ``directory/report.md`` from ``directory/results.sqlite``; return its path.

    Also writes the report's figures to ``directory/figures/*.png`` and exports every run to
    ``directory/results.csv`` (one row per run) and ``directory/results.json``. Everything is drawn
    in memory first and each file written atomically, ``report.md`` last, so an existing report is
    replaced only by a complete one.

    Args:
        directory: an output directory holding ``results.sqlite``.
        experiments: the experiments to report, in this order; None: every registered experiment
            (those without runs get a line saying so) and then any other stored one.

    Raises:
        StoreError: the database is missing, not SQLite, or not a moelab results database
            (nothing is written then).
        ValueError: a name in ``experiments`` is neither registered nor stored.
    """
    directory = Path(directory)
    store = ResultStore(directory, create=False)
    runs = {name: store.runs(name) for name in _experiment_names(store, experiments)}
    sections = [build_section(name, rs, related=store.runs) for name, rs in runs.items() if rs]
    figures = {f.name: png_bytes(f.make(), dpi=100) for s in sections for f in s.figures}
    markdown = render_markdown(sections, [name for name, rs in runs.items() if not rs], store.runs())
    for name, png in figures.items():
        atomic_write(directory / FIGURE_DIR / f"{name}.png", png)
    store.export_csv(directory / "results.csv")
    store.export_json(directory / "results.json")
    return atomic_write(directory / REPORT_NAME, markdown.encode())


def render_markdown(sections: Sequence[Section], skipped: Sequence[str],
                    all_runs: Sequence[StoredRun]) -> str:
    """The report's markdown. Only the ``Generated`` line depends on the time of writing."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(sorted({r.version for r in all_runs})) or "none"
    total = sum(r.seconds for r in all_runs)
    head = [
        "# moelab results report",
        f"Generated {now} by moelab {__version__} from `{DB_NAME}`.",
        f"**{len(all_runs)} runs** in the database, {duration(total)} of compute in all "
        f"(sum of run times); runs written by moelab {versions}. "
        "All runs: [results.csv](results.csv) (one row per run), [results.json](results.json) "
        "(with training histories).",
        HOW_TO_READ,
        DETERMINISM,
    ]
    contents = []
    for s in sections:
        counts = Counter(v.status for v in s.verdicts)
        tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        tally += " (provisional)" if any(v.provisional for v in s.verdicts) else ""
        contents.append(f"- **{s.experiment}**: {s.num_runs} runs"
                        + (f"; verdicts: {tally}" if tally else ""))
    contents += [f"- **{name}**: no runs in this database, skipped." for name in skipped]
    head.append("## Contents\n\n" + "\n".join(contents))
    body = [s.markdown(FIGURE_DIR) for s in sections]
    return "\n\n".join(head + body) + "\n"


def _experiment_names(store: ResultStore, experiments: Sequence[str] | None) -> list[str]:
    stored = store.experiments()
    if experiments is None:
        return list(EXPERIMENTS) + [n for n in stored if n not in EXPERIMENTS]
    if isinstance(experiments, str):
        raise TypeError(f"experiments must be a sequence of names, got the string {experiments!r}")
    names = list(dict.fromkeys(experiments))
    unknown = [n for n in names if n not in EXPERIMENTS and n not in stored]
    if unknown:
        raise ValueError(f"experiments: unknown {unknown}; registered: {sorted(EXPERIMENTS)}, "
                         f"stored: {stored}")
    return names


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
    tables = _declared(tables or (Columns(),), notes, lambda s: render_tables(s, grid, grid_of))
    figures = _declared(figures, notes, lambda s: render_figures(s, grid)) or _points(grid)
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
    notes = [f"*Not pooled:* runs with the same labels differ in {', '.join(grid.extra)}; each "
             "configuration is its own grid point, reported apart."] if grid.extra else []
    if exp is None:
        return notes, False
    changed = deviations(runs, exp)
    fewest = min(len({r.seed for r in c.runs}) for c in grid.cells)
    if changed:
        notes.append(f"*Settings that differ from the registered experiment:* {'; '.join(changed)}.")
    if fewest < exp.seeds:
        notes.append(f"*Seeds:* as few as {fewest} per grid point (registered: {exp.seeds}).")
    provisional = bool(changed) or fewest < exp.seeds
    if provisional:
        notes.append("*Verdicts are provisional:* they come from settings or seeds other than "
                     "the registered ones.")
    return notes, provisional


def _points(grid: Grid) -> tuple[FigureSpec, ...]:
    """The figure of an experiment that declares none: test MSE per grid point."""
    cells = [c for c in grid.cells if c.spread("test_mse").ok]
    if not cells:
        return ()
    labels = [", ".join(c.labels[a] for a in grid.axes) or grid.experiment for c in cells]
    spreads = [(s.median, s.low, s.high) for s in (c.spread("test_mse") for c in cells)]
    return (FigureSpec(f"{slug(grid.experiment)}-test-mse", "Test MSE per grid point (median "
                       "over seeds, [min, max] bars)", partial(points_figure, labels, spreads)),)
