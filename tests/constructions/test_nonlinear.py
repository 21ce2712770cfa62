"""Suggestion 1: MLP routers compute the routing features themselves, halving the depth with the same
routing and outputs as the linear-router constructions."""

import pytest
import torch

from moelab.analysis import count_parameters, expert_paths
from moelab.constructions import build_nonlinear_manifold_moe, build_nonlinear_piecewise_moe
from moelab.layers import MLP, DeepMoE, MoELayer
from moelab.tasks import build_manifold_task, build_piecewise_task

F64 = torch.float64


@pytest.mark.parametrize(("name", "D", "m"), [("circle", 16, 16), ("spiral", 2, 32)])
def test_manifold_depth_1(name, D, m):
    task = build_manifold_task(name, D=D, dtype=F64)
    model, summary = build_nonlinear_manifold_moe(task, m, n_eval=2000)
    assert isinstance(model, MoELayer) and isinstance(model.router.scorer, MLP)
    assert model.config.router.scorer == "mlp" and model.config.router.weighting == "paper"
    x = task.sample(3000, seed=31).x
    chosen = expert_paths(model, x).paths[:, 0]
    assert bool(task.atlas.in_domain(x)[torch.arange(len(x)), chosen].all())
    assert summary.misrouted == 0 and summary.depth == 1
    assert summary.tau_error < summary.tau_threshold
    assert summary.extra["linear-router depth"] == 2
    assert summary.extra["max |y - y_linear|"] < 1e-10
    assert summary.sup_error == pytest.approx(summary.extra["linear-router sup error"], rel=1e-9)
    params = count_parameters(model)
    assert params.total < summary.extra["linear-router params total"]
    assert params.active < summary.extra["linear-router params active"]


@pytest.mark.parametrize(("E", "L"), [(3, 2), (5, 3)])
def test_piecewise_depth_L(E, L):
    task = build_piecewise_task(E=E, L=L, dtype=F64)
    model, summary = build_nonlinear_piecewise_moe(task, m=8, per_piece=100, n_random=500)
    assert isinstance(model, DeepMoE) and len(model.layers) == L
    assert all(isinstance(layer.router.scorer, MLP) for layer in model.layers)
    centres = torch.cartesian_prod(*[torch.arange(E, dtype=F64) + 0.5] * L).reshape(-1, L)
    x = torch.cat([centres, task.sample(1000, seed=32).x])
    assert torch.equal(expert_paths(model, x).paths, task.pieces(x))
    assert summary.paths_seen == E**L and summary.misrouted == 0
    assert summary.extra["linear-router depth"] == 2 * L
    assert summary.extra["max |y - y_linear|"] < 1e-12
    assert summary.sup_error <= summary.bound * (1 + 1e-6)
