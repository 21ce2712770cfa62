"""Seeded samples are a contract: the paper's experiments draw through these generators.

Each test redraws a sample from a seeded generator by hand, with the random calls in the documented
order (isometry, target, points, noise) and the documented dtypes, and asserts the generators give
exactly the same tensors. A change that adds, drops or reorders a random draw, or computes in
another dtype, changes every registered experiment's numbers and fails here.
"""

import math

import pytest
import torch

from moelab.tasks import (
    build_manifold_task,
    build_piecewise_task,
    build_product_task,
    make_manifold_task,
    make_piecewise_task,
    make_product_task,
)

F64 = torch.float64


def _equal(got, expected):
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("D", "noise"), [(16, 0.0), (128, 0.1)])
def test_circle_pad_sample_is_the_documented_draw(D, noise):
    s = make_manifold_task("circle", 64, D=D, noise=noise, seed=3)
    rng = torch.Generator().manual_seed(3)
    theta = 2 * math.pi * torch.rand(64, 1, generator=rng, dtype=F64)
    p = torch.cat([theta.cos(), theta.sin()], dim=1)
    x = (p @ torch.eye(D, 2, dtype=F64).T).to(torch.float32)
    y = (torch.sin(5 * p[:, 0]) + torch.cos(3 * p[:, 1]))[:, None]
    if noise:
        y = y + noise * torch.randn(64, 1, generator=rng, dtype=F64)
    _equal(s.x, x)
    _equal(s.y, y.float())
    _equal(s.latent, theta.float())
    # 4 charts centred at angles 0, pi/2, pi, 3 pi/2: the chart is the nearest centre
    _equal(s.chart, torch.remainder(torch.round(theta[:, 0] / (math.pi / 2)), 4).long())


def test_circle_test_set_continues_from_its_own_seed():
    task = build_manifold_task("circle", D=16, seed=3)
    s = task.sample(32, seed=9)
    theta = 2 * math.pi * torch.rand(32, 1, generator=torch.Generator().manual_seed(9), dtype=F64)
    _equal(s.latent, theta.float())


@pytest.mark.parametrize("output", ["vector", "sum", "product"])
def test_piecewise_sample_is_the_documented_draw(output):
    noise = 0.05 if output == "sum" else 0.0
    s = make_piecewise_task(64, E=3, L=2, output=output, noise=noise, seed=5)
    rng = torch.Generator().manual_seed(5)
    x = (3 * torch.rand(64, 2, generator=rng, dtype=F64)).float()
    # f_{l,i}(x_l) in float64 on the float32 points, rounded to float32, then combined
    comp = build_piecewise_task(E=3, L=2, dtype=F64).components(x.double()).float().double()
    combined = {"vector": comp, "sum": comp.sum(1, keepdim=True), "product": comp.prod(1, keepdim=True)}
    y = combined[output].float().double()  # y_clean, rounded to float32 before noise is added
    if noise:
        y = y + noise * torch.randn(y.shape, generator=rng, dtype=F64)
    piece = torch.floor(x.double()).clamp(0, 2).long()
    _equal(s.x, x)
    _equal(s.y, y.float())
    _equal(s.piece, piece)
    _equal(s.piece_id, piece[:, 0] * 3 + piece[:, 1])


def test_product_sample_is_the_documented_draw():
    s = make_product_task(64, E=3, D=4, noise=0.1, seed=8)
    rng = torch.Generator().manual_seed(8)
    thetas = [2 * math.pi * torch.rand(64, 1, generator=rng, dtype=F64) for _ in range(2)]
    blocks = [torch.cat([t.cos(), t.sin()], 1) @ torch.eye(4, 2, dtype=F64).T for t in thetas]
    x = torch.cat(blocks, 1).float()
    # chart i of each circle is centred at angle 2 pi i / 3; subfunction i of block l is
    # sin(5 p_1 + 2 pi i / 3) + cos(3 p_2 + 2 pi l / 2), read on the float32 points
    charts = [torch.remainder(torch.round(t[:, 0] / (2 * math.pi / 3)), 3).long() for t in thetas]
    p = [x[:, 4 * l : 4 * l + 2].double() for l in range(2)]
    y_clean = torch.stack(
        [
            torch.sin(5 * p[l][:, 0] + 2 * math.pi * charts[l] / 3)
            + torch.cos(3 * p[l][:, 1] + 2 * math.pi * l / 2)
            for l in range(2)
        ],
        dim=1,
    ).float()
    y = y_clean.double() + 0.1 * torch.randn(64, 2, generator=rng, dtype=F64)
    _equal(s.x, x)
    _equal(s.latent, torch.cat(thetas, 1).float())
    _equal(s.piece_id, charts[0] * 3 + charts[1])
    assert torch.allclose(s.y_clean, y_clean, atol=1e-6)
    assert torch.allclose(s.y, y.float(), atol=1e-6)


@pytest.mark.parametrize(
    ("make", "build", "args", "kwargs"),
    [
        (make_manifold_task, build_manifold_task, ("sphere",),
         dict(D=5, embedding="isometry", target="ridge", noise=0.1)),
        (make_product_task, build_product_task, (),
         dict(E=4, D=3, subfunctions="ridge", embedding="isometry", noise=0.1)),
    ],
    ids=["manifold", "product"],
)
def test_make_draws_the_task_then_continues_from_the_same_state(make, build, args, kwargs):
    """make_*(n, seed=s): the task's own draws (isometries, ridge targets), then the samples and the
    noise, all from one generator seeded with s."""
    s = make(*args, 40, seed=6, **kwargs)
    rng = torch.Generator().manual_seed(6)
    expected = build(*args, generator=rng, **kwargs).sample(40, generator=rng)
    for name in ("x", "y", "y_clean", "latent", "region"):
        _equal(getattr(s, name), getattr(expected, name))
    _equal(s.task.target(s.x), expected.task.target(expected.x))
