"""Width sweeps: a construction's measured sup error against m, with the fitted exponent beside the
theorem's.

The theorems bound the sup error by O~(m^{-(kappa/d min 1/2)}) (Thm 4.8, 5.2; d = 1 in Thm 5.3), the
worst case over C^kappa targets. The constructions here interpolate smooth 1-D pieces exactly, so
their error falls like m^{-2} (the C^2 interpolation rate), faster than the worst case; the 2-D
least-squares experts fall at a measured rate. Both are reported as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from moelab.analysis.rates import RateFit, fit_rate
from moelab.constructions.summary import ConstructionSummary


def theorem_exponent(kappa: float, d: int) -> float:
    """The theorems' exponent -(kappa / d min 1/2) (kappa = inf for C^infinity targets)."""
    return -min(kappa / d if math.isfinite(kappa) else math.inf, 0.5)


@dataclass(frozen=True)
class WidthSweep:
    """Sup errors of one construction at several widths m, and the log-log fit."""

    widths: tuple[int, ...]
    errors: tuple[float, ...]
    fit: RateFit

    def __str__(self) -> str:
        rows = ", ".join(f"m={m}: {e:.3g}" for m, e in zip(self.widths, self.errors, strict=True))
        return f"{rows}; {self.fit}"


def width_sweep(
    build: Callable[[int], tuple[nn.Module, ConstructionSummary]],
    widths: Sequence[int],
    *,
    predicted: float | None = None,
) -> WidthSweep:
    """Build at every m in ``widths`` (``build(m)`` returns (model, summary)) and fit
    sup error ~ C m^slope (:func:`moelab.analysis.fit_rate`), ``predicted`` kept beside it."""
    errors = tuple(build(m)[1].sup_error for m in widths)
    return WidthSweep(tuple(widths), errors, fit_rate(widths, errors, predicted=predicted))
