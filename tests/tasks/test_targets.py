"""Targets: the paper's, and the ridge family whose smoothness is exactly kappa."""

import math

import pytest
import torch

from moelab.tasks import Circle, PaperTarget, RidgeTarget, Torus, make_ridge_target


def test_paper_target_formula():
    p = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.3, -0.7]], dtype=torch.float64)
    expected = torch.tensor([1.0, math.sin(5.0) + 1.0, math.sin(1.5) + math.cos(-2.1)])
    assert torch.allclose(PaperTarget()(p), expected.double())


def _forward_difference(g, x0: float, h: float, order: int) -> float:
    """order-th forward difference quotient of g at x0 with step h."""
    total = sum((-1) ** (order - j) * math.comb(order, j) * g(x0 + j * h) for j in range(order + 1))
    return total / h**order


@pytest.mark.parametrize("kappa", [0, 1, 2])
def test_ridge_profile_is_c_kappa_but_not_c_kappa_plus_one_on_the_circle(kappa):
    # one ridge whose kink crosses the circle at theta0; g(theta) = f(cos theta, sin theta)
    theta0 = 1.0
    f = RidgeTarget(
        directions=torch.tensor([[1.0, 0.0]], dtype=torch.float64),
        offsets=torch.tensor([math.cos(theta0)], dtype=torch.float64),
        weights=torch.ones(1, dtype=torch.float64),
        bias=0.0,
        scale=2.0,
        smoothness=kappa,
    )

    def g(theta: float) -> float:
        t = torch.tensor([theta], dtype=torch.float64)
        return float(f(torch.stack([t.cos(), t.sin()], dim=1)))

    # at the kink the (kappa+1)-th difference quotient grows like h^(-1/2): x2 when h -> h/4
    coarse, fine = (abs(_forward_difference(g, theta0, h, kappa + 1)) for h in (4e-3, 1e-3))
    assert fine / coarse == pytest.approx(2.0, rel=0.1)
    # away from it, it converges
    coarse, fine = (abs(_forward_difference(g, theta0 + 0.5, h, kappa + 1)) for h in (4e-3, 1e-3))
    assert fine / coarse == pytest.approx(1.0, rel=0.05)
    # the kappa-th quotient converges at the kink (Hoelder-1/2 kappa-th derivative)
    coarse, fine = (_forward_difference(g, theta0, h, kappa) for h in (4e-3, 1e-3))
    assert abs(fine - coarse) < 0.05


@pytest.mark.parametrize("manifold", [Circle(), Torus(3)], ids=["circle", "torus3"])
def test_ridge_target_kinks_cross_the_manifold_and_it_is_normalised(manifold):
    g = torch.Generator().manual_seed(0)
    f = make_ridge_target(manifold, smoothness=2, n_ridges=6, generator=g)
    assert f.smoothness == 2 and f.directions.shape == (6, manifold.ambient_dim)
    assert torch.allclose(f.directions.norm(dim=1), torch.ones(6, dtype=torch.float64))
    p = manifold.to_ambient(manifold.sample_latent(20000, torch.Generator().manual_seed(1)))
    z = (p @ f.directions.T - f.offsets) / f.scale
    assert float(z.abs().max()) <= 1
    assert torch.all((z > 0).any(dim=0) & (z < 0).any(dim=0))  # each kink meets M
    values = f(p)
    assert abs(float(values.mean())) < 0.05 and float(values.std()) == pytest.approx(1, abs=0.05)


def test_ridge_target_is_deterministic_given_the_generator():
    a = make_ridge_target(Circle(), smoothness=1, generator=torch.Generator().manual_seed(7))
    b = make_ridge_target(Circle(), smoothness=1, generator=torch.Generator().manual_seed(7))
    c = make_ridge_target(Circle(), smoothness=1, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.directions, b.directions) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.directions, c.directions)
