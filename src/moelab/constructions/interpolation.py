"""1-D piecewise-linear interpolation written as a two-layer ReLU network.

The interpolant of f on [a, b] at the m + 1 equally spaced knots t_k = a + k h, h = (b - a) / m, is

    s(z) = f(a) + sum_{k=0}^{m-1} c_k relu(z - t_k),   c_0 = sigma_0, c_k = sigma_k - sigma_{k-1},

with sigma_k the slope on [t_k, t_{k+1}]: m hidden units, exact on [a, b] (and continued linearly
beyond b, constant f(a) below a). For f in C^2 the classical bound is

    ||s - f||_inf <= h^2 / 8 * ||f''||_inf = (b - a)^2 ||f''||_inf / (8 m^2),

the m^{-2} rate of Thm 5.3's construction for smooth pieces (the theorem states the worst case over
C^kappa, m^{-(kappa min 1/2)}; smooth pieces interpolated exactly do better). These are the experts
of every construction with a 1-D domain: pieces of Eq. (4) (Thm 5.3) and charts of curves (Cor 4.9).

Shape legend: m units, n points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab._validation import positive_int

_F64 = torch.float64
#: (n,) float64 -> (n,) values
Function1D = Callable[[Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class Interpolant:
    """The ReLU form of the piecewise-linear interpolant at ``knots`` (m + 1,) of ``values``."""

    knots: Tensor  # (m + 1,)
    values: Tensor  # (m + 1,)

    @property
    def m(self) -> int:
        return self.knots.shape[0] - 1

    @property
    def breakpoints(self) -> Tensor:
        """(m,) t_0 .. t_{m-1}: unit k is relu(z - t_k)."""
        return self.knots[:-1]

    @property
    def coefficients(self) -> Tensor:
        """(m,) output weights c_k: the slope changes at the breakpoints."""
        slopes = torch.diff(self.values) / torch.diff(self.knots)
        return torch.cat([slopes[:1], torch.diff(slopes)])

    @property
    def offset(self) -> float:
        """The output bias f(a)."""
        return float(self.values[0])

    def __call__(self, z: Tensor) -> Tensor:
        """Evaluate the ReLU form at z (n,) (float64)."""
        h = torch.relu(z.to(_F64)[:, None] - self.breakpoints)
        return self.offset + h @ self.coefficients


def interpolant(f: Function1D, a: float, b: float, m: int) -> Interpolant:
    """The interpolant of ``f`` on [a, b] with m equal segments (m hidden units)."""
    m = positive_int("m", m)
    if not b > a:
        raise ValueError(f"the interval [a, b] must have b > a, got a={a}, b={b}")
    knots = torch.linspace(a, b, m + 1, dtype=_F64)
    values = torch.as_tensor(f(knots), dtype=_F64).reshape(-1)
    if values.shape[0] != m + 1 or not bool(torch.isfinite(values).all()):
        raise ValueError(f"f must map the (m + 1,) = ({m + 1},) knots to finite values, got {values}")
    return Interpolant(knots, values)


def cell_grid(a: float, b: float, n: int) -> Tensor:
    """(n,) midpoints of n equal cells of [a, b]: a grid strictly inside the interval."""
    n = positive_int("n", n)
    return a + (b - a) * (torch.arange(n, dtype=_F64) + 0.5) / n


def interpolation_error(f: Function1D, a: float, b: float, m: int, *, n_grid: int = 4000) -> float:
    """max |s - f| over :func:`cell_grid` (a, b, n_grid), s the m-unit interpolant."""
    z = cell_grid(a, b, n_grid)
    return float((interpolant(f, a, b, m)(z) - f(z).to(_F64)).abs().max())


def second_derivative_sup(f: Function1D, a: float, b: float, *, n_grid: int = 2000) -> float:
    """max |f''| on [a, b], by central second differences at :func:`cell_grid` points."""
    z = cell_grid(a, b, n_grid)
    step = (b - a) / (8 * n_grid)
    f2 = (f(z + step).to(_F64) - 2 * f(z).to(_F64) + f(z - step).to(_F64)) / step**2
    return float(f2.abs().max())


def interpolation_bound(f: Function1D, a: float, b: float, m: int) -> float:
    """The C^2 bound (b - a)^2 ||f''||_inf / (8 m^2) on the interpolation error."""
    return (b - a) ** 2 * second_derivative_sup(f, a, b) / (8 * positive_int("m", m) ** 2)
