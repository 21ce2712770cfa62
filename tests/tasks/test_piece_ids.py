"""Flat piece ids are exact int64 or refused, never wrapped around."""

import pytest
import torch

from moelab.tasks import (
    build_piecewise_task,
    build_product_task,
    make_piecewise_task,
)


def test_piece_ids_beyond_int64_are_refused_not_wrapped():
    s = make_piecewise_task(20, E=100, L=20, seed=0)  # 1e40 pieces: sampling itself is fine
    assert s.piece.shape == (20, 20) and int(s.piece.min()) >= 0
    with pytest.raises(ValueError, match=r"E=100 .* L=20 .* 1e\+40 pieces.*2\^63"):
        s.piece_id  # noqa: B018
    with pytest.raises(ValueError, match="E=100"):
        s.task.piece_id(s.x)
    with pytest.raises(ValueError, match="E=100"):
        s.task.region(s.x)
    assert s.task.n_regions == 100**20  # a Python int: exact


def test_piece_ids_up_to_int64_are_exact():
    corner = torch.full((1, 63), 1.5, dtype=torch.float64)
    assert build_piecewise_task(E=2, L=63).piece_id(corner).item() == 2**63 - 1
    with pytest.raises(ValueError, match="E=2 .* L=64"):
        build_piecewise_task(E=2, L=64).piece_id(torch.full((1, 64), 1.5))


def test_product_piece_ids_beyond_int64_are_refused():
    task = build_product_task(E=3, D=2, L=40, seed=0)  # 3^40 = 1.2e19 > 2^63
    s = task.sample(5, seed=1)
    with pytest.raises(ValueError, match="E=3 .* L=40"):
        s.piece_id  # noqa: B018
