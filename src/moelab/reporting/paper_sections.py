"""Sections for the paper's two experiments: Table 3 (Experiment I) and Table 4 (Experiment II),
each set beside the paper's numbers, with figures, routing pictures and verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from matplotlib.figure import Figure

from moelab.experiments.store import StoredRun
from moelab.reporting import figures as F
from moelab.reporting.aggregate import (
    Slope,
    as_number,
    config_value,
    fit_slope,
    group_by,
    max_over_min,
    metric,
    metric_spread,
    ordered,
    path_names,
    pick_run,
)
from moelab.reporting.paper import TABLE3, TABLE4
from moelab.reporting.section import (
    FigureSpec,
    Section,
    Table,
    Verdict,
    axis_order,
    cell,
    make_section,
    num,
    ratio,
    sci,
    slope_text,
    status_of,
)

FLAT_TOLERANCE = 1.5  # max/min of the medians over D that still counts as flat in D
PAPER_FACTOR = 2.0  # ours <= this x the paper counts as reproducing Table 3
DEEP_SLOPE = -0.5  # the deep model "keeps improving": slope <= this, interval below 0
PLATEAU_SLOPE = -0.5  # the shallow model "plateaus": slope > this


def _prefer(labels: Sequence[str], wanted: str) -> str:
    return wanted if wanted in labels else labels[-1]


def _picture(run: StoredRun | None, kind: str, title: str) -> F.RoutingPicture | None:
    pic = (run.routing.get("picture") if run is not None else None) or {}
    if pic.get("kind") != kind or not pic.get("paths"):
        return None
    if run.seed != 0:
        title += f", seed {run.seed}"
    return F.RoutingPicture(title, kind, tuple(pic["coords"]), tuple(pic["paths"]),
                            path_names(run.routing.get("load", [])))


# -- Table 3 ----------------------------------------------------------------------------------------

def table3_section(runs: Sequence[StoredRun]) -> Section:
    """Experiment I: median test MSE per D and recipe beside Table 3; flatness in D."""
    order = axis_order("table3")
    groups = group_by(runs, ("D", "recipe"), {"D": "task.D", "recipe": lambda r: "custom"})
    d_labels = ordered((k[0] for k in groups), order.get("D", ()))
    recipes = ordered((k[1] for k in groups), order.get("recipe", ()))
    stats = {key: metric_spread(rs, "test_mse") for key, rs in groups.items()}

    def median(d: str, rec: str) -> float:
        s = stats.get((d, rec))
        return s.median if s is not None else math.nan

    def paper(d: str) -> float | None:
        number = as_number(d)
        return TABLE3.get(int(number)) if number is not None and number.is_integer() else None

    header = ("D", "paper (Table 3)") + tuple(
        h for rec in recipes for h in (f"{rec} recipe", f"{rec} recipe / Table 3"))
    rows = []
    for d in d_labels:
        row = [d, sci(paper(d))]
        for rec in recipes:
            s = stats.get((d, rec))
            p = paper(d)
            row += [cell(s) if s else "-", ratio(s.median / p) if s and p else "-"]
        rows.append(tuple(row))
    flat = {rec: max_over_min(median(d, rec) for d in d_labels) for rec in recipes}
    rows.append(("max/min over D", ratio(max_over_min(TABLE3.values())))
                + tuple(h for rec in recipes for h in (ratio(flat[rec]), "")))
    tables = [Table("Test MSE by ambient dimension D (median [min, max] over seeds; last row: "
                    "max/min of the medians over D)", header,
                    tuple(rows))]

    best = _prefer(recipes, "best")
    ratios = [(d, median(d, best) / paper(d)) for d in d_labels if paper(d) is not None]
    ratios = [(d, r) for d, r in ratios if math.isfinite(r)]
    verdicts = [Verdict(
        status_of([r <= PAPER_FACTOR for _, r in ratios]),
        f"(a) {best}-recipe median <= {PAPER_FACTOR:g}x the paper at every D",
        ", ".join(f"D={d}: {ratio(r)}x" for d, r in ratios) or "no D with a paper value",
    )]
    x_d = [(d, as_number(d)) for d in d_labels if as_number(d) is not None]
    slopes: dict[str, Slope | None] = {}
    for rec in recipes:
        pts = [(x, metric(r, "test_mse")) for d, x in x_d for r in groups.get((d, rec), [])]
        slopes[rec] = fit_slope([x for x, _ in pts], [y for _, y in pts])
        verdicts.append(Verdict(
            status_of([flat[rec] <= FLAT_TOLERANCE] if math.isfinite(flat[rec]) else []),
            f"(b) flat in D, {rec} recipe: max/min of the medians over D <= {FLAT_TOLERANCE:g}",
            f"max/min {ratio(flat[rec])} (paper's own {ratio(max_over_min(TABLE3.values()))}); "
            f"slope in D {slope_text(slopes[rec])} (theory 0)",
        ))

    figs = []
    if x_d:
        figs.append(FigureSpec("table3-mse-vs-D", "Test MSE vs ambient dimension D: median over "
                               "seeds with [min, max] bars, the paper's Table 3, and the theory's "
                               "flat line", partial(_table3_curves, stats, x_d, recipes, slopes, best)))
    pictures = [_picture(pick_run(groups.get((d, best), [])), "circle", f"D={d}")
                for d in d_labels]
    pictures = [p for p in pictures if p is not None]
    if pictures:
        figs.append(FigureSpec(
            "table3-routing", f"Routing on the circle ({best} recipe, seed 0): the expert each "
            "angle is sent to", partial(F.circle_routing_figure, pictures)))
    return make_section("table3", runs, verdicts=verdicts, tables=tables, figures=figs)


def _table3_curves(stats, x_d, recipes, slopes, best) -> Figure:
    curves, level = [], []
    for i, rec in enumerate(recipes):
        pts = [(x, stats[(d, rec)]) for d, x in x_d if (d, rec) in stats and stats[(d, rec)].ok]
        if pts:
            fit = slopes.get(rec)
            label = f"{rec} recipe" + (f" (slope {fit.slope:+.2f})" if fit else "")
            if rec == best:
                level = [s.median for _, s in pts]
            curves.append(F.Curve(label, tuple(x for x, _ in pts), tuple(s.median for _, s in pts),
                                  tuple(s.low for _, s in pts), tuple(s.high for _, s in pts),
                                  color=F.color(i)))
    curves.append(F.Curve("paper, Table 3", tuple(TABLE3), tuple(TABLE3.values()),
                          kind="reference", color="black"))
    ys = [y for y in (level or TABLE3.values()) if y > 0]
    xs = sorted({x for _, x in x_d} | set(TABLE3))
    geo = math.exp(sum(math.log(y) for y in ys) / len(ys))
    curves.append(F.Curve("theory: flat in D (slope 0)", (xs[0], xs[-1]), (geo, geo),
                          kind="theory", color="gray"))
    return F.curves_figure([F.Panel("1-4-MoE on the unit circle in R^D", tuple(curves))],
                           xlabel="ambient dimension D", xticks=xs)


# -- Table 4 ----------------------------------------------------------------------------------------

def _model_of(run: StoredRun) -> str:
    return f"{config_value(run, 'model.layers')}-{config_value(run, 'model.moe.num_experts')}-MoE"


def _layers(runs: Sequence[StoredRun]) -> float:
    values = [v for v in (config_value(r, "model.layers") for r in runs) if isinstance(v, int)]
    return max(values) if values else math.nan


def table4_section(runs: Sequence[StoredRun]) -> Section:
    """Experiment II: deep (2-3-MoE) vs shallow (1-6-MoE) test MSE vs expert width m beside
    Table 4, per output form and recipe; routing pictures and path counts; verdicts."""
    order = axis_order("table4")
    keys = ("model", "m", "output", "recipe")
    groups = group_by(runs, keys, {"model": _model_of, "m": "model.moe.expert_hidden",
                                   "output": "task.output", "recipe": lambda r: "custom"})
    models, ms, outputs, recipes = (
        ordered((k[i] for k in groups), order.get(name, ())) for i, name in enumerate(keys))
    m_x = [(m, as_number(m)) for m in ms if as_number(m) is not None]
    by_layers = sorted(models, key=lambda mo: _layers(
        [r for k, rs in groups.items() if k[0] == mo for r in rs]))
    shallow, deep = (by_layers[0], by_layers[-1]) if len(models) > 1 else (None, None)
    paper_slopes = {mo: fit_slope(list(v), list(v.values())) for mo, v in TABLE4.items()}

    tables, verdicts, figs = [], [], []
    for out in outputs:
        panels = []
        for rec in recipes:
            cells = {(mo, m): metric_spread(groups[(mo, m, out, rec)], "test_mse")
                     for mo in models for m in ms if (mo, m, out, rec) in groups}
            if not cells:
                continue
            slopes = {mo: fit_slope(*_points(groups, mo, m_x, out, rec)) for mo in models}
            tables.append(_table4_table(out, rec, models, ms, cells, slopes))
            panels.append(_table4_panel(f"{out} output, {rec} recipe", models, m_x, cells, slopes))
            if deep is not None:
                verdicts += _table4_verdicts(out, rec, deep, shallow, m_x, cells, slopes,
                                             paper_slopes)
        if panels:
            figs.append(FigureSpec(
                f"table4-mse-vs-m-{out}", f"Test MSE vs expert width m, {out} output: median over "
                "seeds with [min, max] bars; dashed: the paper's Table 4",
                partial(F.curves_figure, panels, xlabel="expert width m",
                        xticks=[x for _, x in m_x])))

    out = _prefer(outputs, "vector")
    rec = _prefer(recipes, "best")
    tables.append(_paths_table(groups, models, ms, out, rec))
    pictures = []
    for mo in models:
        present = [m for m, _ in m_x if (mo, m, out, rec) in groups]
        if present:
            run = pick_run(groups[(mo, present[-1], out, rec)])
            pictures.append(_picture(run, "grid", f"{mo}, m={present[-1]}"))
    pictures = [p for p in pictures if p is not None]
    if pictures:
        figs.append(FigureSpec(
            "table4-routing", f"Expert paths on [0, 3]^2 ({out} output, {rec} recipe, seed 0, "
            "largest m); black lines: the 9 unit pieces, each labelled by its majority path",
            partial(F.grid_routing_figure, pictures)))
    tables.append(_construction_table([int(x) for _, x in m_x]))
    notes = ["The paper does not say whether its target is the vector of Eq. (4) or a scalar; "
             "each output form below is set beside the same Table 4 column.",
             "Contrast (last table): the hand-built deep network of Thm 5.3 for the same target, "
             "built without training (`moelab construct thm5.3`), uses all 9 expert paths."]
    return make_section("table4", runs, verdicts=verdicts, tables=tables, figures=figs,
                        notes=notes)


def _construction_table(widths: Sequence[int]) -> Table:
    """The Thm 5.3 construction (E = 3, L = 2, vector target) at the table's widths, as built."""
    from moelab.constructions import build_piecewise_moe

    rows = []
    for m in widths:
        _, summary = build_piecewise_moe(3, 2, m=m)
        rows.append((str(m), sci(summary.mse), sci(summary.sup_error),
                     f"{summary.paths_seen} / {summary.paths_possible}",
                     f"{summary.params_active:,.0f}"))
    return Table("Hand-built deep construction (Thm 5.3: 4 layers, 3 experts in the routed layers, "
                 "vector target; no training): test MSE, sup error, expert paths, active "
                 "parameters", ("m", "test MSE", "sup error", "paths", "active parameters"),
                 tuple(rows))


