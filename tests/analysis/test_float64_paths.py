"""Python floats reach the float64 tracing of count_pieces without a float32 detour."""

import numpy as np
import pytest
import torch
from torch import nn

from moelab.analysis import count_pieces


def _ramp(bias: float) -> nn.Sequential:
    """relu(x + bias) in float64: one kink at x = -bias."""
    lin = nn.Linear(1, 1).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(bias)
    return nn.Sequential(lin, nn.ReLU())


@pytest.mark.parametrize("wrap", [list, tuple, np.array], ids=["list", "tuple", "numpy"])
def test_python_float_endpoints_keep_float64_precision(wrap):
    # 1/3 - 1e-9 lies below the kink at 1/3; rounded to float32 it lies above it
    a, b = wrap([1 / 3 - 1e-9]), wrap([1.0])
    result = count_pieces(_ramp(-1 / 3), a, b)
    assert result.num_pieces == 2
    expected_t = 1e-9 / (1 - (1 / 3 - 1e-9))
    assert result.breakpoints.item() == pytest.approx(expected_t, rel=1e-6)


def test_leaky_relu_slope_is_applied_in_float64():
    lin = nn.Linear(1, 1).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    result = count_pieces(nn.Sequential(lin, nn.LeakyReLU(0.1)), [-1.0], [1.0])
    assert result.num_pieces == 2
    # x(t) = -1 + 2t, so the left piece is 0.1 * (-1 + 2t): slope 2 * 0.1 exactly, not 2 * fl32(0.1)
    assert result.pieces[0].slope.item() == 2 * 0.1
    assert result.pieces[0].offset.item() == -0.1


@pytest.mark.parametrize("bad", [[True], ["1.0"], [1 + 2j]])
def test_endpoints_that_are_not_real_vectors_are_rejected(bad):
    with pytest.raises(TypeError, match="a must be a real vector"):
        count_pieces(_ramp(0.0), bad, [1.0])
