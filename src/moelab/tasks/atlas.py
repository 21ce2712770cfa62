"""Atlases of linear charts (Example 4.6) with a smooth partition of unity (Sec. 4).

Chart i of an E-chart atlas has a centre c_i on M, an orthonormal basis B_i (d, k) of the tangent
space at c_i, and the affine chart map (the rescaled tangent projection)

    phi_i(x) = (B_i (P^T x - c_i) - lo_i) / (hi_i - lo_i) = A_i x + a_i,   A (E, d, D), a (E, d),

with [lo_i, hi_i] the range of the projection over the domain U_i, so phi_i(U_i) lies in [0, 1]^d.
A and a are plain tensors, ready to be folded into a network's first affine map (Cor. 4.9).

Domains, per manifold (h: half-width, "overlap" the ``chart_overlap`` argument):

* circle, sphere: open geodesic caps of radius h = (1 + overlap) * (covering radius of the centres).
  h < pi/2 keeps each cap in an open hemisphere, where the tangent projection is injective. Circle:
  E equally spaced centres (covering radius pi / E), so E >= 3. Sphere S^d: the vertices of the
  regular simplex (covering radius arccos(1/(d+1))) for d + 2 <= E < 2d + 2, else of the
  cross-polytope +-e_j (arccos(1/sqrt(d+1))); centres beyond these are added greedily, farthest from
  the others, and h stays that of the base set (extra centres only add overlap).
* torus: products of circle arcs, k equally spaced arcs per factor, so E = k^d with k >= 3.
* spiral, Swiss roll: E intervals of the curve parameter t (equal turning), centred at
  t_min + (i + 1/2) T / E, half-width (1 + overlap) T / (2E), T = t_max - t_min; the roll's charts
  span its full height. The tangent turns by less than pi/2 on either side of each centre (checked),
  so the projection is strictly monotone along the arc, hence injective.

Partition of unity: rho_i = b_i / sum_j b_j with b_i = prod_f beta(r_if^2), beta(s) = exp(-s / (1 - s))
for s < 1 and 0 otherwise (C^infinity), r_if the distance to the centre in units of the domain radius:
chordal |p - c_i| / (2 sin(h/2)) on circle and sphere (per circle factor f on the torus),
|t - t_i| / h on the spirals. Thus rho_i > 0 exactly on U_i, rho is C^infinity on M, and the chart of
a point, argmax_i rho_i, is its nearest centre (charts of equal radius).

Inverse charts are exact on phi_i(U_i); where that image does not fill [0, 1]^d (sphere caps only) the
tangent vector is first clipped radially onto it, a continuous extension to the whole cube.

Shape legend: n points, E charts, d intrinsic dim, k native ambient dim, D embedding dim.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab._validation import positive_float, positive_int
from moelab.tasks._common import as_float64, check_dtype
from moelab.tasks.manifolds import Circle, Manifold, Sphere, Torus, _SpiralFamily

_F64 = torch.float64


def smooth_bump(s: Tensor) -> Tensor:
    """beta(s) = exp(-s / (1 - s)) for s < 1, else 0: C^infinity, beta(0) = 1, s a squared radius."""
    inside = s < 1
    safe = torch.where(inside, s, torch.zeros_like(s))
    return torch.where(inside, torch.exp(-safe / (1 - safe)), torch.zeros_like(s))


@dataclass(frozen=True, eq=False)
class Atlas(ABC):
    """E linear charts of ``manifold`` embedded in R^D by ``embedding``, with a partition of unity.

    Fields are float64 and native (pre-embedding); the public properties and methods work in R^D
    and return ``dtype``. Build one with :func:`make_atlas`.
    """

    manifold: Manifold
    embedding: Tensor  # P (D, k)
    native_centers: Tensor  # c (E, k)
    native_tangents: Tensor  # B (E, d, k), orthonormal rows
    lo: Tensor  # (E, d)
    hi: Tensor  # (E, d)
    half_width: float  # h: an angle (circle, sphere, torus factors) or a span of t (spirals)
    dtype: torch.dtype

    @property
    def n_charts(self) -> int:
        return self.native_centers.shape[0]

    @property
    def d(self) -> int:
        return self.manifold.d

    @property
    def D(self) -> int:
        return self.embedding.shape[0]

    @property
    def centers(self) -> Tensor:
        """(E, D) chart centres in R^D."""
        return (self.native_centers @ self.embedding.T).to(self.dtype)

    @property
    def tangents(self) -> Tensor:
        """(E, d, D) orthonormal tangent bases at the centres, in R^D."""
        return (self.native_tangents @ self.embedding.T).to(self.dtype)

    def _linear(self) -> tuple[Tensor, Tensor]:
        width = self.hi - self.lo
        A = self.native_tangents @ self.embedding.T / width[..., None]
        b_c = torch.einsum("edk,ek->ed", self.native_tangents, self.native_centers)
        return A, -(b_c + self.lo) / width

    @property
    def A(self) -> Tensor:
        """(E, d, D) linear part of the chart maps phi_i(x) = A_i x + a_i."""
        return self._linear()[0].to(self.dtype)

    @property
    def a(self) -> Tensor:
        """(E, d) offsets of the chart maps."""
        return self._linear()[1].to(self.dtype)

    def pre_embed(self, x: Tensor) -> Tensor:
        """(n, D) -> (n, k) float64, P^T x: the native (pre-embedding) coordinates."""
        return as_float64(x, self.D) @ self.embedding

    def phi(self, x: Tensor) -> Tensor:
        """(n, D) -> (n, E, d) all chart maps A_i x + a_i; in [0, 1]^d where x is in U_i."""
        A, a = self._linear()
        return (torch.einsum("edD,nD->ned", A, as_float64(x, self.D)) + a).to(self.dtype)

    @abstractmethod
    def _r2(self, p: Tensor) -> Tensor:
        """(n, k) -> (n, E, f) squared distances to the centres in units of the domain radius,
        one per factor f (the torus has d factors, the others one)."""

    @abstractmethod
    def _inverse_native(self, v: Tensor, chart: Tensor) -> Tensor:
        """Tangent coordinates v (n, d) in [lo, hi] of charts ``chart`` (n,) -> points p (n, k)."""

    def in_domain(self, x: Tensor) -> Tensor:
        """(n, D) points on M -> (n, E) bool, x in U_i (open domains)."""
        return (self._r2(self.pre_embed(x)) < 1).all(dim=2)

    def _bumps(self, x: Tensor) -> Tensor:
        return smooth_bump(self._r2(self.pre_embed(x))).prod(dim=2)

    def partition_of_unity(self, x: Tensor) -> Tensor:
        """(n, D) points on M -> rho (n, E): smooth, rho_i = 0 off U_i, rows sum to 1.
        Rows are 0 for points no chart covers (off the manifold)."""
        b = self._bumps(x)
        total = b.sum(dim=1, keepdim=True)
        return torch.where(total > 0, b / total.clamp_min(1e-300), 0.0).to(self.dtype)

    def chart_of(self, x: Tensor) -> Tensor:
        """(n, D) -> (n,) long, argmax_i rho_i(x): the chart a point belongs to."""
        return self._bumps(x).argmax(dim=1)

    def inverse(self, u: Tensor, chart: int | Tensor) -> Tensor:
        """phi_i^{-1}: u (n, d) in [0, 1]^d (clamped) of chart(s) ``chart`` (int or (n,) long)
        -> (n, D) points on M. Exact inverse on phi_i(U_i)."""
        u = as_float64(u, self.d, "u").clamp(0, 1)
        chart = torch.as_tensor(chart, dtype=torch.long).expand(u.shape[0])
        if bool(((chart < 0) | (chart >= self.n_charts)).any()):
            raise ValueError(f"chart must lie in [0, {self.n_charts}), got {chart.unique()}")
        v = self.lo[chart] + u * (self.hi - self.lo)[chart]
        return (self._inverse_native(v, chart) @ self.embedding.T).to(self.dtype)


def _chord2(h: float) -> float:
    """Squared chord of a geodesic arc of angle h on the unit circle."""
    return 2 - 2 * math.cos(h)


@dataclass(frozen=True, eq=False)
class CapAtlas(Atlas):
    """Geodesic caps of radius ``half_width`` on the unit circle or sphere."""

    def _r2(self, p: Tensor) -> Tensor:
        diff = p[:, None, :] - self.native_centers[None]
        return (diff.pow(2).sum(dim=2) / _chord2(self.half_width))[..., None]

    def _inverse_native(self, v: Tensor, chart: Tensor) -> Tensor:
        norm = v.norm(dim=1, keepdim=True)
        v = v * (math.sin(self.half_width) / norm.clamp_min(1e-300)).clamp(max=1)
        normal = torch.sqrt((1 - v.pow(2).sum(dim=1, keepdim=True)).clamp_min(0))
        return normal * self.native_centers[chart] + torch.einsum(
            "nd,ndk->nk", v, self.native_tangents[chart]
        )


@dataclass(frozen=True, eq=False)
class TorusAtlas(Atlas):
    """Products of circle arcs of half-width ``half_width``; chart i <-> multi-index (row-major)."""

    def _pairs(self, p: Tensor) -> Tensor:
        return p.reshape(p.shape[0], -1, 2)

    def _r2(self, p: Tensor) -> Tensor:
        diff = self._pairs(p)[:, None] - self._pairs(self.native_centers)[None]
        return diff.pow(2).sum(dim=3) / _chord2(self.half_width)

    def _inverse_native(self, v: Tensor, chart: Tensor) -> Tensor:
        centre = self._pairs(self.native_centers[chart])  # (n, d, 2)
        tangent = torch.stack([-centre[..., 1], centre[..., 0]], dim=2)
        pairs = torch.sqrt(1 - v.pow(2))[..., None] * centre + v[..., None] * tangent
        return pairs.flatten(1)


@dataclass(frozen=True, eq=False)
class SpiralAtlas(Atlas):
    """Intervals [t_i - h, t_i + h] of the curve parameter of a spiral or Swiss roll."""

    t_centers: Tensor  # (E,)

    @property
    def _t_range(self) -> tuple[Tensor, Tensor]:
        m = self.manifold
        h = self.half_width
        return (self.t_centers - h).clamp_min(m.t_min), (self.t_centers + h).clamp_max(m.t_max)

    def _r2(self, p: Tensor) -> Tensor:
        t = self.manifold.profile.param_of(self.manifold.split(p)[0])
        return ((t[:, None] - self.t_centers) / self.half_width).pow(2)[..., None]

    def _inverse_native(self, v: Tensor, chart: Tensor) -> Tensor:
        profile = self.manifold.profile
        t_lo, t_hi = (end[chart] for end in self._t_range)
        tangent = profile.unit_tangent(self.t_centers[chart])
        centre = profile.curve(self.t_centers[chart])
        for _ in range(60):  # bisection: the projection increases along the arc
            mid = (t_lo + t_hi) / 2
            below = ((profile.curve(mid) - centre) * tangent).sum(dim=1) < v[:, 0]
            t_lo, t_hi = torch.where(below, mid, t_lo), torch.where(below, t_hi, mid)
        height = v[:, 1] if v.shape[1] > 1 else torch.zeros_like(v[:, 0])
        return self.manifold.join(profile.curve((t_lo + t_hi) / 2), height)


def _householder_tangents(c: Tensor) -> Tensor:
    """(k,) unit vector -> (k - 1, k) orthonormal basis of its orthogonal complement."""
    k = c.shape[0]
    w = torch.zeros(k, dtype=_F64)
    w[0] = 1
    w = w - c
    if float(w.norm()) < 1e-12:
        return torch.eye(k, dtype=_F64)[1:]
    reflect = torch.eye(k, dtype=_F64) - 2 * torch.outer(w, w) / w.dot(w)  # maps e_1 to c
    return reflect[1:]


def _sphere_centres(d: int, E: int) -> tuple[Tensor, float]:
    """E centres on S^d and the covering radius of their base set (see the module docstring)."""
    k = d + 1
    if E >= 2 * k:
        base = torch.cat([torch.eye(k, dtype=_F64), -torch.eye(k, dtype=_F64)], dim=1).view(-1, k)
        cover = math.acos(1 / math.sqrt(k))
    else:
        # regular simplex: columns of the Helmert matrix's last k rows, normalised
        helmert = torch.zeros(k, k + 1, dtype=_F64)
        for j in range(1, k + 1):
            helmert[j - 1, :j] = 1 / math.sqrt(j * (j + 1))
            helmert[j - 1, j] = -j / math.sqrt(j * (j + 1))
        base = helmert.T / helmert.T.norm(dim=1, keepdim=True)
        cover = math.acos(1 / k)
    candidates = torch.randn(4096, k, generator=torch.Generator().manual_seed(0), dtype=_F64)
    candidates = candidates / candidates.norm(dim=1, keepdim=True)
    centres = list(base)
    while len(centres) < E:
        closeness = (candidates @ torch.stack(centres).T).max(dim=1).values
        centres.append(candidates[closeness.argmin()])
    return torch.stack(centres), cover


def _too_wide(E: int, overlap: float, name: str, half_deg: float) -> ValueError:
    return ValueError(
        f"n_charts={E} with chart_overlap={overlap} gives charts of the {name} that turn by "
        f"{half_deg:.1f} deg from their centre; linear charts need < 90 deg: use more charts "
        f"or less overlap"
    )


def make_atlas(
    manifold: Manifold,
    n_charts: int | None = None,
    *,
    embedding: Tensor | None = None,
    chart_overlap: float = 0.25,
    dtype: torch.dtype = torch.float32,
) -> Atlas:
    """An atlas of ``n_charts`` (E, default ``manifold.default_n_charts``) linear charts of
    ``manifold`` embedded by ``embedding`` (P (D, k), default the identity), as in Example 4.6,
    with the partition of unity described in the module docstring."""
    E = manifold.default_n_charts if n_charts is None else positive_int("n_charts", n_charts)
    overlap = positive_float("chart_overlap", chart_overlap)
    dtype = check_dtype(dtype)
    k = manifold.ambient_dim
    P = torch.eye(k, dtype=_F64) if embedding is None else embedding.to(_F64)
    if P.dim() != 2 or P.shape[1] != k:
        raise ValueError(f"embedding must have shape (D, {k}), got {tuple(P.shape)}")
    common = {"manifold": manifold, "embedding": P, "dtype": dtype}
    if isinstance(manifold, (Circle, Torus)):
        return _arc_atlas(manifold, E, overlap, common)
    if isinstance(manifold, Sphere):
        return _cap_atlas(manifold, E, overlap, common)
    if isinstance(manifold, _SpiralFamily):
        return _spiral_atlas(manifold, E, overlap, common)
    raise TypeError(f"make_atlas has no atlas for manifold {type(manifold).__name__}")


def _arc_atlas(manifold: Circle | Torus, E: int, overlap: float, common: dict) -> Atlas:
    """Circle: E arcs; torus: products of k arcs per circle factor, E = k^d (row-major)."""
    d = manifold.d
    per = round(E ** (1 / d))  # arcs per circle factor
    if per**d != E or per < 3:
        what = "n_charts must be >= 3" if d == 1 else f"n_charts must be k^{d} with k >= 3"
        raise ValueError(
            f"n_charts={E} is impossible for the {manifold.name}: charts are arcs shorter "
            f"than pi (products of such arcs on the torus), so {what}"
        )
    h = math.pi / per * (1 + overlap)
    if h >= math.pi / 2:
        raise _too_wide(E, overlap, manifold.name, math.degrees(h))
    angles = 2 * math.pi * torch.arange(per, dtype=_F64) / per
    grid = torch.cartesian_prod(*[angles] * d).view(E, d)  # row-major multi-index
    centres = torch.stack([torch.cos(grid), torch.sin(grid)], dim=2)  # (E, d, 2)
    tangents = torch.zeros(E, d, d, 2, dtype=_F64)  # row j: circle factor j's tangent
    for j in range(d):
        tangents[:, j, j] = torch.stack([-centres[:, j, 1], centres[:, j, 0]], dim=1)
    bound = torch.full((E, d), math.sin(h), dtype=_F64)
    cls = CapAtlas if d == 1 else TorusAtlas
    return cls(
        native_centers=centres.flatten(1),
        native_tangents=tangents.flatten(2),
        lo=-bound,
        hi=bound,
        half_width=h,
        **common,
    )


def _cap_atlas(manifold: Sphere, E: int, overlap: float, common: dict) -> Atlas:
    """Geodesic caps around the centres of :func:`_sphere_centres`."""
    d = manifold.d
    if E < d + 2:
        raise ValueError(f"n_charts={E} is too few for S^{d}: caps inside hemispheres need >= {d + 2}")
    centres, cover = _sphere_centres(d, E)
    h = cover * (1 + overlap)
    if h >= math.pi / 2:
        raise _too_wide(E, overlap, f"{d}-sphere", math.degrees(h))
    bound = torch.full((E, d), math.sin(h), dtype=_F64)
    tangents = torch.stack([_householder_tangents(c) for c in centres])
    return CapAtlas(
        native_centers=centres,
        native_tangents=tangents,
        lo=-bound,
        hi=bound,
        half_width=h,
        **common,
    )


def _spiral_atlas(manifold: _SpiralFamily, E: int, overlap: float, common: dict) -> Atlas:
    """E intervals of equal span of the curve parameter t (the roll's charts span its height)."""
    profile = manifold.profile
    span = manifold.t_max - manifold.t_min
    t_c = manifold.t_min + (torch.arange(E, dtype=_F64) + 0.5) * span / E
    h = span / (2 * E) * (1 + overlap)
    t_lo, t_hi = (t_c - h).clamp_min(manifold.t_min), (t_c + h).clamp_max(manifold.t_max)
    psi = profile.tangent_angle
    turn = torch.maximum(psi(t_hi) - psi(t_c), psi(t_c) - psi(t_lo)).max()
    if turn >= math.pi / 2:
        raise _too_wide(E, overlap, manifold.name, math.degrees(float(turn)))
    tangent = profile.unit_tangent(t_c)  # (E, 2)
    centre = profile.curve(t_c)
    zero = torch.zeros(E, dtype=_F64)
    rows = [manifold.join(tangent, zero)]
    lo = [((profile.curve(t_lo) - centre) * tangent).sum(1)]
    hi = [((profile.curve(t_hi) - centre) * tangent).sum(1)]
    if manifold.d == 2:  # the roll's height direction
        rows.append(manifold.join(torch.zeros(E, 2, dtype=_F64), torch.ones(E, dtype=_F64)))
        lo.append(torch.full((E,), -manifold.height, dtype=_F64))
        hi.append(torch.full((E,), manifold.height, dtype=_F64))
    return SpiralAtlas(
        native_centers=manifold.join(centre, zero),
        native_tangents=torch.stack(rows, dim=1),
        lo=torch.stack(lo, dim=1),
        hi=torch.stack(hi, dim=1),
        half_width=h,
        t_centers=t_c,
        **common,
    )
