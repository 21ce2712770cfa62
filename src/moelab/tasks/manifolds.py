"""Manifolds for the Sec. 4 setting, their uniform samplers, and embeddings into R^D.

Each manifold M lives natively in R^k (k = ``ambient_dim``); its points p in R^k are the
*pre-embedding coordinates* (the paper's target sin(5 x_1) + cos(3 x_2) reads these). An embedding
matrix P (D, k) with orthonormal columns carries M into R^D as x = P p:

* ``"pad"``: P = [I_k; 0], zero padding, as in the paper's Experiment I;
* ``"isometry"``: a random P, Haar distributed given the seed, so M sits in no coordinate subspace.

Manifolds (``latent`` are intrinsic coordinates; "uniform" is with respect to the Riemannian volume):

* ``Circle``: unit circle in R^2, latent the angle theta in [0, 2 pi), sampled uniformly.
* ``Sphere(d)``: unit S^d in R^(d+1), latent the hyperspherical angles (phi_1..phi_d), sampled
  uniformly in area (normalised Gaussians).
* ``Torus(d)``: the *flat* torus, a product of d unit circles in R^(2d),
  p = (cos t_1, sin t_1, ..., cos t_d, sin t_d); latent the angles t, uniform (the flat metric
  makes uniform angles uniform in volume). It is not the doughnut in R^3.
* ``Spiral``: the planar Archimedean spiral p = (t cos t, t sin t) / t_max, t in [t_min, t_max]
  (three turns by default); latent the arclength s from the inner end, sampled uniformly in s. Its
  turns nest, so the convex hull of one chart's arc contains points of other charts: a linear
  router on raw x cannot reproduce its atlas's routing.
* ``SwissRoll``: the spiral profile (1.5 turns, as in scikit-learn) extruded along the second axis,
  p = (t cos t / t_max, h, t sin t / t_max) with h in [-height, height]; latent (s, h) with s the
  arclength of the profile. (s, h) are isometric coordinates of this flat surface, and the samples
  are uniform in them, hence uniform in area.

Shape legend: n samples, k native ambient dim, m latent dim, D embedding dim. Geometry is float64.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab._validation import one_of, positive_float, positive_int

MANIFOLDS = ("circle", "sphere", "torus", "spiral", "swiss_roll")
EMBEDDINGS = ("pad", "isometry")
_F64 = torch.float64


class Manifold(ABC):
    """A compact d-dimensional manifold in R^k with a uniform sampler and intrinsic coordinates.

    Each subclass sets these attributes (as class attributes, fields or properties):

    Attributes:
        name: the name in :data:`MANIFOLDS`.
        d: the intrinsic dimension.
        ambient_dim: k, the dimension of the native ambient space.
        latent_dim: m, the number of intrinsic coordinates returned as ``latent``.
        radius: max |p| over the manifold.
        default_n_charts: the number of charts (experts) used when none is asked for.
    """

    name: str
    d: int
    ambient_dim: int
    latent_dim: int
    radius: float
    default_n_charts: int

    @abstractmethod
    def sample_latent(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, m) float64 intrinsic coordinates of n points drawn uniformly on the manifold."""

    @abstractmethod
    def to_ambient(self, latent: Tensor) -> Tensor:
        """(n, m) intrinsic coordinates -> (n, k) points p."""

    @abstractmethod
    def to_latent(self, p: Tensor) -> Tensor:
        """(n, k) points on the manifold -> (n, m) intrinsic coordinates."""

    @abstractmethod
    def distance(self, p: Tensor) -> Tensor:
        """(n, k) -> (n,) distance to the manifold (exact, or an upper bound that vanishes exactly
        on the manifold, as documented per class)."""


def _angle(y: Tensor, x: Tensor) -> Tensor:
    """atan2 mapped to [0, 2 pi)."""
    return torch.remainder(torch.atan2(y, x), 2 * math.pi)


