"""The numbers the paper reports (Sec. 6): the experiments of the registry check theirs against
these and the report sets them side by side."""

from __future__ import annotations

from collections.abc import Mapping

from moelab.analysis.rates import RateFit, fit_slope

# Table 3: test MSE of the 1-4-MoE on the unit circle in R^D, by D.
TABLE3: dict[int, float] = {16: 3.40e-4, 32: 3.38e-4, 64: 3.17e-4, 128: 3.42e-4}

# Table 4: test MSE on the 9-piece target on [0, 3]^2, by model and expert width m.
TABLE4: dict[str, dict[int, float]] = {
    "2-3-MoE": {16: 8.32e-5, 32: 1.41e-5, 64: 4.73e-6, 128: 2.59e-6},
    "1-6-MoE": {16: 7.96e-5, 32: 2.17e-5, 64: 2.65e-5, 128: 4.60e-5},
}


def paper_slope(values: Mapping[float, float]) -> RateFit | None:
    """The fitted log-log slope of one of the paper's ``{x: value}`` (e.g. a row of Table 4)."""
    return fit_slope(list(values), list(values.values()))
