"""moelab's figures: functions that take plain numbers and return a matplotlib ``Figure``, for the
results report (curves, routing pictures) and the ``analyze-hf`` report of :mod:`moelab.interop`
(which draws its own on :func:`figure` and saves them with :func:`png_bytes`).

Figures are built on the Agg canvas directly (``FigureCanvasAgg``), never through pyplot, so
drawing a report neither needs a display nor changes the backend of the process that asked for it.
The caller saves them (:func:`png_bytes`).
"""

from __future__ import annotations

import io
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter, NullLocator

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ff9896", "#98df8a", "#ffbb78",
           "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
#: The narrowest y range drawn, as a factor (log axes) or a fraction of the value (linear): a
#: flatter curve is shown flat, not zoomed into rounding noise.
MIN_LOG_SPAN = 8.0  # under a decade, so matplotlib still labels minor ticks
MIN_LINEAR_SPAN = 0.5


def png_bytes(fig: Figure, *, dpi: float | str = "figure") -> bytes:
    """``fig`` as PNG bytes, without the matplotlib version in the metadata (the same figure gives
    the same bytes under another matplotlib)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def color(i: int) -> str:
    """The i-th colour of the report's categorical palette (20 colours, then repeating)."""
    return _COLORS[i % len(_COLORS)]


def figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on its own Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@dataclass(frozen=True)
class Curve:
    """One series: ``"measured"`` (markers, solid line, error bars from ``low``/``high`` if given)
    or ``"reference"`` (the paper's numbers: open markers, dashed)."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    kind: str = "measured"
    color: str | None = None


@dataclass(frozen=True)
class Panel:
    """One axes of a curves figure."""

    title: str
    curves: tuple[Curve, ...]


def curves_figure(panels: Sequence[Panel], *, xlabel: str, ylabel: str = "test MSE",
                  logx: bool = True, logy: bool = True, xbase: int = 2,
                  xticks: Sequence[float] | None = None) -> Figure:
    """Panels side by side, each with measured curves (median with [min, max] error bars) and
    reference curves; log axes by default (x in powers of ``xbase``). Legends stand beside the
    axes, never over the data."""
    if not panels:
        raise ValueError("curves_figure needs at least one panel, got none")
    fig = figure(6.2 * len(panels) + 0.4, 3.9)
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for i, c in enumerate(panel.curves):
            _draw_curve(ax, c, c.color or color(i))
        if logx:
            ax.set_xscale("log", base=xbase)
            _tidy_log_axis(ax.xaxis, ax.get_xlim())
        _y_range(ax, [v for c in panel.curves for v in (*c.y, *(c.low or ()), *(c.high or ()))],
                 logy)
        if xticks is not None:
            ax.set_xticks(list(xticks), [f"{t:g}" for t in xticks])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        if panel.curves:
            ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                      borderaxespad=0.0, frameon=False)
    return fig


def points_figure(labels: Sequence[str], spreads: Sequence[tuple[float, float, float]]) -> Figure:
    """One point per labelled grid cell (median with [min, max] bars) on a log y axis: the figure
    of an experiment that declares no curves."""
    if not labels:
        raise ValueError("points_figure needs at least one point, got none")
    fig = figure(max(4.0, 0.6 * len(labels) + 2.0), 4.4)
    ax = fig.subplots()
    x = np.arange(len(labels))
    med, lo, hi = np.asarray(spreads, float).T
    ax.errorbar(x, med, yerr=_yerr(med, lo, hi), ls="none", marker="o", ms=6, capsize=3,
                color=color(0))
    _y_range(ax, [*med, *lo, *hi], True)
    ax.set_xticks(list(x), list(labels), rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylabel("test MSE")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    return fig


def _y_range(ax, values: Iterable[float], logy: bool) -> None:
    """Set the y scale; widen a range narrower than the minimum span around its centre."""
    ys = [v for v in values if math.isfinite(v) and (v > 0 or not logy)]
    if logy:
        ax.set_yscale("log")
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    if logy and hi / lo < MIN_LOG_SPAN:
        mid, half = math.sqrt(lo * hi), math.sqrt(MIN_LOG_SPAN)
        ax.set_ylim(min(lo, mid / half), max(hi, mid * half))
    elif not logy and hi - lo < MIN_LINEAR_SPAN * max(abs(hi), abs(lo), 1.0):
        pad = MIN_LINEAR_SPAN * max(abs(hi), abs(lo), 1.0) / 2
        ax.set_ylim(lo - pad, hi + pad)
    if logy:
        _tidy_log_axis(ax.yaxis, ax.get_ylim())


def _tidy_log_axis(axis, limits: tuple[float, float]) -> None:
    """Label only the decades of a log axis spanning more than one (minor labels are slow to lay
    out and crowd the axis); a narrower axis keeps matplotlib's minor labels, its only ones."""
    lo, hi = sorted(limits)
    if lo > 0 and hi / lo > 10:
        axis.set_minor_formatter(NullFormatter())


