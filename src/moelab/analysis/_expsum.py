"""Real roots of exponential sums f(t) = sum_k c_k exp(a_k + lam_k t) on an interval.

Router selection scores with an aux-free balancing bias, softmax(l(t)) + b or sigmoid(l(t)) + b with
logits l affine in t, cross where such a sum vanishes (:mod:`moelab.analysis.pieces`). The roots are
isolated exactly as in the proof of Descartes' rule of signs for exponential sums: with terms sorted
by rate, g = f exp(-a_0 - lam_0 t) has the derivative g' = sum_{k>=1} c_k (lam_k - lam_0)
exp(a_k + (lam_k - lam_0) t), a sum with one term fewer; between consecutive zeros of g' the function
g is monotone, so each such stretch holds at most one root, found by Brent's method. A sum of m
terms therefore has at most m - 1 real roots, and none is missed by sampling.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np


def _sign_value(c: np.ndarray, a: np.ndarray, lam: np.ndarray, t: float) -> float:
    """f(t) scaled by exp(-max_k(a_k + lam_k t)) > 0: same sign and zeros as f, never overflows."""
    e = a + lam * t
    return float(np.sum(c * np.exp(e - e.max())))


def _normalise(c: np.ndarray, a: np.ndarray, lam: np.ndarray):
    """Merge terms with equal rates (in log space) and drop zero coefficients; sort by rate."""
    order = np.argsort(lam, kind="stable")
    c, a, lam = c[order], a[order], lam[order]
    cs, as_, ls = [], [], []
    i = 0
    while i < len(lam):
        j = i
        while j + 1 < len(lam) and lam[j + 1] == lam[i]:
            j += 1
        top = a[i : j + 1].max()
        coef = float(np.sum(c[i : j + 1] * np.exp(a[i : j + 1] - top)))
        if coef != 0.0:
            cs.append(coef)
            as_.append(top)
            ls.append(lam[i])
        i = j + 1
    return np.array(cs), np.array(as_), np.array(ls)


def exp_sum_roots(c: np.ndarray, a: np.ndarray, lam: np.ndarray, lo: float, hi: float) -> list[float]:
    """Sorted roots in the open interval (lo, hi) of f(t) = sum_k c_k exp(a_k + lam_k t).

    Touching zeros (double roots) found at a critical point are included. A sum that vanishes
    identically has no isolated roots and returns [].
    """
    c, a, lam = _normalise(np.asarray(c, float), np.asarray(a, float), np.asarray(lam, float))
    return _roots(c, a, lam, lo, hi)


def _roots(c: np.ndarray, a: np.ndarray, lam: np.ndarray, lo: float, hi: float) -> list[float]:
    m = len(c)
    if m <= 1:
        return []
    if m == 2:
        if c[0] * c[1] >= 0:
            return []
        t = (math.log(-c[1] / c[0]) + a[1] - a[0]) / (lam[0] - lam[1])
        return [t] if lo < t < hi else []
    from scipy.optimize import brentq  # here: scipy.optimize takes a third of a second to import

    critical = _roots(c[1:] * (lam[1:] - lam[0]), a[1:], lam[1:], lo, hi)
    knots = [lo, *critical, hi]
    values = [_sign_value(c, a, lam, k) for k in knots]
    roots: list[float] = []
    for (x0, x1), (f0, f1) in zip(pairwise(knots), pairwise(values), strict=True):
        if f0 == 0.0 and x0 > lo:
            roots.append(x0)
        elif f0 * f1 < 0:
            roots.append(brentq(lambda t: _sign_value(c, a, lam, t), x0, x1, xtol=1e-15, rtol=1e-15))
    return roots