@dataclass(frozen=True)
class Circle(Manifold):
    """The unit circle in R^2 (Experiment I); latent theta (n, 1) in [0, 2 pi)."""

    name = "circle"
    d = 1

    ambient_dim = property(lambda self: 2)
    latent_dim = property(lambda self: 1)
    radius = property(lambda self: 1.0)
    default_n_charts = property(lambda self: 4)

    def sample_latent(self, n: int, generator: torch.Generator) -> Tensor:
        return 2 * math.pi * torch.rand(n, 1, generator=generator, dtype=_F64)

    def to_ambient(self, latent: Tensor) -> Tensor:
        return torch.cat([torch.cos(latent), torch.sin(latent)], dim=1)

    def to_latent(self, p: Tensor) -> Tensor:
        return _angle(p[:, 1:2], p[:, 0:1])

    def distance(self, p: Tensor) -> Tensor:
        """Exact: | |p| - 1 |."""
        return (p.norm(dim=1) - 1).abs()


@dataclass(frozen=True)
class Sphere(Manifold):
    """The unit sphere S^d in R^(d+1); latent the hyperspherical angles (n, d): phi_1..phi_{d-1}
    in [0, pi], phi_d in [0, 2 pi), with p_1 = cos phi_1, p_2 = sin phi_1 cos phi_2, ..."""

    d: int = 2
    name = "sphere"

    def __post_init__(self) -> None:
        positive_int("d", self.d)

    ambient_dim = property(lambda self: self.d + 1)
    latent_dim = property(lambda self: self.d)
    radius = property(lambda self: 1.0)
    default_n_charts = property(lambda self: 2 * (self.d + 1))

    def sample_latent(self, n: int, generator: torch.Generator) -> Tensor:
        g = torch.randn(n, self.d + 1, generator=generator, dtype=_F64)
        return self.to_latent(g / g.norm(dim=1, keepdim=True))

    def to_ambient(self, latent: Tensor) -> Tensor:
        sines = torch.cumprod(torch.sin(latent), dim=1)  # sin phi_1 ... sin phi_j
        lead = torch.cat([torch.ones_like(latent[:, :1]), sines[:, :-1]], dim=1)
        return torch.cat([lead * torch.cos(latent), sines[:, -1:]], dim=1)

    def to_latent(self, p: Tensor) -> Tensor:
        # tail[:, j] = |p_{j+1:}|, the norm of the coordinates after p_j
        tail = p.flip(1).pow(2).cumsum(1).flip(1).sqrt()
        polar = torch.atan2(tail[:, 1:-1], p[:, :-2])
        return torch.cat([polar, _angle(p[:, -1:], p[:, -2:-1])], dim=1)

    def distance(self, p: Tensor) -> Tensor:
        """Exact: | |p| - 1 |."""
        return (p.norm(dim=1) - 1).abs()


@dataclass(frozen=True)
class Torus(Manifold):
    """The flat d-torus, a product of d unit circles in R^(2d); latent the angles (n, d)."""

    d: int = 2
    name = "torus"

    def __post_init__(self) -> None:
        positive_int("d", self.d)

    ambient_dim = property(lambda self: 2 * self.d)
    latent_dim = property(lambda self: self.d)
    radius = property(lambda self: math.sqrt(self.d))
    default_n_charts = property(lambda self: 4**self.d)

    def sample_latent(self, n: int, generator: torch.Generator) -> Tensor:
        return 2 * math.pi * torch.rand(n, self.d, generator=generator, dtype=_F64)

    def to_ambient(self, latent: Tensor) -> Tensor:
        return torch.stack([torch.cos(latent), torch.sin(latent)], dim=2).flatten(1)

    def to_latent(self, p: Tensor) -> Tensor:
        return _angle(p[:, 1::2], p[:, 0::2])

    def distance(self, p: Tensor) -> Tensor:
        """Exact for the product: sqrt(sum_j (|(p_2j, p_2j+1)| - 1)^2)."""
        pairs = p.view(p.shape[0], self.d, 2)
        return (pairs.norm(dim=2) - 1).pow(2).sum(1).sqrt()


