"""Target functions on a manifold, read on its pre-embedding coordinates p in R^k (Sec. 4, 6).

* ``"paper"`` (Experiment I): f(p) = sin(5 p_1) + cos(3 p_2), C^infinity.
* ``"ridge"``: a family with a prescribed smoothness kappa (an integer >= 0),

      f(p) = b + sum_{j=1}^J w_j |z_j(p)|^(kappa + 1/2),   z_j(p) = (<u_j, p> - c_j) / (2 R),

  with u_j uniform unit vectors, c_j = <u_j, q_j> for points q_j drawn on M (so every kink meets M),
  R = max |p| over M (so |z_j| <= 1), and w_j ~ N(0, 1), then w and the constant b set so that f has
  mean 0 and standard deviation 1 over 2048 further uniform draws on M (comparable scales for
  every kappa). The profile |z|^(kappa + 1/2) is C^kappa with
  a (1/2)-Hoelder kappa-th derivative and is not C^(kappa + 1) at 0. At q_j the function z_j restricted
  to M has a nonzero differential (almost surely over u_j), so it is a local coordinate there and
  f in C^kappa(M) but f not in C^(kappa + 1)(M): kappa(f) = kappa in the paper's sense (Sec. 1),
  kappa + 1/2 on the Hoelder scale. The exponent is never an integer, so f is never piecewise linear
  or polynomial along the kinks (a ReLU network cannot represent it exactly).

A target is any callable (n, k) float64 -> (n,), e.g. a user function.

Shape legend: n points, k native ambient dim, J ridges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from moelab._validation import positive_int
from moelab.tasks.manifolds import Manifold

TARGETS = ("paper", "ridge")
#: (n, k) pre-embedding coordinates -> (n,) values
Target = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PaperTarget:
    """Experiment I: f(p) = sin(5 p_1) + cos(3 p_2) on the pre-embedding coordinates (k >= 2)."""

    def __call__(self, p: Tensor) -> Tensor:
        return torch.sin(5 * p[:, 0]) + torch.cos(3 * p[:, 1])


@dataclass(frozen=True, eq=False)
class RidgeTarget:
    """f(p) = bias + sum_j w_j |(<u_j, p> - c_j) / scale|^(smoothness + 1/2); see the module
    docstring."""

    directions: Tensor  # u (J, k)
    offsets: Tensor  # c (J,)
    weights: Tensor  # w (J,)
    bias: float
    scale: float
    smoothness: int

    def __call__(self, p: Tensor) -> Tensor:
        z = (p.to(self.directions.dtype) @ self.directions.T - self.offsets) / self.scale
        return self.bias + (self.weights * z.abs().pow(self.smoothness + 0.5)).sum(dim=1)


def check_smoothness(smoothness: object) -> int:
    """``smoothness`` as an int >= 0, or a TypeError/ValueError naming it."""
    if isinstance(smoothness, bool) or not isinstance(smoothness, int):
        raise TypeError(
            f"smoothness must be an int kappa >= 0 (the target is C^kappa, not C^(kappa+1)), "
            f"got {smoothness!r} ({type(smoothness).__name__})"
        )
    if smoothness < 0:
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    return smoothness


def make_ridge_target(
    manifold: Manifold, *, smoothness: int, n_ridges: int = 8, generator: torch.Generator
) -> RidgeTarget:
    """A random :class:`RidgeTarget` on ``manifold`` with kappa(f) = ``smoothness``, drawn from
    ``generator`` (directions, anchor points on M, weights, then the normalisation points)."""
    kappa = check_smoothness(smoothness)
    J = positive_int("n_ridges", n_ridges)
    k = manifold.ambient_dim
    u = torch.randn(J, k, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    anchors = manifold.to_ambient(manifold.sample_latent(J, generator))
    weights = torch.randn(J, generator=generator, dtype=torch.float64)
    raw = RidgeTarget(u, (u * anchors).sum(dim=1), weights, 0.0, 2 * manifold.radius, kappa)
    values = raw(manifold.to_ambient(manifold.sample_latent(2048, generator)))
    std = float(values.std()) or 1.0
    return replace(raw, weights=weights / std, bias=-float(values.mean()) / std)


def make_target(
    target: str | Target,
    manifold: Manifold,
    *,
    smoothness: int | None = None,
    n_ridges: int = 8,
    generator: torch.Generator,
) -> Target:
    """The target named ``target`` (one of :data:`TARGETS`) on ``manifold``, or a callable as is.
    ``smoothness`` (default 1) and ``n_ridges`` apply to ``"ridge"`` only."""
    if callable(target):
        if smoothness is not None:
            raise ValueError("smoothness applies to target='ridge' only, not to a callable target")
        return target
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is unknown; expected one of {list(TARGETS)} or a callable")
    if target == "paper":
        if smoothness is not None:
            raise ValueError(
                f"smoothness={smoothness!r} applies to target='ridge' only; target='paper' is C^infinity"
            )
        return PaperTarget()
    kappa = 1 if smoothness is None else smoothness
    return make_ridge_target(manifold, smoothness=kappa, n_ridges=n_ridges, generator=generator)
