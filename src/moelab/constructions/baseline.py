"""The one-layer alternative: how well can a linear router on raw x pick a chart? (Sec. 4)

A single MoE layer routes by argmax_i (W x + b)_i: its routing cells are convex polyhedra of R^D. Where
the charts of a manifold are not separable so (the nested turns of a spiral), every linear router
sends a measurable fraction of points to an expert whose chart domain does not contain them, and
that expert, accurate only on its own chart, answers wrongly; the depth-2 construction routes on
tau(x) ~ rho(x) instead (:mod:`moelab.constructions.manifold`).

The best linear router is not computable exactly (0-1 loss), so two deterministic fits to the chart
labels argmax_i rho_i are tried, both with a bias (more than the paper's g = W_R x allows):

* least squares one-vs-rest: (W, b) = argmin ||[x, 1] (W; b) - onehot||^2, closed form;
* multinomial logistic regression: cross-entropy plus 1e-6 ||W||^2, L-BFGS from zero, float64.

Each is fitted on ``n_fit`` points and scored on ``n_eval`` fresh ones; the lower misroute fraction is
reported as the linear router's.

Shape legend: n points, D ambient width, E charts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moelab._validation import positive_int
from moelab.constructions.summary import routed_outside
from moelab.tasks import ManifoldTask

_F64 = torch.float64


#: The summary entry (``extra``) under which constructions report :attr:`LinearRouterBaseline.best`.
MISROUTE_ENTRY = "linear router misrouted"


@dataclass(frozen=True)
class LinearRouterBaseline:
    """Misroute fractions (routed chart's domain does not contain the point) of two linear routers."""

    least_squares: float
    logistic: float

    @property
    def best(self) -> float:
        return min(self.least_squares, self.logistic)


def _logistic(features: Tensor, labels: Tensor, E: int, iters: int) -> Tensor:
    coef = torch.zeros(features.shape[1], E, dtype=_F64, requires_grad=True)
    opt = torch.optim.LBFGS([coef], max_iter=iters, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(features @ coef, labels) + 1e-6 * coef[:-1].pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # also when called under torch.no_grad()
        opt.step(closure)
    return coef.detach()


def linear_router_misroute(
    task: ManifoldTask, *, n_fit: int = 4000, n_eval: int = 4000, seed: int = 0, iters: int = 300
) -> LinearRouterBaseline:
    """Fit the two linear routers of the module docstring to ``task``'s chart labels and measure the
    fraction of fresh points each routes outside the chosen chart's domain."""
    fit = task.sample(positive_int("n_fit", n_fit), seed=seed)
    test = task.sample(positive_int("n_eval", n_eval), seed=seed + 1)
    E = task.n_charts

    def design(x: Tensor) -> Tensor:
        x = x.to(_F64)
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=_F64)], dim=1)

    A, A_test = design(fit.x), design(test.x)
    onehot = F.one_hot(fit.chart, E).to(_F64)
    coef_ls = torch.from_numpy(np.linalg.lstsq(A.numpy(), onehot.numpy(), rcond=None)[0])
    coef_lr = _logistic(A, fit.chart, E, iters)
    x_test = test.x.to(_F64)
    return LinearRouterBaseline(
        least_squares=routed_outside(task.atlas, x_test, (A_test @ coef_ls).argmax(dim=1)),
        logistic=routed_outside(task.atlas, x_test, (A_test @ coef_lr).argmax(dim=1)),
    )
