"""Convergence rates: fit error ~ C * size^slope on log-log axes, with a confidence interval.

The paper's theorems predict exponents: sup error O(m^{-K/D}) for a dense two-layer net (Thm 3.1),
O~(m^{-(kappa/d min 1/2)}) for an MoE on a d-dimensional manifold (Thm 4.8) and per piece for deep
MoEs (Thm 5.2/5.3). :func:`fit_rate` measures the exponent of a sweep (errors against width m, or
against sample or parameter count) so it can be set beside the predicted one; :func:`fit_slope`
does so for measured sweeps (skipping diverged points), :func:`max_over_min` says how flat a sweep
is and :func:`loglog_crossing` where its curve reaches a given error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RateFit:
    """Least-squares fit log(error) = intercept + slope * log(size) (natural logs).

    Attributes:
        slope: the fitted exponent.
        intercept: log C, so error ~ exp(intercept) * size^slope.
        ci_low, ci_high: the t-based ``confidence`` interval for the slope (NaN with 2 points).
        stderr: the slope's standard error (NaN with 2 points).
        r2: coefficient of determination on log-log axes (1.0 when the errors are all equal).
        num_points: the number of (size, error) pairs fitted.
        confidence: the level of the interval, e.g. 0.95.
        predicted: the exponent a theorem predicts, if given.
    """

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    stderr: float
    r2: float
    num_points: int
    confidence: float
    predicted: float | None = None

    def predict(self, size: float) -> float:
        """The fitted error at ``size``: exp(intercept) * size^slope."""
        return math.exp(self.intercept) * size**self.slope

    def contains(self, exponent: float) -> bool:
        """Whether ``exponent`` lies in the confidence interval (False when there is none)."""
        return self.ci_low <= exponent <= self.ci_high

    def __str__(self) -> str:
        level = f"{100 * self.confidence:g}%"
        if math.isnan(self.ci_low):
            text = f"slope {self.slope:.2f} [{level} CI n/a: {self.num_points} points]"
        else:
            text = f"slope {self.slope:.2f} [{level} CI {self.ci_low:.2f}, {self.ci_high:.2f}]"
        if self.predicted is not None:
            text += f" vs predicted {self.predicted:.2f}"
        return text


def _positive(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be finite and > 0 (they are fitted on log axes), got {v.tolist()}")
    return v


def fit_rate(
    sizes: Sequence[float] | np.ndarray,
    errors: Sequence[float] | np.ndarray,
    *,
    predicted: float | None = None,
    confidence: float = 0.95,
) -> RateFit:
    """Fit error ~ C * size^slope by least squares on (log size, log error).

    The interval is slope +- t_{n-2, (1 + confidence)/2} * stderr with
    stderr^2 = (residual sum of squares / (n - 2)) / sum (log size - mean)^2; it needs n >= 3
    points, and is NaN with 2 (the slope is still the line through both).

    Args:
        sizes: the sweep's sizes (e.g. widths m), > 0, at least two distinct.
        errors: the matching errors, > 0.
        predicted: the exponent a theorem predicts (e.g. -kappa/d), kept for display and comparison.
        confidence: the interval's level, in (0, 1).
    """
    x, y = _positive("sizes", sizes), _positive("errors", errors)
    if x.shape != y.shape:
        raise ValueError(f"sizes and errors must have equal lengths, got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"fit_rate needs at least 2 points (3 for a confidence interval), got {x.size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    lx, ly = np.log(x), np.log(y)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    if sxx == 0:
        raise ValueError(f"sizes must hold at least two distinct values, got {x.tolist()}")
    slope = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
    intercept = float(ly.mean() - slope * lx.mean())
    ssr = float(np.sum((ly - intercept - slope * lx) ** 2))
    sst = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - ssr / sst if sst > 0 else 1.0
    n = x.size
    if n >= 3:
        stderr = math.sqrt(ssr / (n - 2) / sxx)
        # Student's t quantile: stdtrit is what scipy.stats.t.ppf computes, without importing
        # scipy.stats (about a second); imported here, as scipy.special takes a third of one.
        from scipy.special import stdtrit

        half = float(stdtrit(n - 2, (1 + confidence) / 2)) * stderr
    else:
        stderr = half = math.nan
    return RateFit(
        slope=slope, intercept=intercept, ci_low=slope - half, ci_high=slope + half, stderr=stderr,
        r2=r2, num_points=n, confidence=confidence,
        predicted=None if predicted is None else float(predicted),
    )


def fit_slope(sizes: Sequence[float], errors: Sequence[float | None]) -> RateFit | None:
    """Least-squares slope of log(error) on log(size) over the finite, positive pairs; None with
    fewer than two distinct sizes. Uses :func:`fit_rate` (t-based 95% interval)."""
    pairs = [(float(s), float(e)) for s, e in zip(sizes, errors, strict=True)
             if e is not None and s > 0 and math.isfinite(e) and e > 0]
    if len({s for s, _ in pairs}) < 2:
        return None
    return fit_rate(*zip(*pairs, strict=True))


def max_over_min(values: Iterable[float]) -> float:
    """max/min of the finite positive values (NaN with none): 1.0 means perfectly flat."""
    v = [x for x in values if math.isfinite(x) and x > 0]
    return max(v) / min(v) if v else math.nan


@dataclass(frozen=True)
class Crossing:
    """Where a log-log curve reaches a target value. ``bound`` is ``"="`` (interpolated inside the
    curve), ``"<="`` (already reached at the smallest size) or ``">"`` (never reached: the value is
    the largest size tried)."""

    size: float
    bound: str


def loglog_crossing(sizes: Sequence[float], values: Sequence[float], target: float
                    ) -> Crossing | None:
    """The smallest size at which the piecewise log-log-linear curve through (sizes, values) first
    comes down to ``target``. Points are sorted by size; non-finite or non-positive values dropped."""
    pts = sorted((s, v) for s, v in zip(sizes, values, strict=True)
                 if s > 0 and math.isfinite(v) and v > 0)
    if not pts or not (math.isfinite(target) and target > 0):
        return None
    if pts[0][1] <= target:
        return Crossing(pts[0][0], "<=")
    for (s0, v0), (s1, v1) in itertools.pairwise(pts):
        if v1 <= target:
            t = (math.log(v0) - math.log(target)) / (math.log(v0) - math.log(v1))
            return Crossing(math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))), "=")
    return Crossing(pts[-1][0], ">")
