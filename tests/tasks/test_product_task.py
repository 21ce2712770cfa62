"""Eq. (5) tasks on products of manifolds: per-block charts as ground truth."""

import math

import pytest
import torch

from moelab.tasks import ProductSample, Sinusoid, build_product_task, make_product_task


def test_blocks_lie_on_their_manifolds_and_pieces_are_their_charts():
    s = make_product_task(300, E=6, D=[5, 4, 7], manifolds=["circle", "sphere", "swiss_roll"], seed=0)
    task = s.task
    assert isinstance(s, ProductSample)
    assert task.L == 3 and task.E == 6 and task.block_dims == (5, 4, 7)
    assert s.x.shape == (300, 16) and s.y.shape == (300, 3) and s.piece.shape == (300, 3)
    assert s.latent.shape == (300, 1 + 2 + 2)
    blocks = task.split(s.x)
    for l, atlas in enumerate(task.atlases):
        assert atlas.n_charts == 6
        p = blocks[l] @ atlas.embedding
        assert float(atlas.manifold.distance(p).max()) < 1e-6
        assert torch.equal(s.piece[:, l], atlas.chart_of(blocks[l]))
    assert torch.equal(s.piece_id, (s.piece * torch.tensor([36, 6, 1])).sum(1))


def test_sinusoid_subfunctions_follow_the_chart_of_each_block():
    s = make_product_task(200, E=4, D=3, L=2, seed=1, dtype=torch.float64)
    for l in range(2):
        x_l = s.task.split(s.x)[l]
        for n in range(0, 200, 37):
            i = int(s.piece[n, l])
            expected = math.sin(5 * x_l[n, 0] + 2 * math.pi * i / 4) + math.cos(
                3 * x_l[n, 1] + 2 * math.pi * l / 2
            )
            assert float(s.y[n, l]) == pytest.approx(expected, abs=1e-12)
    assert Sinusoid(0.0, 0.0)(torch.zeros(1, 2)).item() == 1.0


def test_user_subfunctions_outputs_and_determinism():
    subs = [[(lambda x, v=10 * l + i: torch.full_like(x[:, 0], v)) for i in range(3)] for l in range(2)]
    s = make_product_task(100, E=3, D=2, subfunctions=subs, output="sum", seed=3)
    assert s.y.shape == (100, 1)
    assert torch.allclose(s.y[:, 0], (10 * torch.arange(2) + s.piece).sum(1).float())
    a = make_product_task(50, E=3, D=4, embedding="isometry", subfunctions="ridge", seed=4)
    b = make_product_task(50, E=3, D=4, embedding="isometry", subfunctions="ridge", seed=4)
    c = make_product_task(50, E=3, D=4, embedding="isometry", subfunctions="ridge", seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    test = a.task.sample(50, seed=9)
    assert torch.allclose(a.task.target(test.x), test.y_clean)


def test_all_piece_combinations_occur():
    task = build_product_task(E=3, D=2, L=2, seed=0)
    s = task.sample(2000, seed=0)
    assert torch.unique(s.piece_id).tolist() == list(range(9))
