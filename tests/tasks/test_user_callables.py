"""User subfunctions and targets must return one value per point, or get a clear error."""

import numpy as np
import pytest
import torch

from moelab.tasks import (
    build_manifold_task,
    build_piecewise_task,
    build_product_task,
)


def _const(z):
    return torch.tensor(1.0, dtype=torch.float64)


def _column(z):
    return z[:, None]


def _numpy(z):
    return np.ones(z.shape[0])


@pytest.mark.parametrize(("bad", "error"), [(_const, ValueError), (_column, ValueError),
                                            (_numpy, TypeError)])
def test_piecewise_subfunctions_must_return_one_value_per_point(bad, error):
    rows = [[torch.sin, bad], [torch.cos, torch.cos]]
    task = build_piecewise_task(E=2, L=2, subfunctions=rows)
    with pytest.raises(error, match=r"subfunctions\[0\]\[1\]=.*_(const|column|numpy)"):
        task.sample(50, seed=0)
    if error is ValueError:
        with pytest.raises(ValueError, match=r"shape \(\d+,\) for \d+ points, got shape"):
            task.target(torch.rand(50, 2) * 2)


def test_manifold_target_must_return_one_value_per_point():
    def column(p):
        return p[:, :1]

    task = build_manifold_task("circle", D=3, target=column, seed=0)
    expected = r"target=.*column.* shape \(10,\) for 10 points, got shape \(10, 1\)"
    with pytest.raises(ValueError, match=expected):
        task.sample(10, seed=0)
    with pytest.raises(ValueError, match="target="):
        task.target(task.embed(torch.tensor([[1.0, 0.0]], dtype=torch.float64)))


def test_product_subfunctions_must_return_one_value_per_point():
    rows = [[lambda x: x.sum(1)] * 3, [lambda x: x[:1, 0]] * 3]
    task = build_product_task(E=3, D=2, subfunctions=rows, seed=0)
    with pytest.raises(ValueError, match=r"subfunctions\[1\]\[\d\]=.* got shape \(1,\)"):
        task.sample(30, seed=0)
