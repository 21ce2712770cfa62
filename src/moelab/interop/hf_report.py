"""The report of ``moelab analyze-hf``: a whole model's routing statistics as markdown, figures
(load heat map, co-occurrence matrices of consecutive layers, path frequencies) and a JSON file
with every number.

Figures are drawn on the Agg canvas directly (no pyplot). Every file is written to a temporary file
beside its destination and renamed into place, the markdown last, so an interrupted run never
leaves a half-written file or a report pointing at missing figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from moelab.atomic import atomic_write
from moelab.interop.routing_analysis import ModelAnalysis, most_common_paths
from moelab.reporting.figures import figure, png_bytes

REPORT_NAME = "report.md"
DATA_NAME = "analysis.json"
FIGURES = "figures"
#: Co-occurrence panels drawn (the first pairs; all are in the JSON file) and paths listed.
MAX_PANELS = 16
TOP_PATHS = 10


def load_heatmap(load_LE: np.ndarray, layers: Sequence[int]) -> Figure:
    """Heat map of the fraction of assignments (L, E) each expert receives in each MoE layer."""
    L, E = load_LE.shape
    fig = figure(min(12.0, 2.5 + 0.25 * E), min(10.0, 1.5 + 0.35 * L))
    ax = fig.add_subplot()
    im = ax.imshow(load_LE, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("decoder layer")
    ax.set_yticks(range(L), [str(i) for i in layers])
    ax.set_title(f"load per layer (uniform = 1/{E} = {1 / E:.3f})")
    fig.colorbar(im, ax=ax, label="fraction of assignments")
    return fig


def cooccurrence_figure(counts: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]],
                        nmi: Sequence[float]) -> Figure:
    """One panel per pair of consecutive MoE layers: the fraction of tokens with top-1 expert i in
    the first layer (rows) and j in the second (columns)."""
    n = len(counts)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = figure(3.2 * cols, 3.0 * rows)
    fractions = [c / max(1, int(c.sum())) for c in counts]
    top = max((float(f.max()) for f in fractions), default=0.0) or 1.0  # one colour scale for all
    axes, im = [], None
    for p, (f, (a, b), v) in enumerate(zip(fractions, pairs, nmi, strict=True)):
        ax = fig.add_subplot(rows, cols, p + 1)
        axes.append(ax)
        im = ax.imshow(f, cmap="magma", vmin=0, vmax=top, interpolation="nearest")
        ax.set_title(f"layer {a} -> {b}, NMI {v:.2f}", fontsize=9)
        ax.set_xlabel(f"top-1 expert, layer {b}", fontsize=8)
        ax.set_ylabel(f"top-1 expert, layer {a}", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes, label="fraction of tokens", shrink=0.8)
    return fig


def path_figure(paths: Sequence[tuple[tuple[int, ...], int]], num_tokens: int) -> Figure:
    """Bar chart of the fraction of tokens taking each of the most common top-1 expert paths."""
    fig = figure(7.0, 0.8 + 0.3 * max(1, len(paths)))
    ax = fig.add_subplot()
    labels = ["-".join(map(str, path)) for path, _ in paths]
    ax.barh(range(len(paths)), [c / max(1, num_tokens) for _, c in paths], color="#1f77b4")
    ax.set_yticks(range(len(paths)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of tokens")
    ax.set_title("most common expert paths (top-1 expert per MoE layer)")
    return fig




def _save(fig: Figure, path: Path) -> None:
    atomic_write(path, png_bytes(fig))


def analysis_data(analysis: ModelAnalysis) -> dict:
    """Every number of ``analysis`` as JSON-ready lists and dicts."""
    return {
        "layers": [
            {
                "layer": s.layer,
                "num_tokens": s.num_tokens,
                "load": [float(x) for x in s.load],
                "token_entropy": s.token_entropy,
                "load_entropy": s.load_entropy,
                "dead_experts": list(s.dead_experts),
                "dimensions": [{"expert": d.expert, "num_tokens": d.num_tokens, "dimension": d.dimension,
                                "note": d.note} for d in s.dimensions],
            }
            for s in analysis.layers
        ],
        "paths": {
            "num_paths": analysis.paths.num_paths,
            "distinct": analysis.paths.distinct.tolist(),
            "counts": analysis.paths.counts.tolist(),
        },
        "cooccurrence": [{"layers": list(c.layers), "counts": c.counts.tolist(), "nmi": c.nmi}
                         for c in analysis.cooccurrence],
    }


def _fmt(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _dimension_rows(analysis: ModelAnalysis) -> list[str]:
    rows = []
    for s in analysis.layers:
        dims = [d.dimension for d in s.dimensions if d.dimension is not None]
        few = len(s.dimensions) - len(dims)
        if dims:
            rows.append(f"| {s.layer} | {len(dims)} | {_fmt(float(np.median(dims)))} | {_fmt(min(dims))} | "
                        f"{_fmt(max(dims))} | {few} |")
        else:
            rows.append(f"| {s.layer} | 0 | — | — | — | {few} |")
    return rows


def _cooccurrence_section(analysis: ModelAnalysis) -> list[str]:
    md = ["## Co-occurrence across consecutive layers", ""]
    if analysis.cooccurrence:
        md += ["Counts of tokens by their top-1 expert in one layer (rows) and the next (columns); NMI: "
               "their normalised mutual information (0: independent, 1: one determines the other).", "",
               "| layers | NMI |", "| --- | --- |"]
        md += [f"| {a} -> {b} | {_fmt(c.nmi)} |" for c in analysis.cooccurrence for a, b in [c.layers]]
        drawn = ""
        if len(analysis.cooccurrence) > MAX_PANELS:
            drawn = f" (the first {MAX_PANELS} pairs; all in {DATA_NAME})"
        md += ["", f"![co-occurrence]({FIGURES}/cooccurrence.png){drawn}", ""]
    else:
        md += ["The model has one MoE layer: no consecutive pairs.", ""]
    return md


def _dimension_section(analysis: ModelAnalysis) -> list[str]:
    md = ["## Intrinsic dimension of each expert's inputs", ""]
    if any(s.dimensions for s in analysis.layers):
        md += ["Levina-Bickel MLE of the hidden states each expert receives, per layer over the experts "
               "that received enough distinct tokens (per-expert values and the reasons for the others "
               f"in {DATA_NAME}).", "",
               "| layer | experts estimated | median | min | max | experts with too few tokens |",
               "| --- | --- | --- | --- | --- | --- |"]
        md += _dimension_rows(analysis)
    else:
        md += ["Not measured (no hidden states captured)."]
    return md


def write_hf_report(
    analysis: ModelAnalysis,
    out: str | Path,
    *,
    title: str,
    facts: Mapping[str, object] | None = None,
) -> Path:
    """Write ``out``/report.md with figures under ``out``/figures and ``out``/analysis.json.

    ``facts`` (name -> value) are listed under the title (the model, its source, the text, ...).
    Returns the report's path.
    """
    out = Path(out)
    if not analysis.layers:
        raise ValueError("analysis holds no MoE layers to report")
    figures = out / FIGURES
    layers = [s.layer for s in analysis.layers]
    num_tokens = analysis.layers[0].num_tokens
    E = int(analysis.layers[0].load.numel())
    common = most_common_paths(analysis.paths, TOP_PATHS)

    atomic_write(out / DATA_NAME, json.dumps(analysis_data(analysis), indent=1).encode())
    _save(load_heatmap(np.stack([s.load.numpy() for s in analysis.layers]), layers), figures / "load.png")
    _save(path_figure(common, num_tokens), figures / "paths.png")
    pairs = analysis.cooccurrence[:MAX_PANELS]
    if pairs:
        _save(cooccurrence_figure([c.counts.numpy() for c in pairs], [c.layers for c in pairs],
                                  [c.nmi for c in pairs]), figures / "cooccurrence.png")

    md = [f"# {title}", ""]
    md += [f"- {name}: {value}" for name, value in (facts or {}).items()]
    md += [f"- tokens routed: {num_tokens}; MoE layers: {len(layers)}; experts per layer: {E}", ""]
    md += ["## Load per layer", "",
           "Load: the fraction of the T*K expert assignments each expert receives. Token entropy: the "
           "mean entropy of the router's probabilities, divided by log E (0: confident, 1: uniform). "
           "Load entropy: the entropy of the load, divided by log E (1: balanced). Dead: experts no "
           "token selected.", "",
           "| layer | token entropy | load entropy | max load | dead experts |",
           "| --- | --- | --- | --- | --- |"]
    for s in analysis.layers:
        dead = ", ".join(map(str, s.dead_experts)) or "none"
        md.append(f"| {s.layer} | {s.token_entropy:.3f} | {s.load_entropy:.3f} | {float(s.load.max()):.3f} | "
                  f"{dead} |")
    md += ["", f"![load per layer]({FIGURES}/load.png)", ""]

    md += ["## Expert paths", "",
           f"Each token's path is its top-1 expert in every MoE layer: {analysis.paths.num_paths} distinct "
           f"paths among {num_tokens} tokens (at most {E}^{len(layers)} exist).", "",
           "| path | tokens | fraction |", "| --- | --- | --- |"]
    md += [f"| {'-'.join(map(str, p))} | {c} | {c / num_tokens:.3f} |" for p, c in common]
    md += ["", f"![path frequency]({FIGURES}/paths.png)", ""]

    md += _cooccurrence_section(analysis) + _dimension_section(analysis)
    md.append("")
    path = out / REPORT_NAME
    atomic_write(path, "\n".join(md).encode())
    return path
