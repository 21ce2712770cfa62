"""Inputs whose arithmetic overflows the dtype, and a latent width above the input width: each is a
clear error instead of a silently NaN output or a "low-dimensional" expert that is not."""

from __future__ import annotations

import pytest
import torch

from moelab.layers import DeepMoE, DenseMLP, ExpertConfig, MoEConfig, MoELayer


@pytest.mark.parametrize("build", [
    lambda: MoELayer(4, 2, MoEConfig(num_experts=3)),
    lambda: DeepMoE([4, 4, 2], MoEConfig(num_experts=3)),
    lambda: DenseMLP(4, 2, hidden=8),
], ids=["layer", "deep", "dense"])
def test_an_output_that_overflows_the_dtype_is_an_error(build):
    model = build()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1.0)
    x = torch.full((5, 4), 3e38)  # finite float32, but x @ W overflows
    overflow = r"not finite although the input is: the arithmetic overflowed float32 \(largest \|x\| = 3e\+38"
    with pytest.raises(FloatingPointError, match=overflow):
        model(x)
    model(torch.randn(5, 4))  # ordinary inputs pass


def test_the_overflow_check_follows_check_finite():
    torch.manual_seed(0)
    layer = MoELayer(4, 2, MoEConfig(num_experts=3, check_finite=False))
    assert not torch.isfinite(layer(torch.full((5, 4), 3e38))).all()  # documented: unchecked


def test_a_latent_width_above_the_input_width_is_refused():
    with pytest.raises(ValueError, match=r"experts.latent_dim=8 must be <= d_in=4"):
        MoELayer(4, 2, MoEConfig(num_experts=3, experts=ExpertConfig(latent_dim=8)))
    MoELayer(4, 2, MoEConfig(num_experts=3, experts=ExpertConfig(latent_dim=4)))


def test_the_finite_check_is_exact_when_the_sum_of_finite_values_overflows():
    # The check first reads one sum; finite values whose sum overflows must still pass, and a
    # non-finite value among them must still be found.
    from moelab._validation import check_finite_values

    big = torch.full((4, 3), 3e38)  # every value finite, the sum is inf
    check_finite_values(big, -big)
    check_finite_values(big.double(), big)
    one_nan = big.clone()
    one_nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x contains 1 non-finite"):
        check_finite_values(one_nan, big)
    with pytest.raises(FloatingPointError, match="not finite although the input is"):
        check_finite_values(big, torch.tensor([1.0, float("inf")]))
    with pytest.raises(FloatingPointError, match="not finite although the input is"):
        check_finite_values(torch.ones(2), torch.tensor([float("inf"), float("-inf")]))
