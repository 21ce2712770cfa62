"""moelab's figures: no y axis zoomed into rounding noise, legends beside the data."""

from __future__ import annotations

import math

import pytest

from moelab.reporting import figures as F


def test_a_flat_curve_is_not_zoomed_into_rounding_noise():
    v = 4.26721e-4  # equal up to rounding, as the medians of an exactly D-invariant recipe are
    flat = F.Curve("d=1", (4.0, 16.0, 64.0, 256.0), (v, v * (1 + 1e-12), v, v * (1 - 1e-12)))
    fig = F.curves_figure([F.Panel("d = 1", (flat,))], xlabel="D")
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high / low >= 8
    labels = [t.get_text() for t in ax.get_yticklabels(minor=False) + ax.get_yticklabels(minor=True)
              if t.get_text() and low <= t.get_position()[1] <= high]
    assert len(labels) == len(set(labels)) >= 2


def test_legends_stand_beside_the_data_never_over_it():
    curves = tuple(F.Curve(f"series {i} (log-log slope -1.00)", (16.0, 32.0, 64.0, 128.0),
                           tuple(10.0 ** -i * m ** -1.0 for m in (16, 32, 64, 128)))
                   for i in range(4))
    fig = F.curves_figure([F.Panel("p", curves)], xlabel="m")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())


@pytest.mark.parametrize("values", [(4.26721e-4,) * 3, (1.0, 1.0 + 1e-12, 1.0)])
def test_the_default_figure_is_not_zoomed_either(values):
    fig = F.points_figure(["a", "b", "c"], [(v, v, v) for v in values])
    fig.canvas.draw()
    low, high = fig.axes[0].get_ylim()
    assert high / low >= 8 and math.isfinite(high)
