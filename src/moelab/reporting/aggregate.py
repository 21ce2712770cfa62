"""Pure data for the report: config values, medians and ranges over seeds, fitted
log-log slopes and log-log interpolation. Nothing here draws or formats.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moelab.analysis import RateFit, fit_rate
from moelab.experiments.store import StoredRun


@dataclass(frozen=True)
class Spread:
    """Median and range of one quantity over a group of runs (usually the seeds of one cell).

    ``n`` counts the finite values summarised; ``missing`` the runs whose value was absent or not
    finite (e.g. a diverged run). With ``n == 0`` the median, low and high are NaN.
    """

    median: float
    low: float
    high: float
    n: int
    missing: int = 0

    @property
    def ok(self) -> bool:
        return self.n > 0


def spread(values: Iterable[float | None]) -> Spread:
    """The median, min and max of the finite values among ``values``."""
    v = np.array([math.nan if x is None else x for x in values], float)
    finite = v[np.isfinite(v)]
    if not finite.size:
        return Spread(math.nan, math.nan, math.nan, 0, v.size)
    return Spread(float(np.median(finite)), float(finite.min()), float(finite.max()), finite.size,
                  v.size - finite.size)


def metric(run: StoredRun, name: str) -> float | None:
    """A scalar result of ``run``: ``test_mse``, ``test_sup``, ``seconds`` or a key of its metrics."""
    if name in ("test_mse", "test_sup", "seconds"):
        value = getattr(run, name)
    else:
        value = run.metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def config_value(run: StoredRun, dotted: str, missing: Any = None) -> Any:
    """The value at a dotted path of the run's stored config (``"task.D"``), or ``missing`` if the
    config has no such path. The report reads every config value through here (and
    :func:`flatten`), so a renamed key is a change in one place."""
    node: Any = run.config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.steps": 5000, ...}`` (dotted paths to leaf values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_number(label: str) -> float | None:
    """``"128"`` -> 128.0; None for a label that is not a number."""
    try:
        return float(label)
    except ValueError:
        return None


def natural_key(label: str) -> tuple[int, float, str]:
    """Sort numbers numerically (``"16" < "128"``) and before words."""
    number = as_number(label)
    return (0, number, label) if number is not None else (1, 0.0, label)


def pick_run(runs: Sequence[StoredRun], seed: int = 0) -> StoredRun:
    """The run with ``seed`` (else the lowest seed), ties broken by run id."""
    return min(runs, key=lambda r: (r.seed != seed, r.seed, r.run_id))


def path_names(load: Sequence[Sequence[float]]) -> dict[int, str]:
    """Legend text for each path code of a model whose MoE layers have ``len(load[l])`` experts:
    ``"expert e"`` for one layer, ``"(e1, e2, ...)"`` for several (experts numbered from 0, the
    first layer the most significant digit, as the runner encodes paths)."""
    radices = [len(layer) for layer in load]
    if not radices or min(radices) < 1:
        return {}
    paths = itertools.product(*map(range, radices))  # last layer varies fastest
    return {code: f"expert {p[0]}" if len(p) == 1 else f"({', '.join(map(str, p))})"
            for code, p in enumerate(paths)}


def fit_slope(sizes: Sequence[float], errors: Sequence[float | None]) -> RateFit | None:
    """Least-squares slope of log(error) on log(size) over the finite, positive pairs; None with
    fewer than two distinct sizes. Uses :func:`moelab.analysis.fit_rate` (t-based 95% interval)."""
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
