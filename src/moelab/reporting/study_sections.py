"""Sections for moelab's own studies of the paper's claims (dense vs MoE, depth, gating,
low-dimensional experts, intrinsic dimension) and a generic section for any other experiment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from moelab.experiments.store import StoredRun
from moelab.reporting import figures as F
from moelab.reporting.aggregate import (
    Spread,
    config_value,
    first_number,
    fit_slope,
    group_by,
    loglog_crossing,
    max_over_min,
    metric,
    metric_spread,
    natural_key,
    ordered,
)
from moelab.reporting.section import (
    FigureSpec,
    Section,
    Table,
    Verdict,
    axis_order,
    cell,
    count,
    make_section,
    num,
    ratio,
    sci,
    slope_text,
    status_of,
)

MATCH_FACTOR = 2.0  # "matches": median test MSE within this factor
FLAT_TOLERANCE = 1.5  # max/min over D that still counts as flat


def _spread_curve(label: str, pts: Sequence[tuple[float, Spread]], color: str) -> F.Curve:
    pts = sorted((x, s) for x, s in pts if s.ok)
    return F.Curve(label, tuple(x for x, _ in pts), tuple(s.median for _, s in pts),
                   tuple(s.low for _, s in pts), tuple(s.high for _, s in pts), color=color)


def _int(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


# -- dense vs MoE -----------------------------------------------------------------------------------

def dense_vs_moe_section(runs: Sequence[StoredRun]) -> Section:
    """Error vs activated parameters for MoE and dense nets; the dense/MoE parameter ratio at equal
    error (log-log interpolation along the dense curve), set against E."""
    order = axis_order("dense-vs-moe")
    keys = ("task", "D", "model")
    groups = group_by(runs, keys, {"task": "task.manifold", "D": "task.D",
                                   "model": "model.kind"})
    tasks, ds, models = (ordered((k[i] for k in groups), order.get(n, ()))
                         for i, n in enumerate(keys))
    mse_rows, ratio_rows, verdicts, figs = [], [], [], []
    for task in tasks:
        panels = []
        for d in ds:
            cells = {mo: groups[(task, d, mo)] for mo in models if (task, d, mo) in groups}
            if not cells:
                continue
            mse_rows.append((task, d) + tuple(
                sci(metric_spread(cells[mo], "test_mse").median) if mo in cells else "-"
                for mo in models))
            moe = _points(cells, "moe")
            dense = _points(cells, "dense")
            panels.append(F.Panel(f"{task}, D={d}", (
                _spread_curve("MoE (active)", [(p, s) for _, p, s, _ in moe], F.color(0)),
                _spread_curve("dense", [(p, s) for _, p, s, _ in dense], F.color(1)))))
            flags, texts = [], []
            for label, params, s, experts in moe:
                cross = loglog_crossing([p for _, p, _, _ in dense],
                                        [t.median for _, _, t, _ in dense], s.median)
                if cross is None:
                    continue
                factor = cross.size / params
                bound = {"=": "", "<=": "<= ", ">": "> "}[cross.bound]
                flags.append(factor >= experts / 2 and cross.bound != "<=")
                texts.append(f"{label}: {bound}{ratio(factor)}x")
                ratio_rows.append((task, d, label, count(params), sci(s.median),
                                   f"{bound}{count(cross.size)}", f"{bound}{ratio(factor)}",
                                   str(experts)))
            e_text = "/".join(sorted({str(e) for *_, e in moe})) or "?"
            verdicts.append(Verdict(
                status_of(flags), f"dense needs about E = {e_text} times the MoE's activated "
                f"parameters ({task}, D={d}); held when the ratio >= E/2",
                ", ".join(texts) or "no MoE and dense runs to compare"))
        if panels:
            figs.append(FigureSpec(
                f"dense-vs-moe-{_slug(task)}", f"Test MSE vs activated parameters, {task}: "
                "MoE vs dense (median over seeds, [min, max] bars)",
                partial(F.curves_figure, panels, xlabel="activated parameters", xbase=10)))
    tables = [
        Table("Median test MSE per model", ("task", "D") + tuple(models), tuple(mse_rows)),
        Table("Activated parameters a dense net needs to match each MoE's error (log-log "
              "interpolation along the dense curve; '>' never matched, '<=' matched by the "
              "smallest dense net)",
              ("task", "D", "MoE", "active params", "MoE test MSE", "dense params needed",
               "ratio", "E"), tuple(ratio_rows)),
    ]
    return make_section("dense-vs-moe", runs, verdicts=verdicts, tables=tables, figures=figs)


def _points(cells, kind: str) -> list[tuple[str, float, Spread, int]]:
    """(label, median activated parameters, test MSE spread, experts) of each model of ``kind``."""
    out = []
    for label, rs in cells.items():
        if config_value(rs[0], "model.kind") != kind:
            continue
        params = metric_spread(rs, "active_parameters")
        s = metric_spread(rs, "test_mse")
        if params.ok and s.ok:
            out.append((label, params.median, s,
                        _int(config_value(rs[0], "model.moe.num_experts"), 1)))
    return sorted(out, key=lambda p: p[1])


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


# -- depth ------------------------------------------------------------------------------------------

def depth_section(runs: Sequence[StoredRun]) -> Section:
    """Pieces separated by L-layer vs 1-layer MoEs on Eq. (4): E^L vs L*E."""
    groups: dict[tuple[int, str], list[StoredRun]] = {}
    for r in runs:
        L = _int(config_value(r, "task.L"), 0)
        kind = "deep" if _int(config_value(r, "model.layers"), 1) > 1 else "shallow"
        groups.setdefault((L, kind), []).append(r)
    rows, verdicts = [], []
    names = ("num_paths", "pieces_separated", "distinct_majority_paths")
    for L in sorted({k[0] for k in groups}):
        sep = {}
        for kind in ("deep", "shallow"):
            rs = groups.get((L, kind))
            if not rs:
                continue
            E = _int(config_value(rs[0], "task.E"), 0)
            layers = _int(config_value(rs[0], "model.layers"), 1)
            experts = _int(config_value(rs[0], "model.moe.num_experts"), 0)
            sep[kind] = metric_spread(rs, "pieces_separated")
            rows.append((str(L), kind, f"{layers} x {experts}", str(E**L),
                         cell(metric_spread(rs, "test_mse")))
                        + tuple(cell(metric_spread(rs, n), num) for n in names))
        if "deep" in sep and "shallow" in sep and sep["deep"].ok and sep["shallow"].ok:
            E = _int(config_value(groups[(L, "deep")][0], "task.E"), 0)
            d, s = sep["deep"].median, sep["shallow"].median
            verdicts.append(Verdict(
                status_of([d > s, d >= E**L]),
                f"L={L}: the deep MoE separates more pieces than the shallow one, and all E^L",
                f"deep {num(d)} of E^L = {E**L}, shallow {num(s)} (at most L*E = {L * E})"))
    tables = [Table("Deep (L layers x E experts) vs shallow (1 layer x L*E experts) on Eq. (4): "
                    "test MSE and expert paths (median [min, max] over seeds)",
                    ("L", "model", "experts", "pieces E^L", "test MSE") + names, tuple(rows))]
    figs = []
    ls = sorted({k[0] for k in groups if k[0] > 0})
    if ls:
        figs.append(FigureSpec("depth-pieces", "Pieces separated vs L: deep vs shallow MoE, with "
                               "E^L and L*E", partial(_depth_figure, groups, ls)))
    return make_section("depth", runs, verdicts=verdicts, tables=tables, figures=figs)


def _depth_figure(groups, ls: list[int]):
    E = next((_int(config_value(rs[0], "task.E"), 0) for rs in groups.values()), 0)
    curves = [_spread_curve(kind, [(L, metric_spread(groups[(L, kind)], "pieces_separated"))
                                   for L in ls if (L, kind) in groups], F.color(i))
              for i, kind in enumerate(("deep", "shallow"))]
    curves += [F.Curve("E^L", tuple(ls), tuple(float(E**L) for L in ls), kind="theory",
                       color=F.color(0)),
               F.Curve("L*E", tuple(ls), tuple(float(L * E) for L in ls), kind="theory",
                       color=F.color(1))]
    return F.curves_figure([F.Panel(f"Eq. (4), E = {E}", tuple(curves))], xlabel="L",
                           ylabel="pieces separated", logx=False, xticks=ls)


# -- gating -----------------------------------------------------------------------------------------

def gating_section(runs: Sequence[StoredRun]) -> Section:
    """Linear vs MLP routers: test MSE and routing purity; does a 1-layer MLP-router MoE match the
    2-layer linear-router one?"""
    order = axis_order("gating")
    groups = group_by(runs, ("model",), {"model": "model.moe.router"})
    rows, kinds = [], {}
    for (label,) in [(m,) for m in ordered((k[0] for k in groups), order.get("model", ()))]:
        rs = groups[(label,)]
        layers = _int(config_value(rs[0], "model.layers"), 1)
        router = str(config_value(rs[0], "model.moe.router") or "?")
        kinds[(layers, router)] = metric_spread(rs, "test_mse")
        rows.append((label, str(layers), router, cell(kinds[(layers, router)]),
                     cell(metric_spread(rs, "routing_purity"), num),
                     count(metric_spread(rs, "parameters").median)))
    verdicts = []
    mlp, deep, lin = kinds.get((1, "mlp")), kinds.get((2, "linear")), kinds.get((1, "linear"))
    if mlp and deep and mlp.ok and deep.ok:
        factor = mlp.median / deep.median
        flags = [factor <= MATCH_FACTOR]
        detail = (f"1-layer MLP router {sci(mlp.median)} vs 2-layer linear {sci(deep.median)} "
                  f"(ratio {ratio(factor)}; matches if <= {MATCH_FACTOR:g})")
        if lin and lin.ok:
            flags.append(mlp.median < lin.median)
            detail += f"; 1-layer linear {sci(lin.median)} (the MLP router should beat it)"
        verdicts.append(Verdict(status_of(flags), "a nonlinear router lets a depth-1 MoE match "
                                "the depth-2 linear-router MoE", detail))
    tables = [Table("Router comparison (median [min, max] over seeds)",
                    ("model", "layers", "router", "test MSE", "routing purity", "parameters"),
                    tuple(rows))]
    return make_section("gating", runs, verdicts=verdicts, tables=tables)


# -- low-dimensional experts ------------------------------------------------------------------------

def lowdim_section(runs: Sequence[StoredRun]) -> Section:
    """Plain vs f_low o Enc experts: test MSE and parameters per D."""
    order = axis_order("lowdim-experts")
    groups = group_by(runs, ("D", "experts"), {"D": "task.D", "experts": "model.moe.latent_dim"})
    ds = ordered((k[0] for k in groups), order.get("D", ()))
    kinds = ordered((k[1] for k in groups), order.get("experts", ()))
    rows = [(d, k, cell(metric_spread(groups[(d, k)], "test_mse")),
             count(metric_spread(groups[(d, k)], "parameters").median),
             count(metric_spread(groups[(d, k)], "active_parameters").median))
            for d in ds for k in kinds if (d, k) in groups]
    plain = "plain" if "plain" in kinds else kinds[0]
    verdicts = []
    for k in kinds:
        if k == plain:
            continue
        pairs = [d for d in ds if (d, k) in groups and (d, plain) in groups]
        if not pairs:
            continue
        d = pairs[-1]
        err = (metric_spread(groups[(d, k)], "test_mse").median
               / metric_spread(groups[(d, plain)], "test_mse").median)
        par = (metric_spread(groups[(d, k)], "parameters").median
               / metric_spread(groups[(d, plain)], "parameters").median)
        verdicts.append(Verdict(
            status_of([err <= MATCH_FACTOR, par < 1] if math.isfinite(err * par) else []),
            f"{k} experts reach the {plain} error (within {MATCH_FACTOR:g}x) with fewer "
            f"parameters at the largest D", f"D={d}: error ratio {ratio(err)}, parameter "
            f"ratio {ratio(par)}"))
    tables = [Table("Test MSE (median [min, max] over seeds) and parameter counts",
                    ("D", "experts", "test MSE", "parameters", "active parameters"), tuple(rows))]
    return make_section("lowdim-experts", runs, verdicts=verdicts, tables=tables)


# -- intrinsic dimension ----------------------------------------------------------------------------

def intrinsic_section(runs: Sequence[StoredRun]) -> Section:
    """Error vs intrinsic d at D = 32 and vs ambient D at d = 1, with fitted log-log slopes."""
    order = axis_order("intrinsic")
    groups = group_by(runs, ("task",), {"task": lambda r: f"d={_d(r)} D={_D(r)}"})
    cells = {}
    rows = []
    for (label,) in [(t,) for t in ordered((k[0] for k in groups), order.get("task", ()))]:
        rs = groups[(label,)]
        d, D = first_number(label, "d") or _d(rs[0]), first_number(label, "D") or _D(rs[0])
        cells[(d, D)] = rs
        rows.append((label, str(d), str(D), cell(metric_spread(rs, "test_mse"))))
    by_d = sorted((d, rs) for (d, D), rs in cells.items() if D == 32)
    by_D = sorted((D, rs) for (d, D), rs in cells.items() if d == 1)
    fit_d = fit_slope([d for d, rs in by_d for _ in rs],
                      [metric(r, "test_mse") for _, rs in by_d for r in rs])
    fit_D = fit_slope([D for D, rs in by_D for _ in rs],
                      [metric(r, "test_mse") for _, rs in by_D for r in rs])
    verdicts = []
    med_d = [metric_spread(rs, "test_mse").median for _, rs in by_d]
    if len(med_d) >= 2 and fit_d is not None:
        verdicts.append(Verdict(
            status_of([med_d[-1] > med_d[0], fit_d.slope > 0]),
            "at D = 32 the error grows with the intrinsic d",
            ", ".join(f"d={d}: {sci(m)}" for (d, _), m in zip(by_d, med_d, strict=True))
            + f"; log-log slope in d {slope_text(fit_d)}"))
    med_D = [metric_spread(rs, "test_mse").median for _, rs in by_D]
    if len(med_D) >= 2:
        flat = max_over_min(med_D)
        verdicts.append(Verdict(
            status_of([flat <= FLAT_TOLERANCE]) if math.isfinite(flat) else status_of([]),
            f"at d = 1 the error does not change with D (max/min <= {FLAT_TOLERANCE:g})",
            f"max/min {ratio(flat)} over D = {', '.join(str(D) for D, _ in by_D)}; "
            f"slope in D {slope_text(fit_D)} (theory 0)"))
    figs = []
    if by_d or by_D:
        panels = (
            F.Panel("D = 32", (_spread_curve(f"d (slope {_s(fit_d)})", [
                (d, metric_spread(rs, "test_mse")) for d, rs in by_d], F.color(0)),),
                xlabel="intrinsic dimension d", logx=False, xticks=tuple(d for d, _ in by_d)),
            F.Panel("d = 1", (_spread_curve(f"D (slope {_s(fit_D)})", [
                (D, metric_spread(rs, "test_mse")) for D, rs in by_D], F.color(1)),),
                xlabel="ambient dimension D", xticks=tuple(D for D, _ in by_D)),
        )
        figs.append(FigureSpec("intrinsic", "Test MSE vs intrinsic d (D = 32) and vs ambient D "
                               "(d = 1), median over seeds with [min, max] bars",
                               partial(F.curves_figure, panels, xlabel="")))
    tables = [Table("Test MSE per (d, D) (median [min, max] over seeds)",
                    ("task", "d", "D", "test MSE"), tuple(rows))]
    return make_section("intrinsic", runs, verdicts=verdicts, tables=tables, figures=figs)


def _d(run: StoredRun) -> int:
    return _int(config_value(run, "task.d"), 1)


def _D(run: StoredRun) -> int:
    return _int(config_value(run, "task.D"), 0)


def _s(fit) -> str:
    return f"{fit.slope:+.2f}" if fit is not None else "n/a"


# -- any other experiment ---------------------------------------------------------------------------

def generic_section(experiment: str, runs: Sequence[StoredRun], *,
                    notes: Sequence[str] = ()) -> Section:
    """A table of median test MSE [min, max] per combination of the runs' labels."""
    order = axis_order(experiment)
    keys = ordered({k for r in runs for k in r.labels}, list(order))
    groups = group_by(runs, keys)
    combos = sorted(groups, key=lambda combo: tuple(
        (order.get(k, []).index(v) if v in order.get(k, []) else len(order.get(k, [])),
         natural_key(v)) for k, v in zip(keys, combo, strict=True)))
    rows = tuple(combo + (str(len(groups[combo])), cell(metric_spread(groups[combo], "test_mse")),
                          cell(metric_spread(groups[combo], "test_sup")))
                 for combo in combos)
    table = Table("Test error per label combination (median [min, max] over seeds)",
                  tuple(keys) + ("runs", "test MSE", "test sup error"), rows)
    return make_section(experiment, runs, tables=[table], notes=notes)