def _points(groups, model: str, m_x, out: str, rec: str) -> tuple[list[float], list[float | None]]:
    pts = [(x, metric(r, "test_mse")) for m, x in m_x for r in groups.get((model, m, out, rec), [])]
    return [x for x, _ in pts], [y for _, y in pts]


def _paper4(model: str, m: str) -> float | None:
    x = as_number(m)
    return TABLE4.get(model, {}).get(int(x)) if x is not None and x.is_integer() else None


def _table4_table(out, rec, models, ms, cells, slopes) -> Table:
    header = ("m",) + tuple(h for mo in models for h in (f"{mo}: median [min, max]", "paper"))
    rows = [(m,) + tuple(h for mo in models for h in (
        cell(cells[(mo, m)]) if (mo, m) in cells else "-", sci(_paper4(mo, m)))) for m in ms]
    rows.append(("slope in m",) + tuple(h for mo in models for h in (
        slope_text(slopes.get(mo)),
        slope_text(fit_slope(list(TABLE4[mo]), list(TABLE4[mo].values())))
        if mo in TABLE4 else "-")))
    return Table(f"Test MSE, {out} output, {rec} recipe (median [min, max] over seeds; slope: "
                 "fitted exponent of m with 95% interval)", header, tuple(rows))


def _table4_panel(title, models, m_x, cells, slopes) -> F.Panel:
    curves = []
    for i, mo in enumerate(models):
        pts = [(x, cells[(mo, m)]) for m, x in m_x if (mo, m) in cells and cells[(mo, m)].ok]
        fit = slopes.get(mo)
        if pts:
            curves.append(F.Curve(
                mo + (f" (slope {fit.slope:+.2f})" if fit else ""), tuple(x for x, _ in pts),
                tuple(s.median for _, s in pts), tuple(s.low for _, s in pts),
                tuple(s.high for _, s in pts), color=F.color(i)))
        if mo in TABLE4:
            curves.append(F.Curve(f"{mo}, paper", tuple(TABLE4[mo]), tuple(TABLE4[mo].values()),
                                  kind="reference", color=F.color(i)))
    return F.Panel(title, tuple(curves))


