"""Eq. (4) tasks: pieces partition [0, E]^L, the paper's subfunctions, output forms."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moelab.tasks import (
    ParabolaPiece,
    PiecewiseSample,
    QuarticPiece,
    build_piecewise_task,
    make_piecewise_task,
    paper_subfunctions,
)


def test_experiment_two_values_at_hand_picked_points():
    task = build_piecewise_task(E=3, L=2, dtype=torch.float64)
    x = torch.tensor([[0.5, 0.5], [2.5, 1.25], [1.0, 3.0], [0.0, 2.0]], dtype=torch.float64)
    # f_1,i(z) = (-1)^i i (z - i + 1)(z - i), f_2,i(z) = i (i - 1 - z)^2 (z - i)^2, i 1-based
    expected = torch.tensor(
        [
            [-1 * 1 * 0.5 * -0.5, 1 * 0.5**2 * 0.5**2],
            [-1 * 3 * 0.5 * -0.5, 2 * 0.25**2 * 0.75**2],
            [0.0, 0.0],
            [0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(task.components(x), expected)
    assert torch.allclose(task.target(x), expected)
    assert torch.equal(task.pieces(x), torch.tensor([[0, 0], [2, 1], [1, 2], [0, 2]]))
    summed = build_piecewise_task(E=3, L=2, output="sum", dtype=torch.float64)
    assert torch.allclose(summed.target(x), expected.sum(1, keepdim=True))
    product = build_piecewise_task(E=3, L=2, output="product", dtype=torch.float64)
    assert torch.allclose(product.target(x), expected.prod(1, keepdim=True))


def test_paper_subfunctions_alternate_families_beyond_two_levels():
    rows = paper_subfunctions(4, 5)
    assert len(rows) == 5 and all(len(row) == 4 for row in rows)
    assert rows[0][0] == ParabolaPiece(1) and rows[1][3] == QuarticPiece(4)
    assert rows[2][1] == ParabolaPiece(2) and rows[4][0] == ParabolaPiece(1)


@pytest.mark.parametrize("E", [3, 5])
def test_paper_target_is_continuous_at_integer_boundaries_with_a_slope_jump(E):
    task = build_piecewise_task(E=E, L=2, dtype=torch.float64)
    eps = 1e-7
    for j in range(1, E):
        left = torch.tensor([[j - eps, j - eps]], dtype=torch.float64)
        at = torch.tensor([[float(j), float(j)]], dtype=torch.float64)
        right = torch.tensor([[j + eps, j + eps]], dtype=torch.float64)
        values = [task.components(x) for x in (left, at, right)]
        assert torch.allclose(values[0], values[1], atol=1e-5)
        assert torch.allclose(values[2], values[1], atol=1e-5)
        assert torch.all(values[1] == 0)
        # the parabolas' slopes jump at the integer (C^0 only); the quartics' do not
        slope_left = (values[1] - values[0]) / eps
        slope_right = (values[2] - values[1]) / eps
        assert abs(float(slope_right[0, 0] - slope_left[0, 0])) > 0.5
        assert abs(float(slope_right[0, 1] - slope_left[0, 1])) < 1e-4


def test_pieces_at_boundaries_and_outside():
    task = build_piecewise_task(E=3, L=1, dtype=torch.float64)
    x = torch.tensor([[0.0], [0.999], [1.0], [2.5], [3.0], [-0.2], [3.4]], dtype=torch.float64)
    assert task.pieces(x)[:, 0].tolist() == [0, 0, 1, 2, 2, 0, 2]


def test_sample_shapes_determinism_and_coverage():
    s = make_piecewise_task(2000, E=3, L=2, seed=0)
    assert isinstance(s, PiecewiseSample)
    assert s.x.shape == (2000, 2) and s.y.shape == (2000, 2) and s.x.dtype == torch.float32
    assert float(s.x.min()) >= 0 and float(s.x.max()) <= 3
    assert torch.unique(s.piece_id).tolist() == list(range(9))  # all E^L pieces appear
    again = make_piecewise_task(2000, E=3, L=2, seed=0)
    other = make_piecewise_task(2000, E=3, L=2, seed=1)
    assert torch.equal(s.x, again.x) and torch.equal(s.y, again.y)
    assert not torch.equal(s.x, other.x)
    assert torch.equal(s.y, s.y_clean)
    noisy = make_piecewise_task(2000, E=3, L=2, output="sum", noise=0.5, seed=0)
    assert noisy.y.shape == (2000, 1)
    assert float((noisy.y - noisy.y_clean).std()) == pytest.approx(0.5, rel=0.08)


def test_user_subfunctions_are_applied_per_piece():
    def constant(value):
        return lambda z: torch.full_like(z, value)

    subs = [[constant(10 * l + j) for j in range(4)] for l in range(3)]
    s = make_piecewise_task(300, E=4, L=3, subfunctions=subs, seed=2, dtype=torch.float64)
    expected = 10 * torch.arange(3) + s.piece
    assert torch.equal(s.y, expected.double())


@settings(max_examples=25, deadline=None)
@given(
    E=st.integers(1, 5),
    L=st.integers(1, 4),
    output=st.sampled_from(["vector", "sum", "product"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_pieces_partition_the_cube(E, L, output, seed):
    s = make_piecewise_task(64, E=E, L=L, output=output, seed=seed, dtype=torch.float64)
    task = s.task
    # every point in exactly one piece: floor of the coordinate, clipped at the upper boundary
    assert torch.equal(s.piece, torch.floor(s.x).clamp(max=E - 1).long())
    cube_lo, cube_hi = s.piece.double(), s.piece.double() + 1
    assert torch.all((cube_lo <= s.x) & (s.x <= cube_hi))
    # flat id is a bijection with the multi-index (row-major)
    assert torch.all((0 <= s.piece_id) & (s.piece_id < E**L))
    decoded = torch.stack([(s.piece_id // E ** (L - 1 - l)) % E for l in range(L)], dim=1)
    assert torch.equal(decoded, s.piece)
    assert torch.equal(task.piece_id(s.x), s.piece_id)
    assert s.y.shape == (64, L if output == "vector" else 1)
    assert torch.allclose(task.target(s.x), s.y)
    components = task.components(s.x)
    reduce = {"vector": lambda c: c, "sum": lambda c: c.sum(1, keepdim=True)}
    reduce["product"] = lambda c: c.prod(1, keepdim=True)
    assert torch.allclose(reduce[output](components), s.y)


def test_pointwise_pieces_give_the_per_piece_values_bit_for_bit():
    """The built-in pieces are evaluated on every row and picked per row; the same functions
    without the ``pointwise`` mark see only their own piece's rows: the numbers are equal."""
    from moelab.tasks.piecewise import evaluate_components

    subs = paper_subfunctions(4, 3)
    assert all(f.pointwise for row in subs for f in row)
    plain = tuple(tuple((lambda z, f=f: f(z)) for f in row) for row in subs)
    x = 4 * torch.rand(3000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    piece, inputs = torch.floor(x).clamp(0, 3).long(), x.T
    fast = evaluate_components(subs, piece, inputs)
    assert torch.equal(fast, evaluate_components(plain, piece, inputs))
    assert fast.abs().sum() > 0
