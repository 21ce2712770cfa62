"""Two-layer ReLU nets with fixed ridge units and least-squares output weights.

Where no closed-form construction is at hand (the partition of unity on a sphere or a spiral, experts
on a 2-D chart), moelab builds a two-layer net deterministically, without SGD:

* hidden units relu(<u_k, z> - t_j) on a fixed grid of K directions u_k (:func:`directions`) and J
  thresholds t_j (evenly spaced over a given range), K * J units in all;
* output weights by linear least squares (regularised normal equations) on a given set of points.

The hidden layer depends only on (K, J, range); the fit only on the points, so a construction is
reproducible exactly. Ridge sums are dense in C(compact) (a two-layer ReLU net *is* a ridge sum), so
the fit improves with K and J; its rate is measured, not assumed.

Shape legend: n points, k input width, K directions, J thresholds, U = K * J units, O outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab._validation import positive_int

_F64 = torch.float64


def directions(k: int, K: int, *, half: bool = False) -> Tensor:
    """(K, k) deterministic unit vectors spread over the sphere S^{k-1}.

    k = 1: +1 and -1 alternately. k = 2: angles pi (i + 1/2) / K (``half``, directions up to sign)
    or 2 pi (i + 1/2) / K. k = 3: the Fibonacci lattice (hemisphere z > 0 if ``half``). k > 3: rows of
    a Gaussian matrix from a generator seeded with 0, normalised (upper half-space if ``half``).
    """
    k, K = positive_int("k", k), positive_int("K", K)
    i = torch.arange(K, dtype=_F64) + 0.5
    if k == 1:
        return torch.where(torch.arange(K) % 2 == 0, 1.0, -1.0).to(_F64)[:, None]
    if k == 2:
        angle = (math.pi if half else 2 * math.pi) * i / K
        return torch.stack([angle.cos(), angle.sin()], dim=1)
    if k == 3:
        z = 1 - (1 if half else 2) * i / K
        r = (1 - z * z).clamp_min(0).sqrt()
        phase = math.pi * (1 + math.sqrt(5)) * i
        return torch.stack([r * phase.cos(), r * phase.sin(), z], dim=1)
    g = torch.randn(K, k, generator=torch.Generator().manual_seed(0), dtype=_F64)
    if half:
        g[:, -1] = g[:, -1].abs()
    return g / g.norm(dim=1, keepdim=True)


@dataclass(frozen=True, eq=False)
class RidgeNet:
    """z -> relu(z W^T + b) C + c0 with W (U, k), b (U,), C (U, O), c0 (O,); float64."""

    weight: Tensor
    bias: Tensor
    out: Tensor
    out_bias: Tensor

    @property
    def units(self) -> int:
        return self.weight.shape[0]

    def hidden(self, z_nk: Tensor) -> Tensor:
        """(n, k) -> (n, U) unit values."""
        return torch.relu(z_nk.to(_F64) @ self.weight.T + self.bias)

    def __call__(self, z_nk: Tensor) -> Tensor:
        """(n, k) -> (n, O)."""
        return self.hidden(z_nk) @ self.out + self.out_bias

    def compose(self, A_kD: Tensor, a_k: Tensor) -> RidgeNet:
        """The same net read through the affine map x -> A x + a (x in R^D): units relu(W A x + W a + b)."""
        return RidgeNet(self.weight @ A_kD, self.bias + self.weight @ a_k, self.out, self.out_bias)


def ridge_units(dirs_Kk: Tensor, lo: float, hi: float, J: int) -> tuple[Tensor, Tensor]:
    """Units relu(<u_k, z> - t_j) for every direction and J thresholds t_j = lo + (hi - lo) j / J,
    j = 0..J-1: (W (K * J, k), b (K * J,)), direction-major."""
    J = positive_int("J", J)
    t = lo + (hi - lo) * torch.arange(J, dtype=_F64) / J
    return dirs_Kk.repeat_interleave(J, dim=0), -t.repeat(dirs_Kk.shape[0])


def fit_ridge(z_nk: Tensor, y_nO: Tensor, weight: Tensor, bias: Tensor, *, ridge: float = 1e-10) -> RidgeNet:
    """Least-squares output weights (and output bias) of the units (weight, bias) for data (z, y).

    Solved through the normal equations with a tiny Tikhonov term, ``ridge`` times the mean diagonal
    of the Gram matrix: ridge units on a grid are often linearly dependent (e.g. the lowest threshold
    of opposite directions), and the term picks a small-norm solution among the equivalent ones
    while leaving the fit unchanged to ~sqrt(ridge). Cholesky, float64, deterministic.
    """
    z_nk, y_nO = z_nk.to(_F64), y_nO.to(_F64)
    if y_nO.dim() == 1:
        y_nO = y_nO[:, None]
    H = torch.relu(z_nk @ weight.T + bias)
    design = torch.cat([H, torch.ones(H.shape[0], 1, dtype=_F64)], dim=1)
    gram = design.T @ design
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=_F64)
    coef = torch.cholesky_solve(design.T @ y_nO, torch.linalg.cholesky(gram))
    return RidgeNet(weight, bias, coef[:-1], coef[-1])
