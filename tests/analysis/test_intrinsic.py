"""Intrinsic dimension estimators on manifolds of known dimension."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moelab.analysis import intrinsic_dimension
from moelab.analysis.intrinsic import knn_distances

N = 2000


def embed(z: torch.Tensor, D: int, g: torch.Generator) -> torch.Tensor:
    """z (n, k) placed in R^D by a random rotation."""
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    return torch.cat([z, z.new_zeros(z.shape[0], D - z.shape[1])], 1) @ Q.T


def circle(g):
    theta = torch.rand(N, generator=g, dtype=torch.float64) * 2 * math.pi
    return embed(torch.stack([theta.cos(), theta.sin()], 1), 10, g)


def sphere(g):
    s = torch.randn(N, 3, generator=g, dtype=torch.float64)
    return embed(s / s.norm(dim=1, keepdim=True), 20, g)


def torus(g):
    u, v = torch.rand(2, N, generator=g, dtype=torch.float64) * 2 * math.pi
    return embed(torch.stack([u.cos(), u.sin(), v.cos(), v.sin()], 1), 20, g)


@pytest.mark.parametrize("method", ["mle", "mle_mg", "twonn"])
@pytest.mark.parametrize("make, d", [(circle, 1), (sphere, 2), (torus, 2)])
def test_estimates_the_dimension_of_known_manifolds(make, d, method):
    x = make(torch.Generator().manual_seed(d))
    assert intrinsic_dimension(x, method) == pytest.approx(d, abs=0.3)
    assert intrinsic_dimension(x.float(), method) == pytest.approx(d, abs=0.3)


def test_mle_mg_removes_the_small_k_bias_of_averaged_mle():
    x = torch.rand(N, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mle, mg = intrinsic_dimension(x, "mle", k=5), intrinsic_dimension(x, "mle_mg", k=5)
    assert mle > mg  # averaging m_i overestimates by about (k-1)/(k-2)
    assert mle / mg == pytest.approx(4 / 3, rel=0.1)


def test_knn_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 7, generator=g, dtype=torch.float64) + 100.0
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    torch.testing.assert_close(knn_distances(x - x.mean(0), 5), d.topk(5, largest=False).values)


def test_duplicates_are_dropped_and_bad_input_raises():
    x = circle(torch.Generator().manual_seed(1))
    doubled = torch.cat([x, x[:500]])
    for method in ("mle", "mle_mg", "twonn"):
        assert intrinsic_dimension(doubled, method) == pytest.approx(intrinsic_dimension(x, method))
    with pytest.raises(ValueError, match="method='pca'"):
        intrinsic_dimension(x, "pca")
    with pytest.raises(ValueError, match="k must be an int >= 2"):
        intrinsic_dimension(x, k=1)
    with pytest.raises(ValueError, match="at least 21 distinct points"):
        intrinsic_dimension(torch.cat([x[:5]] * 10), k=20)
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        intrinsic_dimension(x[:, 0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        intrinsic_dimension(x.tolist())


def two_far_circles(offset: float, g: torch.Generator, n: int = 1000) -> torch.Tensor:
    """Two unit circles centred at (+-offset, 0)."""
    theta = torch.rand(2 * n, generator=g, dtype=torch.float64) * 2 * math.pi
    x = torch.stack([theta.cos(), theta.sin()], 1)
    x[:n, 0] += offset
    x[n:, 0] -= offset
    return x


@pytest.mark.parametrize("method", ["mle", "mle_mg", "twonn"])
def test_clusters_far_from_the_centroid_get_their_true_neighbours(method):
    far = two_far_circles(1000.0, torch.Generator().manual_seed(0))
    near = far.clone()
    near[:1000, 0] -= 990.0  # the same two circles, 20 apart instead of 2000
    near[1000:, 0] += 990.0
    assert intrinsic_dimension(far, method) == pytest.approx(intrinsic_dimension(near, method), rel=1e-6)
    assert intrinsic_dimension(far, method) == pytest.approx(1.0, abs=0.1)


def test_knn_distances_are_exact_far_from_the_origin():
    x = two_far_circles(1000.0, torch.Generator().manual_seed(1), n=300)
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    torch.testing.assert_close(knn_distances(x, 6), d.topk(6, largest=False).values, rtol=1e-12, atol=0)


@pytest.mark.parametrize("scale", [1e-200, 1e30, 3e38, 1e300])
def test_estimates_do_not_change_when_the_points_are_scaled(scale):
    x = circle(torch.Generator().manual_seed(2))
    for method in ("mle", "twonn"):
        expected = intrinsic_dimension(x, method)
        assert intrinsic_dimension(x * scale, method) == pytest.approx(expected, rel=1e-9)


def test_numpy_arrays_are_accepted():
    x = circle(torch.Generator().manual_seed(3))
    assert intrinsic_dimension(x.numpy(), "mle_mg") == intrinsic_dimension(x, "mle_mg")
    assert intrinsic_dimension(x.float().numpy(), "twonn") == intrinsic_dimension(x.float(), "twonn")
    with pytest.raises(ValueError, match="floating"):
        intrinsic_dimension(np.zeros((50, 3), dtype=np.int64))


def test_twonn_discard_fraction_is_used_and_k_is_refused():
    x = sphere(torch.Generator().manual_seed(4))
    default = intrinsic_dimension(x, "twonn")
    assert intrinsic_dimension(x, "twonn", discard=0.1) == default
    assert intrinsic_dimension(x, "twonn", discard=0.3) != default
    assert intrinsic_dimension(x, "twonn", discard=0.0) == pytest.approx(2, abs=0.3)
    with pytest.raises(ValueError, match="k=5 applies to the MLE methods"):
        intrinsic_dimension(x, "twonn", k=5)
    with pytest.raises(ValueError, match="discard=0.2 applies to method='twonn' only"):
        intrinsic_dimension(x, "mle", discard=0.2)
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="discard must be a fraction in"):
            intrinsic_dimension(x, "twonn", discard=bad)
