"""Intrinsic dimension of a point cloud from nearest-neighbour distances.

The MoE rates of Thm 4.8 and 5.2 are set by the intrinsic dimension d of the data manifold, not by the
ambient D (PAPER.md Sec. 2); these estimators check the d of a task's samples, or of a layer's
representations.

* ``"mle"``: Levina & Bickel (2005), per point m_i = [(1/(k-1)) sum_{j<k} log(T_k / T_j)]^{-1} with
  T_j the distance to the j-th nearest neighbour, averaged over points.
* ``"mle_mg"``: the MacKay & Ghahramani (2005) correction: average the inverses 1/m_i, then invert
  (the pooled likelihood; without the upward bias (k-1)/(k-2) of averaging m_i).
* ``"twonn"``: Facco et al. (2017): mu_i = T_2 / T_1 is Pareto with exponent d, so
  -log(1 - F(mu)) = d log(mu); d is the slope of the least-squares line through the origin, with F
  the empirical distribution (F(mu_(i)) = i / n) and the largest 10% of mu discarded.

Nearest neighbours come from chunked distance matrices (float32 matmuls on centred data to pick
candidates, float64 distances to rank them), so 10k points in R^256 take seconds.

Shape legend: n points, D ambient dimension, k neighbours, c rows of a chunk.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

METHODS = ("mle", "mle_mg", "twonn")

#: Candidates beyond k fetched in float32 before ranking in float64.
_MARGIN = 8
#: Distance-matrix entries per chunk (64 MiB in float64).
_CHUNK_ENTRIES = 2**23


def _points(x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (n, D) tensor, got shape {tuple(x.shape)} and {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values (NaN or Inf)")
    # Duplicate points have zero distances, on which every estimator here is undefined: drop them.
    x64 = torch.unique(x.detach().to(torch.float64).cpu(), dim=0)
    return x64 - x64.mean(0)


def knn_distances(x: Tensor, k: int) -> Tensor:
    """(n, k) distances from each point of ``x`` (n, D) to its k nearest other points, ascending.

    Exact duplicates must be removed first (see :func:`intrinsic_dimension`).
    """
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}] for n = {n} distinct points, got k={k}")
    m = min(k + _MARGIN, n - 1)
    x32 = x.float()
    sq32 = x32.square().sum(1)
    chunk = max(1, _CHUNK_ENTRIES // n)
    out = torch.empty(n, k, dtype=torch.float64)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        d2_cn = torch.addmm(sq32[s:e, None] + sq32[None], x32[s:e], x32.t(), alpha=-2.0)
        d2_cn[torch.arange(e - s), torch.arange(s, e)] = float("inf")  # not its own neighbour
        idx_cm = d2_cn.topk(m, dim=1, largest=False).indices
        exact_cm = (x[idx_cm] - x[s:e, None]).norm(dim=-1)
        out[s:e] = exact_cm.sort(dim=1).values[:, :k]
    return out


def intrinsic_dimension(x: Tensor, method: str = "mle", *, k: int = 20) -> float:
    """Estimate the intrinsic dimension of the points ``x`` (n, D).

    Args:
        x: the sample, a floating (n, D) tensor; exact duplicate rows are dropped first.
        method: ``"mle"`` (Levina-Bickel), ``"mle_mg"`` (MacKay-Ghahramani) or ``"twonn"`` (Facco
            et al.); see the module docstring.
        k: neighbours for the MLE methods (>= 2; Levina and Bickel suggest 10-20). TwoNN uses 2.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; expected one of {list(METHODS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2, got {k!r}")
    pts = _points(x)
    need = 3 if method == "twonn" else k + 1
    if pts.shape[0] < need:
        raise ValueError(
            f"method={method!r} needs at least {need} distinct points, got {pts.shape[0]} "
            f"(of {x.shape[0]} rows)"
        )
    T = knn_distances(pts, 2 if method == "twonn" else k)
    if bool((T[:, 0] <= 0).any()):
        raise ValueError("x has points at zero distance after dropping duplicates (values too close)")
    if method == "twonn":
        return _twonn(T[:, 1] / T[:, 0])
    # S_i = sum_{j<k} log(T_k / T_j); Levina-Bickel m_i = (k - 1) / S_i.
    S = (T[:, -1:] / T[:, :-1]).log().sum(1)
    if method == "mle":
        return float(((k - 1) / S).mean())
    return float((k - 1) / S.mean())


def _twonn(mu: Tensor, discard: float = 0.1) -> float:
    """Slope through the origin of -log(1 - F(mu)) against log(mu), largest ``discard`` dropped."""
    n = mu.numel()
    mu = mu.sort().values
    keep = max(1, math.floor((1 - discard) * n))
    F = torch.arange(1, n + 1, dtype=torch.float64) / n
    lx, ly = mu[:keep].log(), -torch.log1p(-F[:keep])
    denom = float((lx * lx).sum())
    if denom == 0:
        raise ValueError("twonn is undefined: every point's two nearest neighbours are equidistant")
    return float((lx * ly).sum()) / denom