@dataclass(frozen=True)
class ArchimedeanProfile:
    """The planar curve gamma(t) = (t cos t, t sin t) / t_max, t in [t_min, t_max]."""

    t_min: float
    t_max: float

    def __post_init__(self) -> None:
        positive_float("t_min", self.t_min)
        if not self.t_max > self.t_min:
            raise ValueError(f"t_max must exceed t_min={self.t_min}, got {self.t_max}")

    def curve(self, t: Tensor) -> Tensor:
        """(n,) -> (n, 2)."""
        return torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / self.t_max

    def tangent_angle(self, t: Tensor) -> Tensor:
        """Direction of gamma'(t): t + arctan(t), increasing, so an arc turns by its difference."""
        return t + torch.atan(t)

    def unit_tangent(self, t: Tensor) -> Tensor:
        """(n,) -> (n, 2) gamma'(t) / |gamma'(t)|."""
        psi = self.tangent_angle(t)
        return torch.stack([torch.cos(psi), torch.sin(psi)], dim=1)

    def arclength(self, t: Tensor) -> Tensor:
        """Arclength from gamma(t_min) to gamma(t); |gamma'(t)| = sqrt(1 + t^2) / t_max."""

        def primitive(u: Tensor) -> Tensor:
            return (u * torch.sqrt(1 + u * u) + torch.asinh(u)) / (2 * self.t_max)

        return primitive(t) - primitive(torch.full_like(t, self.t_min))

    @property
    def length(self) -> float:
        return float(self.arclength(torch.tensor([self.t_max], dtype=_F64)))

    def param_at_arclength(self, s: Tensor) -> Tensor:
        """Inverse of :meth:`arclength` by Newton's method from t_max: the arclength is convex in t,
        so the iterates decrease monotonically to the root."""
        t = torch.full_like(s, self.t_max)
        for _ in range(60):
            step = (self.arclength(t) - s) * self.t_max / torch.sqrt(1 + t * t)
            t = (t - step).clamp(self.t_min, self.t_max)
            if step.numel() == 0 or float(step.abs().max()) < 1e-13:
                break
        return t

    def param_of(self, q: Tensor) -> Tensor:
        """(n, 2) points -> (n,) parameter t of the turn nearest in radius at the same polar angle
        (exact on the curve)."""
        r = q.norm(dim=1) * self.t_max
        theta = _angle(q[:, 1], q[:, 0])
        turn = torch.round((r - theta) / (2 * math.pi))
        return (theta + 2 * math.pi * turn).clamp(self.t_min, self.t_max)


