"""Thm 5.3: the depth-2L construction for Eq. (4) targets routes every point along its piece's path
and has exactly the 1-D interpolation error of the subfunctions."""

import numpy as np
import pytest
import torch

from moelab.analysis import count_pieces, expert_paths, fit_rate
from moelab.constructions import build_piecewise_moe
from moelab.constructions.interpolation import cell_grid
from moelab.constructions.piecewise import summarize_pieces
from moelab.constructions.summary import route
from moelab.layers import DeepMoE, MoELayer
from moelab.tasks import build_piecewise_task

F64 = torch.float64
COMBOS = [(E, L) for E in (2, 3, 4, 5) for L in (1, 2, 3, 4)]


def grid_design(E, L, per_piece, seed=0):
    """Coordinate l runs through every point of the 1-D cell grid, in its own random order."""
    grid = cell_grid(0.0, float(E), E * per_piece)
    g = torch.Generator().manual_seed(seed)
    return grid, torch.stack([grid[torch.randperm(len(grid), generator=g)] for _ in range(L)], 1)


def interp_errors_1d(task, m, grid):
    """{(l, i): max |numpy interpolant - f_{l,i}| over the grid points of piece i}, independently."""
    out = {}
    for l, row in enumerate(task.subfunctions):
        for i, f in enumerate(row):
            knots = np.linspace(i, i + 1, m + 1)
            values = f(torch.tensor(knots, dtype=F64)).numpy()
            z = grid[(grid > i) & (grid < i + 1)]
            out[l, i] = float(np.abs(np.interp(z.numpy(), knots, values) - f(z).numpy()).max())
    return out


@pytest.mark.parametrize(("E", "L"), COMBOS)
def test_paths_and_sup_error(E, L):
    task = build_piecewise_task(E=E, L=L, dtype=F64)
    m = 12
    model, summary = build_piecewise_moe(task, m=m, per_piece=50, n_random=300)
    assert isinstance(model, DeepMoE) and all(isinstance(x, MoELayer) for x in model.layers)
    assert len(model.layers) == 2 * L and model.widths == [L, L + E] * L + [L]

    # every point strictly inside a piece takes that piece's path, and all E^L paths occur
    centres = torch.cartesian_prod(*[torch.arange(E, dtype=F64) + 0.5] * L).reshape(-1, L)
    rng = torch.Generator().manual_seed(E * L)
    x = torch.cat([centres, E * torch.rand(500, L, generator=rng, dtype=F64)])
    paths = expert_paths(model, x)
    assert torch.equal(paths.paths[:, 1::2], task.pieces(x))
    assert torch.unique(paths.paths[:, 1::2], dim=0).shape[0] == E**L
    assert summary.paths_seen == summary.paths_possible == E**L
    assert summary.misrouted == 0

    # per output and piece, the model's sup error is that piece's 1-D interpolation error
    grid, xd = grid_design(E, L, 300)
    err = (model(xd) - task.components(xd)).abs()
    ref = interp_errors_1d(task, m, grid)
    for (l, i), e in ref.items():
        inside = (xd[:, l] > i) & (xd[:, l] < i + 1)
        assert float(err[inside, l].max()) == pytest.approx(e, rel=1e-5)
    assert float(err.max()) == pytest.approx(max(ref.values()), rel=1e-5)
    assert summary.sup_error <= summary.bound * (1 + 1e-6)


def smooth_subfunctions(E, L):
    """C^infinity pieces that vanish at the integers (not the paper's family)."""
    return [[(lambda z, l=l, j=j: torch.sin(2 * z + l) * (z - j) * (z - j - 1)) for j in range(E)]
            for l in range(L)]


@pytest.mark.parametrize(("E", "L", "subfunctions"), [(3, 2, "paper"), (4, 3, "smooth")])
def test_sup_error_falls_like_m_to_the_minus_2(E, L, subfunctions):
    subs = "paper" if subfunctions == "paper" else smooth_subfunctions(E, L)
    widths = [4, 8, 16, 32, 64]
    errors = []
    for m in widths:
        _, summary = build_piecewise_moe(E, L, subs, m=m, per_piece=400, n_random=200)
        assert summary.sup_error <= summary.bound * (1 + 1e-6)
        errors.append(summary.sup_error)
    assert abs(fit_rate(widths, errors).slope + 2) <= 0.15


def test_integer_boundaries_give_the_target_whichever_expert_wins_the_tie():
    task = build_piecewise_task(E=4, L=2, dtype=F64)
    model, _ = build_piecewise_moe(task, m=8)
    ints = torch.arange(5, dtype=F64)
    x = torch.cat([torch.cartesian_prod(ints, ints), torch.stack([ints, ints.flip(0) * 0 + 1.5], 1)])
    assert float((model(x) - task.components(x)).abs().max()) < 1e-12


def test_one_coordinate_has_E_times_m_exact_linear_pieces():
    E, m = 4, 6
    model, _ = build_piecewise_moe(E, 1, m=m)
    count = count_pieces(model, [0.0], [float(E)])
    assert count.num_routing_intervals == E
    assert count.num_pieces == E * m


def test_feature_layers_may_hold_E_equal_experts():
    task = build_piecewise_task(E=3, L=2, dtype=F64)
    one, _ = build_piecewise_moe(task, m=8)
    paper, summary = build_piecewise_moe(task, m=8, feature_experts=3)
    assert summary.experts == (3, 3, 3, 3)
    x = task.sample(500, seed=1).x
    assert torch.equal(one(x), paper(x))


def test_a_float32_model_routes_the_same_and_errs_by_rounding_only():
    task = build_piecewise_task(E=3, L=2, dtype=F64)
    model64, s64 = build_piecewise_moe(task, m=16)
    model32, s32 = build_piecewise_moe(task, m=16, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model32.parameters())
    assert s32.misrouted == 0 and s32.paths_seen == 9
    assert s32.sup_error == pytest.approx(s64.sup_error, abs=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="output="):
        build_piecewise_moe(build_piecewise_task(E=3, L=2, output="sum"), m=4)
    with pytest.raises(ValueError, match="L is required"):
        build_piecewise_moe(3, m=4)
    with pytest.raises(ValueError, match="not both"):
        build_piecewise_moe(build_piecewise_task(E=3, L=2), 2, m=4)
    with pytest.raises(ValueError, match="m must be >= 1"):
        build_piecewise_moe(3, 2, m=0)


def test_summary_counts_points_with_some_piece_missed():
    """The misroute fraction the Eq. (4) constructions report (shared by the MLP-router one): a point
    counts once one of its routing layers misses its piece."""
    task = build_piecewise_task(E=3, L=2, dtype=F64)
    model, _ = build_piecewise_moe(task, m=4, per_piece=10, n_random=50)
    x = torch.tensor([[0.5, 0.5], [1.5, 2.5], [2.5, 1.5], [0.5, 2.5]], dtype=F64)
    y, ids = route(model, x)
    layers = [1, 3]
    assert summarize_pieces(model, task, 4, x, y, ids, layers=layers, theorem="t",
                            routing_note="n").misrouted == 0
    wrong = ids.clone()
    wrong[:2, 3] = (wrong[:2, 3] + 1) % 3  # second coordinate missed on two of four points
    summary = summarize_pieces(model, task, 4, x, y, wrong, layers=layers, theorem="t", routing_note="n")
    assert summary.misrouted == 0.5 and summary.paths_seen == 4 and summary.paths_possible == 9