def _table4_verdicts(out, rec, deep, shallow, m_x, cells, slopes, paper_slopes) -> list[Verdict]:
    where = f"{out} output, {rec} recipe"
    both = [(m, x) for m, x in m_x if cells.get((deep, m)) and cells.get((shallow, m))
            and cells[(deep, m)].ok and cells[(shallow, m)].ok]
    verdicts = []
    if both:
        m, _ = both[-1]
        d, s = cells[(deep, m)].median, cells[(shallow, m)].median
        verdicts.append(Verdict(
            status_of([d < s]), f"{deep} beats {shallow} at the largest m ({where})",
            f"m={m}: {sci(d)} vs {sci(s)}, {shallow}/{deep} = {ratio(s / d)}x"))
    else:
        verdicts.append(Verdict(status_of([]), f"{deep} beats {shallow} ({where})",
                                "no m with runs of both models"))
    fd, fs = slopes.get(deep), slopes.get(shallow)
    flags = []
    if fd is not None:
        flags.append(fd.clearly_negative and fd.slope <= DEEP_SLOPE)
    if fs is not None:
        flags.append(fs.slope > PLATEAU_SLOPE)
    verdicts.append(Verdict(
        status_of(flags) if fd is not None and fs is not None else status_of([]),
        f"{deep} keeps improving with m while {shallow} plateaus ({where})",
        f"slope {deep} {slope_text(fd, predicted=_slope_of(paper_slopes.get(deep)))}, "
        f"{shallow} {slope_text(fs, predicted=_slope_of(paper_slopes.get(shallow)))}; "
        f"improving: slope <= {DEEP_SLOPE:g} with its interval below 0; "
        f"plateau: slope > {PLATEAU_SLOPE:g}"))
    return verdicts


def _slope_of(fit: Slope | None) -> float | None:
    return fit.slope if fit is not None else None


def _paths_table(groups, models, ms, out: str, rec: str) -> Table:
    names = ("num_paths", "pieces_separated", "distinct_majority_paths", "routing_purity")
    rows = []
    for mo in models:
        for m in ms:
            rs = groups.get((mo, m, out, rec))
            if rs:
                regions = metric_spread(rs, "regions")
                rows.append((mo, m, num(regions.median))
                            + tuple(cell(metric_spread(rs, n), num) for n in names))
    return Table(f"Expert paths on test points ({out} output, {rec} recipe; median [min, max] over "
                 "seeds): distinct paths used, pieces given a path of their own, distinct "
                 "majority paths, fraction of points on their piece's majority path",
                 ("model", "m", "pieces") + names, tuple(rows))
