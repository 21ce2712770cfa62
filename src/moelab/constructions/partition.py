"""Two-layer ReLU nets tau: R^D -> R^E approximating an atlas's partition of unity rho (Thm 4.8).

The first layer of the shallow construction outputs tau(x) with ||tau - rho||_inf < 1/(2E) on M. Then
top-1 routing on tau picks a chart containing x: sum_i rho_i = 1 gives max_i rho_i >= 1/E, so the
chart i* = argmax tau has rho_{i*} > max rho - 2 ||tau - rho|| > 0 (docs/paper.md Sec. 3). Two builds:

``"profile"`` (circle, exact up to 1-D interpolation). With E equally spaced centres, reflecting the
circle about c_i permutes the other charts, so rho_i depends on the angle delta to c_i only, i.e. on
the linear functional s_i = <c_i, x> = cos(delta): rho_i(x) = R(s_i) with one profile R for all
charts. R is 0 for s <= cos h (outside U_i), 1 for s >= cos(2 pi / E - h) (no other chart there),
and strictly increasing in between. tau_i = T(<c_i, x>), T the piecewise-linear interpolant of R at
``knots`` + 1 angles equally spaced over that transition, is a ReLU ridge function with knots + 1
units per chart. T is nondecreasing and strictly increasing where positive, so argmax tau =
argmax_i <c_i, x> = argmax rho, the atlas's own chart (:meth:`Atlas.chart_of`) away from exact ties:
this build reproduces chart labels exactly, which Eq. (5) targets need (their subfunction changes
with the chart, :mod:`moelab.constructions.product`).

``"fit"`` (any manifold). Ridge units relu(<u_k, P^T x> - t_j) (:mod:`moelab.constructions.ridge`):
K directions u_k in the manifold's native space R^k (its span in R^D, read through the embedding
P), J thresholds t_j evenly spaced on [floor * R, R) with R = max |p|; output weights by least
squares against rho at ``n_fit`` points drawn on M from ``seed``. Defaults per manifold:
sphere K=128, J=6, floor=0 (units relu(<u, x> - t), t >= 0, are cones supported on caps, local like
rho); spiral K=40, J=28, floor=-1 (its inner turns are never extreme points of the hull, so it needs
thresholds across the whole range); otherwise K=64, J=16, floor=-1. The argmax of a fitted tau is
only guaranteed to lie in *a* chart containing x, not to equal argmax rho.

Both builds are checked on ``n_check`` further points and raise ValueError when the measured
||tau - rho|| is not below 1/(2E). Widths: m >= Omega(E^2) in the theorem; here E (knots + 1) for the
profile and K * J for the fit.

Shape legend: n points, D ambient width, k native width, E charts, U units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab._validation import one_of, positive_int
from moelab.constructions.assembly import Net
from moelab.constructions.ridge import RidgeNet, directions, fit_ridge, ridge_units
from moelab.tasks import Atlas, CapAtlas, Circle, Sphere, Spiral

_F64 = torch.float64
PARTITION_METHODS = ("auto", "profile", "fit")


@dataclass(frozen=True, eq=False)
class PartitionNet:
    """tau(x) = relu(x W^T + b) C + c0 on R^D (``net``), with how it was built and checked.

    ``check_error`` is max |tau - rho| over the ``n_check`` verification points; ``threshold`` is
    1/(2E); ``exact_argmax`` says whether argmax tau equals argmax rho by construction.
    """

    net: RidgeNet
    method: str
    threshold: float
    check_error: float
    exact_argmax: bool

    @property
    def units(self) -> int:
        return self.net.units

    def __call__(self, x_nD: Tensor) -> Tensor:
        """(n, D) -> (n, E) tau(x)."""
        return self.net(x_nD)

    def add_to(self, net: Net, src: int, dst: int) -> Net:
        """Add tau's units to ``net``: x read at inputs src..src+D-1, tau (E values) added to
        outputs dst..dst+E-1."""
        tau = self.net
        D, E = tau.weight.shape[1], tau.out.shape[1]
        w = torch.zeros(tau.units, net.d_in, dtype=_F64)
        w[:, src:src + D] = tau.weight
        v = torch.zeros(tau.units, net.d_out, dtype=_F64)
        v[:, dst:dst + E] = tau.out
        net.units(w, tau.bias, v)
        net.bias[dst:dst + E] += tau.out_bias
        return net

    def error(self, atlas: Atlas, x_nD: Tensor) -> float:
        """max |tau - rho| over the points ``x_nD`` of M."""
        return float((self(x_nD) - atlas.partition_of_unity(x_nD).to(_F64)).abs().max())


def _points(atlas: Atlas, n: int, seed: int) -> Tensor:
    """(n, D) float64 points drawn uniformly on the atlas's manifold from ``seed``."""
    M = atlas.manifold
    p = M.to_ambient(M.sample_latent(n, torch.Generator().manual_seed(seed)))
    return p @ atlas.embedding.T


