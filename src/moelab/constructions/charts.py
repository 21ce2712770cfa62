"""Chart experts: two-layer ReLU nets computing g_i o phi_i with g_i ~ f o phi_i^{-1} (Cor 4.9).

The chart maps of moelab's atlases are affine, phi_i(x) = A_i x + a_i (Example 4.6), so they fold into
the expert's first affine map and a two-layer expert suffices (Cor 4.9): its units read
u = phi_i(x) in [0, 1]^d. g_i = f o phi_i^{-1} is approximated on phi_i(U_i):

* d = 1: the piecewise-linear interpolant at m + 1 equally spaced knots of [0, 1], m units
  (:mod:`moelab.constructions.interpolation`); a priori error ||g_i''|| / (8 m^2).
* d >= 2: ridge units relu(<w_k, u - 1/2> - t_j), K = round(sqrt(m)) directions (d = 2: angles
  pi k / K) times J = m // K thresholds evenly spaced on [-sqrt(d)/2, sqrt(d)/2), with output
  weights by least squares on a grid of phi_i(U_i) (:mod:`moelab.constructions.ridge`). There is no
  a priori bound; the error is measured on a finer grid of phi_i(U_i). The theorem's worst-case
  rate for d = 2 and smooth g is m^{-1/2}; the measured rate is reported beside it.

Shape legend: n points, D ambient width, d chart dimension, U units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab._validation import positive_int
from moelab.constructions.assembly import Net
from moelab.constructions.interpolation import cell_grid, interpolant, interpolation_bound
from moelab.constructions.ridge import RidgeNet, directions, fit_ridge, ridge_units
from moelab.tasks import Atlas

_F64 = torch.float64
#: (n, D) float64 points -> (n,) float64 values
PointFunction = Callable[[Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class ChartExpert:
    """Expert ``chart``: local net g_hat on u in R^d, read through u = A x + a.

    ``error`` is max |g_hat - g| on a dense grid of phi(U) (the expert's share of the theorem's
    first term); ``bound`` the a priori interpolation bound (d = 1), else None.
    """

    chart: int
    local: RidgeNet  # on u in R^d, one output
    A: Tensor  # (d, D)
    a: Tensor  # (d,)
    error: float
    bound: float | None

    @property
    def on_x(self) -> RidgeNet:
        """The expert as a net on x in R^D (the chart folded into the first affine map)."""
        return self.local.compose(self.A, self.a)

    def add_to(self, net: Net, src: int, dst: int) -> Net:
        """Add this expert's units to ``net``: x read at inputs src..src+D-1, g written to ``dst``."""
        on_x = self.on_x
        w = torch.zeros(on_x.units, net.d_in, dtype=_F64)
        w[:, src:src + self.A.shape[1]] = on_x.weight
        return net.read(w, on_x.bias, on_x.out[:, 0], dst, float(on_x.out_bias[0]))


def _domain_grid(atlas: Atlas, chart: int, n_side: int) -> tuple[Tensor, Tensor]:
    """Cell-midpoint grid u of [0, 1]^d kept where phi_i^{-1}(u) is in U_i and maps back to u:
    (u (n, d), x (n, D))."""
    g = cell_grid(0.0, 1.0, n_side)
    u = torch.cartesian_prod(*[g] * atlas.d).reshape(-1, atlas.d)
    x = atlas.inverse(u, chart).to(_F64)
    back = atlas.phi(x).to(_F64)[:, chart]
    keep = atlas.in_domain(x)[:, chart] & ((back - u).abs().max(dim=1).values < 1e-9)
    return u[keep], x[keep]


def chart_expert(
    atlas: Atlas, chart: int, f: PointFunction, m: int, *, n_side: int | None = None
) -> ChartExpert:
    """The width-m expert for chart ``chart`` of ``atlas`` and target ``f`` (see the module docstring).

    ``n_side``: grid points per side for the d >= 2 fit (default max(48, 3 sqrt(m))).
    """
    m = positive_int("m", m)
    A, a = atlas.A.to(_F64)[chart], atlas.a.to(_F64)[chart]
    d = atlas.d

    def g(u: Tensor) -> Tensor:
        return f(atlas.inverse(u.reshape(-1, d), chart).to(_F64)).to(_F64).reshape(-1)

    if d == 1:
        s = interpolant(g, 0.0, 1.0, m)
        local = RidgeNet(torch.ones(m, 1, dtype=_F64), -s.breakpoints, s.coefficients[:, None],
                         torch.tensor([s.offset], dtype=_F64))
        z = cell_grid(0.0, 1.0, max(4000, 40 * m))
        error = float((s(z) - g(z)).abs().max())
        return ChartExpert(chart, local, A, a, error, interpolation_bound(g, 0.0, 1.0, m))
    K = max(1, round(math.sqrt(m)))
    J = max(1, m // K)
    r = math.sqrt(d) / 2
    w, b = ridge_units(directions(d, K, half=True), -r, r, J)
    side = n_side if n_side is not None else max(48, 3 * K)
    u, x = _domain_grid(atlas, chart, positive_int("n_side", side))
    centred = fit_ridge(u - 0.5, f(x), w, b)
    local = centred.compose(torch.eye(d, dtype=_F64), torch.full((d,), -0.5, dtype=_F64))
    u_check, x_check = _domain_grid(atlas, chart, 2 * side + 1)
    error = float((local(u_check)[:, 0] - f(x_check).to(_F64)).abs().max())
    return ChartExpert(chart, local, A, a, error, None)


def chart_experts(atlas: Atlas, f: PointFunction, m: int) -> tuple[ChartExpert, ...]:
    """:func:`chart_expert` for every chart of ``atlas``."""
    return tuple(chart_expert(atlas, i, f, m) for i in range(atlas.n_charts))
