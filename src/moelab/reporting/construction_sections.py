"""The section of the ``constructions`` experiment: hand-built networks of the theorems, measured
as built — sup error against the theorem's bound, expert paths, and the rate in m."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from moelab.experiments.store import StoredRun
from moelab.reporting import figures as F
from moelab.reporting.aggregate import config_value, fit_slope, metric, ordered
from moelab.reporting.section import (
    FigureSpec,
    Section,
    Table,
    Verdict,
    make_section,
    num,
    sci,
    slope_text,
    status_of,
)

#: The theorems' worst-case exponent -(kappa/d min 1/2) for smooth targets.
THEOREM_EXPONENT = -0.5


def constructions_section(runs: Sequence[StoredRun]) -> Section:
    groups: dict[str, list[StoredRun]] = {}
    for r in runs:
        groups.setdefault(r.labels.get("construction", r.config["model"]["construction"]),
                          []).append(r)
    names = ordered(groups)
    rows, verdicts, curves = [], [], []
    for i, name in enumerate(names):
        rs = sorted(groups[name], key=lambda r: config_value(r, "model.moe.expert_hidden"))
        ms = [config_value(r, "model.moe.expert_hidden") for r in rs]
        sups = [r.test_sup for r in rs]
        bounds = [metric(r, "bound") for r in rs]
        for m, r, b in zip(ms, rs, bounds, strict=True):
            rows.append((name, str(m), sci(r.test_sup), sci(b), sci(r.test_mse),
                         f"{metric(r, 'num_paths'):.0f} / {metric(r, 'paths_possible'):.0f}",
                         num(metric(r, "misrouted")), f"{metric(r, 'parameters'):,.0f}"))
        slope = fit_slope(ms, sups)
        within = all(b is not None and s <= b * (1 + 1e-6) for s, b in zip(sups, bounds,
                                                                            strict=True))
        routed = all(metric(r, "misrouted") == 0 for r in rs)
        paths = all(metric(r, "num_paths") == metric(r, "paths_possible") for r in rs)
        fast = slope is not None and slope.ci_high <= THEOREM_EXPONENT
        verdicts.append(Verdict(
            status_of([within, routed, paths, fast]),
            f"{name}: sup error <= bound at every m, no point misrouted, every expert path used, "
            f"rate at least m^{THEOREM_EXPONENT:+.1f}",
            f"bound {'held' if within else 'exceeded'}; misrouted "
            f"{'0' if routed else '> 0'}; paths {'all' if paths else 'not all'}; "
            f"slope {slope_text(slope)}"))
        curves.append(F.Curve(name, tuple(map(float, ms)), tuple(sups), color=F.color(i)))
    tables = [Table("Constructions as built (no training): sup error against the theorem's bound "
                    "computed from the construction's ingredients, MSE, expert paths seen / "
                    "possible, misrouted fraction, parameters",
                    ("construction", "m", "sup error", "bound", "MSE", "paths", "misrouted",
                     "parameters"), tuple(rows))]
    figs = [FigureSpec("constructions-rate", "Sup error of the hand-built constructions against "
                       "the expert width m (log-log)", partial(_figure, tuple(curves)))]
    notes = ["Exact interpolation of smooth 1-D pieces falls like m^-2, faster than the theorems' "
             "worst-case exponent -(kappa/d min 1/2) = -1/2; both are shown."]
    return make_section("constructions", runs, verdicts=verdicts, tables=tables, figures=figs,
                        notes=notes)


def _figure(curves: tuple[F.Curve, ...]):
    return F.curves_figure([F.Panel("constructions", curves)], xlabel="expert width m",
                           ylabel="sup error")