def _profile(atlas: Atlas, knots: int) -> tuple[RidgeNet, bool]:
    E, h = atlas.n_charts, atlas.half_width
    c, t = atlas.native_centers, atlas.native_tangents[:, 0]  # (E, 2) each
    top = max(0.0, 2 * math.pi / E - h)  # at angles below this only chart i covers the point
    delta = torch.linspace(h, top, knots + 1, dtype=_F64)  # s = cos(delta) ascending
    P = atlas.embedding

    def rho_at(angle: Tensor, chart: int) -> Tensor:
        p = angle.cos()[:, None] * c[chart] + angle.sin()[:, None] * t[chart]
        return atlas.partition_of_unity(p @ P.T).to(_F64)[:, chart]

    R = rho_at(delta, 0)
    R[0] = 0.0  # rho vanishes on the boundary of U_i
    for chart in range(E):  # the profile is the same for every chart and both sides
        for side in (1.0, -1.0):
            gap = float((rho_at(side * delta[1:], chart) - R[1:]).abs().max())
            if gap > 1e-9:
                raise ValueError(
                    f"method='profile' needs rho_i to depend on <c_i, x> alone (equally spaced "
                    f"circle charts); chart {chart} differs by {gap:.2e}: use method='fit'"
                )
    s = delta.cos()
    slopes = torch.cat([torch.diff(R) / torch.diff(s), torch.zeros(1, dtype=_F64)])
    coef = torch.cat([slopes[:1], torch.diff(slopes)])  # unit k: relu(s - s_k), k = 0..knots
    U = knots + 1
    weight = (c @ P.T).repeat_interleave(U, dim=0)  # chart-major units (E * U, D)
    bias = -s.repeat(E)
    out = torch.zeros(E * U, E, dtype=_F64)
    for i in range(E):
        out[i * U:(i + 1) * U, i] = coef
    strictly = bool((torch.diff(R) > 0).all())
    return RidgeNet(weight, bias, out, torch.zeros(E, dtype=_F64)), strictly


def _fit_defaults(atlas: Atlas) -> tuple[int, int, float, int]:
    """(K, J, floor, n_fit) for :func:`partition_net`'s ``"fit"`` build, per manifold."""
    if isinstance(atlas.manifold, Sphere):
        return 128, 6, 0.0, 5000
    if isinstance(atlas.manifold, Spiral):
        return 40, 28, -1.0, 2500
    return 64, 16, -1.0, 4000


def partition_net(
    atlas: Atlas,
    *,
    method: str = "auto",
    knots: int = 16,
    directions_K: int | None = None,
    thresholds_J: int | None = None,
    floor: float | None = None,
    n_fit: int | None = None,
    n_check: int = 4000,
    seed: int = 0,
    check: bool = True,
) -> PartitionNet:
    """A two-layer ReLU net tau ~ rho for ``atlas`` (see the module docstring).

    Args:
        atlas: the atlas whose partition of unity rho to approximate.
        method: ``"profile"`` (circle only), ``"fit"``, or ``"auto"`` (profile on the circle).
        knots: interpolation segments of the profile build.
        directions_K, thresholds_J, floor, n_fit: the fit build's grid and fitting set size;
            None takes the per-manifold defaults.
        n_check: verification points, drawn from ``seed + 1``.
        seed: the fitting points are drawn from it.
        check: raise ValueError unless the verified ||tau - rho|| < 1/(2E).
    """
    one_of("method", method, PARTITION_METHODS)
    E = atlas.n_charts
    circle = isinstance(atlas, CapAtlas) and isinstance(atlas.manifold, Circle)
    if method == "auto":
        method = "profile" if circle else "fit"
    if method == "profile":
        if not circle:
            raise ValueError(f"method='profile' is for the circle, got the {atlas.manifold.name}")
        net, exact = _profile(atlas, positive_int("knots", knots))
    else:
        K, J, lo, n = _fit_defaults(atlas)
        K = K if directions_K is None else positive_int("directions_K", directions_K)
        J = J if thresholds_J is None else positive_int("thresholds_J", thresholds_J)
        lo = lo if floor is None else float(floor)
        n = n if n_fit is None else positive_int("n_fit", n_fit)
        R = atlas.manifold.radius
        w, b = ridge_units(directions(atlas.manifold.ambient_dim, K), lo * R, R, J)
        x = _points(atlas, n, seed)
        native = fit_ridge(x @ atlas.embedding, atlas.partition_of_unity(x), w, b)
        net = native.compose(atlas.embedding.T, torch.zeros(atlas.embedding.shape[1], dtype=_F64))
        exact = False
    x_check = _points(atlas, positive_int("n_check", n_check), seed + 1)
    err = float((net(x_check) - atlas.partition_of_unity(x_check).to(_F64)).abs().max())
    threshold = 1 / (2 * E)
    if check and not err < threshold:
        raise ValueError(
            f"the {method} partition net reaches ||tau - rho|| = {err:.3g}, not below 1/(2E) = "
            f"{threshold:.3g} for the {atlas.manifold.name} with E={E}: use more knots or units"
        )
    return PartitionNet(net, method, threshold, err, exact)
