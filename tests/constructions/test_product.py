"""Thm 5.2: the depth-2L construction for Eq. (5) targets on products of circles routes every block to
its ground-truth chart, uses all E^L paths, and stays within the experts' bound."""

import pytest
import torch

from moelab.analysis import expert_paths
from moelab.constructions import build_product_moe
from moelab.layers import DeepMoE
from moelab.tasks import build_product_task

F64 = torch.float64


@pytest.mark.parametrize(("E", "L", "D", "embedding"), [(4, 2, 2, "pad"), (4, 2, [3, 8], "isometry"),
                                                       (3, 3, 2, "pad")])
def test_paths_charts_and_error(E, L, D, embedding):
    task = build_product_task(E=E, L=L, D=D, manifolds="circle", embedding=embedding, seed=3, dtype=F64)
    model, summary = build_product_moe(task, 24, n_eval=2000)
    assert isinstance(model, DeepMoE) and len(model.layers) == 2 * L
    x = task.sample(4000, seed=21).x
    paths = expert_paths(model, x).paths[:, 1::2]
    assert torch.equal(paths, task.pieces(x))  # each block's chart, exactly (profile tau)
    assert torch.unique(paths, dim=0).shape[0] == E**L
    assert summary.paths_seen == summary.paths_possible == E**L and summary.misrouted == 0
    assert summary.tau_error < summary.tau_threshold
    err = (model(x) - task.components(x)).abs()
    assert float(err.max()) <= summary.bound


def test_error_falls_like_m_to_the_minus_2():
    task = build_product_task(E=4, L=2, D=2, dtype=F64)
    errors = [build_product_moe(task, m, n_eval=2000)[1].sup_error for m in (8, 16, 32, 64)]
    ratios = [a / b for a, b in zip(errors, errors[1:], strict=False)]
    assert all(3.6 < r < 4.4 for r in ratios)  # halving the mesh quarters the error


def test_only_the_vector_output_is_built():
    with pytest.raises(ValueError, match="output="):
        build_product_moe(build_product_task(E=4, D=2, output="sum"), 8)
