"""Intrinsic dimension of a point cloud from nearest-neighbour distances.

The MoE rates of Thm 4.8 and 5.2 are set by the intrinsic dimension d of the data manifold, not by the
ambient D (docs/paper.md Sec. 2); these estimators check the d of a task's samples, or of a layer's
representations.

* ``"mle"``: Levina & Bickel (2005), per point m_i = [(1/(k-1)) sum_{j<k} log(T_k / T_j)]^{-1} with
  T_j the distance to the j-th nearest neighbour, averaged over points.
* ``"mle_mg"``: the MacKay & Ghahramani (2005) correction: average the inverses 1/m_i, then invert
  (the pooled likelihood; without the upward bias (k-1)/(k-2) of averaging m_i).
* ``"twonn"``: Facco et al. (2017): mu_i = T_2 / T_1 is Pareto with exponent d, so
  -log(1 - F(mu)) = d log(mu); d is the slope of the least-squares line through the origin, with F
  the empirical distribution (F(mu_(i)) = i / n) and the largest ``discard`` fraction of mu (default
  10%) left out.

Neighbours are exact in float64. Squared distances from chunked float64 matmuls,
|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>, shortlist candidates; their error is at most
tol (|x_i|^2 + |x_j|^2) with tol = 2 (D + 4) 2^-52 (the dot-product bound (D eps) and a few more
roundings, doubled), so every point within the k-th shortlisted value plus twice that bound is kept,
and the kept ones are ranked by distances taken from coordinate differences. Thus no true neighbour
is lost however far the data lie from the origin (two unit circles at +-1000 included); 10k points
in R^256 take about ten seconds on two cores. The estimators are scale-invariant, so the points are
first divided by the power of two nearest above their largest coordinate (an exact scaling), which
keeps squares in range for any finite input.

Shape legend: n points, D ambient dimension, k neighbours, m shortlisted candidates, c rows of a
chunk.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

METHODS = ("mle", "mle_mg", "twonn")

#: Default neighbours of the MLE methods, and the fraction of largest ratios TwoNN leaves out.
DEFAULT_K = 20
DEFAULT_DISCARD = 0.1
#: Entries per chunk of the distance matrix or of the candidates' coordinate differences (64 MiB).
_CHUNK_ENTRIES = 2**23


def _points(x: object) -> Tensor:
    """The distinct rows of ``x`` as float64, scaled by a power of two to max |coordinate| <= 1."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise ValueError(f"x must be a floating (n, D) array, got dtype {x.dtype}")
        x = torch.tensor(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor or a numpy array, got {type(x).__name__}")
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (n, D) tensor, got shape {tuple(x.shape)} and {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values (NaN or Inf)")
    # Duplicate points have zero distances, on which every estimator here is undefined: drop them.
    x64 = torch.unique(x.detach().to(torch.float64).cpu(), dim=0)
    top = float(x64.abs().max()) if x64.numel() else 0.0
    if top > 0:
        x64 = torch.ldexp(x64, torch.tensor(-math.frexp(top)[1]))
    return x64


def knn_distances(x: Tensor, k: int) -> Tensor:
    """(n, k) float64 distances from each point of ``x`` (n, D) to its k nearest other points,
    ascending, exact in float64 (see the module docstring).

    Exact duplicates must be removed first (see :func:`intrinsic_dimension`).
    """
    n, D = x.shape
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}] for n = {n} distinct points, got k={k}")
    x = x.to(torch.float64)
    sq = x.square().sum(1)
    tol = 2 * (D + 4) * 2.0**-52
    chunk = max(1, _CHUNK_ENTRIES // n)
    out = torch.empty(n, k, dtype=torch.float64)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        rows = torch.arange(s, e)
        d2_cn = torch.addmm(sq[s:e, None] + sq[None], x[s:e], x.t(), alpha=-2.0)
        d2_cn[rows - s, rows] = float("inf")  # not its own neighbour
        kth = d2_cn.topk(k, dim=1, largest=False).values[:, -1]
        bound = tol * (sq[s:e] + sq.max())
        keep = d2_cn <= (kth + 2 * bound)[:, None]
        m = int(keep.sum(1).max())
        idx_cm = d2_cn.topk(m, dim=1, largest=False).indices
        out[s:e] = _exact_nearest(x, rows, idx_cm, k)
    return out


def _exact_nearest(x: Tensor, rows: Tensor, idx_cm: Tensor, k: int) -> Tensor:
    """(c, k) the k smallest distances from x[rows] to x[idx_cm], from coordinate differences."""
    out = torch.empty(len(rows), k, dtype=torch.float64)
    step = max(1, _CHUNK_ENTRIES // (idx_cm.shape[1] * x.shape[1]))
    for s in range(0, len(rows), step):
        diff = x[idx_cm[s : s + step]] - x[rows[s : s + step], None]
        out[s : s + step] = diff.norm(dim=-1).sort(dim=1).values[:, :k]
    return out


def intrinsic_dimension(
    x: Tensor | np.ndarray,
    method: str = "mle",
    *,
    k: int | None = None,
    discard: float | None = None,
) -> float:
    """Estimate the intrinsic dimension of the points ``x`` (n, D).

    Args:
        x: the sample, a floating (n, D) tensor or numpy array; exact duplicate rows are dropped first.
            Any finite values work: the estimate does not change when x is scaled.
        method: ``"mle"`` (Levina-Bickel), ``"mle_mg"`` (MacKay-Ghahramani) or ``"twonn"`` (Facco
            et al.); see the module docstring.
        k: neighbours for the MLE methods (>= 2, default 20; Levina and Bickel suggest 10-20).
            TwoNN always uses the two nearest and takes no ``k``.
        discard: for TwoNN, the fraction of largest ratios T_2 / T_1 left out of the fit, in [0, 1)
            (default 0.1, as Facco et al.); the MLE methods take no ``discard``.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; expected one of {list(METHODS)}")
    twonn = method == "twonn"
    if twonn and k is not None:
        raise ValueError(f"k={k!r} applies to the MLE methods; method='twonn' uses the two nearest "
                         "neighbours (set discard to tune it)")
    if not twonn and discard is not None:
        raise ValueError(f"discard={discard!r} applies to method='twonn' only, not to {method!r}")
    k = DEFAULT_K if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2, got {k!r}")
    discard = DEFAULT_DISCARD if discard is None else discard
    if isinstance(discard, bool) or not isinstance(discard, (int, float)) or not 0 <= discard < 1:
        raise ValueError(f"discard must be a fraction in [0, 1), got {discard!r}")
    pts = _points(x)
    need = 3 if twonn else k + 1
    if pts.shape[0] < need:
        raise ValueError(
            f"method={method!r} needs at least {need} distinct points, got {pts.shape[0]} "
            f"(of {x.shape[0]} rows)"
        )
    T = knn_distances(pts, 2 if twonn else k)
    if bool((T[:, 0] <= 0).any()):
        raise ValueError("x has points at zero distance after dropping duplicates (values too close)")
    if twonn:
        return _twonn(T[:, 1] / T[:, 0], float(discard))
    # S_i = sum_{j<k} log(T_k / T_j); Levina-Bickel m_i = (k - 1) / S_i.
    S = (T[:, -1:] / T[:, :-1]).log().sum(1)
    if method == "mle":
        return float(((k - 1) / S).mean())
    return float((k - 1) / S.mean())


def _twonn(mu: Tensor, discard: float) -> float:
    """Slope through the origin of -log(1 - F(mu)) against log(mu), largest ``discard`` dropped."""
    n = mu.numel()
    mu = mu.sort().values
    keep = max(1, math.floor((1 - discard) * n))
    keep = min(keep, n - 1)  # F(mu_(n)) = 1: -log(1 - F) is infinite at the largest ratio
    F = torch.arange(1, n + 1, dtype=torch.float64) / n
    lx, ly = mu[:keep].log(), -torch.log1p(-F[:keep])
    denom = float((lx * lx).sum())
    if denom == 0:
        raise ValueError("twonn is undefined: every point's two nearest neighbours are equidistant")
    return float((lx * ly).sum()) / denom