def _yerr(y, low, high) -> np.ndarray:
    """Error bars (2, N) from ``[low, high]`` around ``y``, never negative."""
    y = np.asarray(y, float)
    return np.clip([y - np.asarray(low, float), np.asarray(high, float) - y], 0, None)


def _draw_curve(ax, c: Curve, col: str) -> None:
    x, y = np.asarray(c.x, float), np.asarray(c.y, float)
    if c.kind == "reference":
        ax.plot(x, y, ls="--", lw=1.2, marker="s", mfc="none", ms=6, color=col, label=c.label)
    elif c.low is not None and c.high is not None:
        ax.errorbar(x, y, yerr=_yerr(y, c.low, c.high), marker="o", ms=5, lw=1.6, capsize=3,
                    color=col, label=c.label)
    else:
        ax.plot(x, y, marker="o", ms=5, lw=1.6, color=col, label=c.label)


# -- routing pictures -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RoutingPicture:
    """The expert path chosen at each picture point of one model: angles on the circle
    (``kind="circle"``, coords in radians) or a square grid (``kind="grid"``, coords = the ticks
    along each axis, paths row-major with index i * len(ticks) + j for (x1, x2) = (t_i, t_j))."""

    title: str
    kind: str
    coords: tuple[float, ...]
    paths: tuple[int, ...]
    names: Mapping[int, str]  # path code -> legend text, e.g. "expert 2" or "(1, 3)"


def _palette(codes: Sequence[int]) -> dict:
    """Colour-map keywords drawing path code c in ``color(c)``."""
    top = max(codes) + 1
    return {"cmap": ListedColormap([color(i) for i in range(top)]), "vmin": -0.5, "vmax": top - 0.5}


def _handles(codes: Sequence[int], names: Mapping[int, str]) -> list[Patch]:
    return [Patch(color=color(c), label=names.get(c, str(c))) for c in sorted(set(codes))]


def routing_figure(pictures: Sequence[RoutingPicture]) -> Figure:
    """The pictures side by side (all of one kind): a ring per circle picture, the angle coloured
    by the expert (path) routed to; a coloured square per grid picture, its unit cells outlined and
    each labelled by its majority path."""
    if not pictures:
        raise ValueError("routing_figure needs at least one picture, got none")
    circle, n = pictures[0].kind == "circle", len(pictures)
    fig = figure(2.9 * n + 1.6, 3.3) if circle else figure(5.3 * n, 4.0)
    axes = fig.subplots(1, n, squeeze=False, subplot_kw={"projection": "polar"} if circle else None)[0]
    codes = [c for pic in pictures for c in pic.paths]  # the rings share one palette
    for ax, pic in zip(axes, pictures, strict=True):
        if circle:
            _ring(ax, pic, codes)
        else:
            _square(ax, pic)
        ax.set_title(pic.title, fontsize=10)
    if circle:
        names = {code: name for pic in pictures for code, name in pic.names.items()}
        fig.legend(handles=_handles(codes, names), loc="outside right center", fontsize=8,
                   title="expert")
    return fig


def _ring(ax, pic: RoutingPicture, codes: Sequence[int]) -> None:
    theta = np.asarray(pic.coords, float)
    edges = np.append(theta, theta[-1] + 2 * math.pi / len(theta))
    ax.pcolormesh(edges, [0.7, 1.0], np.asarray(pic.paths, int)[None, :], shading="flat",
                  **_palette(codes))
    ax.set_ylim(0, 1.0)
    ax.set_yticks([])
    ax.set_xticks(np.deg2rad([0, 90, 180, 270]), ["0°", "90°", "180°", "270°"], fontsize=8)


def _square(ax, pic: RoutingPicture) -> None:
    ticks = np.asarray(pic.coords, float)
    n = len(ticks)
    grid = np.asarray(pic.paths, int).reshape(n, n)  # [i, j]: x1 = ticks[i], x2 = ticks[j]
    step = ticks[1] - ticks[0] if n > 1 else 1.0
    lo, hi = ticks[0] - step / 2, ticks[-1] + step / 2
    ax.imshow(grid.T, origin="lower", extent=(lo, hi, lo, hi), interpolation="nearest",
              **_palette(pic.paths))
    for k in range(math.ceil(lo), math.floor(hi) + 1):
        ax.axhline(k, color="black", lw=1.2)
        ax.axvline(k, color="black", lw=1.2)
    for a, b in itertools.product(range(math.ceil(lo), math.floor(hi)), repeat=2):
        inside = grid[np.ix_((ticks > a) & (ticks < a + 1), (ticks > b) & (ticks < b + 1))]
        if inside.size:
            code = Counter(inside.ravel().tolist()).most_common(1)[0][0]
            ax.text(a + 0.5, b + 0.5, pic.names.get(code, str(code)), ha="center", va="center",
                    fontsize=8, bbox={"facecolor": "white", "alpha": 0.75, "lw": 0, "pad": 1.5})
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    multi = any(name.startswith("(") for name in pic.names.values())
    ax.legend(handles=_handles(pic.paths, pic.names), loc="center left",
              bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False,
              title="path\n(layer 1, layer 2)" if multi else "expert", title_fontsize=8)