class _SpiralFamily(Manifold):
    """Shared code of the spiral and the Swiss roll: an Archimedean profile, maybe extruded."""

    t_min: float
    t_max: float

    @property
    def profile(self) -> ArchimedeanProfile:
        return ArchimedeanProfile(self.t_min, self.t_max)

    @abstractmethod
    def split(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """(n, k) -> profile coordinates (n, 2) and height (n,)."""

    @abstractmethod
    def join(self, q: Tensor, h: Tensor) -> Tensor:
        """Inverse of :meth:`split`."""

    def distance(self, p: Tensor) -> Tensor:
        """An upper bound, zero exactly on the manifold: the distance to the point of the nearest
        turn at the same polar angle (and height clamped to the manifold's range)."""
        q, h = self.split(p)
        nearest = self.join(self.profile.curve(self.profile.param_of(q)), self._clamp_height(h))
        return (p - nearest).norm(dim=1)

    def _clamp_height(self, h: Tensor) -> Tensor:
        return h


@dataclass(frozen=True)
class Spiral(_SpiralFamily):
    """Planar Archimedean spiral in R^2 (d = 1); latent the arclength s (n, 1) in [0, length]."""

    t_min: float = 2 * math.pi
    t_max: float = 8 * math.pi
    name = "spiral"
    d = 1

    def __post_init__(self) -> None:
        ArchimedeanProfile(self.t_min, self.t_max)  # validates the range

    ambient_dim = property(lambda self: 2)
    latent_dim = property(lambda self: 1)
    radius = property(lambda self: 1.0)
    default_n_charts = property(lambda self: 10)

    def split(self, p: Tensor) -> tuple[Tensor, Tensor]:
        return p, torch.zeros_like(p[:, 0])

    def join(self, q: Tensor, h: Tensor) -> Tensor:
        return q

    def sample_latent(self, n: int, generator: torch.Generator) -> Tensor:
        return self.profile.length * torch.rand(n, 1, generator=generator, dtype=_F64)

    def to_ambient(self, latent: Tensor) -> Tensor:
        return self.profile.curve(self.profile.param_at_arclength(latent[:, 0]))

    def to_latent(self, p: Tensor) -> Tensor:
        return self.profile.arclength(self.profile.param_of(p))[:, None]


@dataclass(frozen=True)
class SwissRoll(_SpiralFamily):
    """Swiss roll in R^3 (d = 2): p = (gamma_1(t), h, gamma_2(t)), h in [-height, height];
    latent (s, h) (n, 2), s the profile's arclength."""

    t_min: float = 1.5 * math.pi
    t_max: float = 4.5 * math.pi
    height: float = 1.0
    name = "swiss_roll"
    d = 2

    def __post_init__(self) -> None:
        ArchimedeanProfile(self.t_min, self.t_max)  # validates the range
        positive_float("height", self.height)

    ambient_dim = property(lambda self: 3)
    latent_dim = property(lambda self: 2)
    radius = property(lambda self: math.sqrt(1 + self.height**2))
    default_n_charts = property(lambda self: 6)

    def split(self, p: Tensor) -> tuple[Tensor, Tensor]:
        return p[:, [0, 2]], p[:, 1]

    def join(self, q: Tensor, h: Tensor) -> Tensor:
        return torch.stack([q[:, 0], h, q[:, 1]], dim=1)

    def _clamp_height(self, h: Tensor) -> Tensor:
        return h.clamp(-self.height, self.height)

    def sample_latent(self, n: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(n, 2, generator=generator, dtype=_F64)
        return torch.stack([self.profile.length * u[:, 0], self.height * (2 * u[:, 1] - 1)], 1)

    def to_ambient(self, latent: Tensor) -> Tensor:
        t = self.profile.param_at_arclength(latent[:, 0])
        return self.join(self.profile.curve(t), latent[:, 1])

    def to_latent(self, p: Tensor) -> Tensor:
        q, h = self.split(p)
        return torch.stack([self.profile.arclength(self.profile.param_of(q)), h], dim=1)


def make_manifold(name: str | Manifold, d: int | None = None) -> Manifold:
    """The manifold called ``name`` (one of :data:`MANIFOLDS`) of intrinsic dimension ``d``
    (default: 1 for circle and spiral, 2 otherwise). A :class:`Manifold` instance is returned
    as is (then ``d`` must be None or equal its dimension)."""
    if isinstance(name, Manifold):
        if d is not None and d != name.d:
            raise ValueError(f"d={d!r} contradicts the given manifold's dimension {name.d}")
        return name
    if not isinstance(name, str):
        raise TypeError(f"manifold must be a name or a Manifold, got {type(name).__name__}")
    one_of("manifold", name, MANIFOLDS)
    fixed = {"circle": 1, "spiral": 1, "swiss_roll": 2}
    if name in fixed:
        if d is not None and (isinstance(d, bool) or d != fixed[name]):
            raise ValueError(f"d={d!r} is impossible for manifold={name!r}: it has d={fixed[name]}")
        return {"circle": Circle, "spiral": Spiral, "swiss_roll": SwissRoll}[name]()
    d = 2 if d is None else positive_int("d", d)
    return Sphere(d) if name == "sphere" else Torus(d)


def embedding_width(M: Manifold, D: object, where: str = "") -> int:
    """``D`` as an int if ``M`` fits in R^D (D > d, and D >= its native ambient width k), else a
    ValueError naming D and, with ``where`` (e.g. ``" (block 1)"``), which D it was."""
    D = positive_int("D", D)
    if M.d >= D:
        raise ValueError(f"D={D}{where} must exceed the intrinsic dimension d={M.d}")
    k = M.ambient_dim
    if k > D:
        raise ValueError(
            f"D={D}{where} is too small: the {M.name} with d={M.d} lives in R^{k}; need D >= {k}"
        )
    return D


def embedding_matrix(kind: str, k: int, D: int, generator: torch.Generator | None = None) -> Tensor:
    """P (D, k) float64 with orthonormal columns: ``"pad"`` = [I_k; 0], ``"isometry"`` = Q of the QR
    factorisation of a Gaussian (D, k) matrix with signs fixed (Haar distributed); the latter draws
    from ``generator``."""
    one_of("embedding", kind, EMBEDDINGS)
    if kind == "pad":
        return torch.eye(D, k, dtype=_F64)
    if generator is None:
        raise ValueError("embedding='isometry' needs a generator")
    q, r = torch.linalg.qr(torch.randn(D, k, generator=generator, dtype=_F64))
    return q * torch.sign(torch.diagonal(r))
