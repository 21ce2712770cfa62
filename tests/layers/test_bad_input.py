"""Every bad argument gets a ValueError/TypeError naming the argument, the value and the expectation."""

import pytest
import torch

from moelab.layers import (
    MLP,
    DeepMoE,
    DenseMLP,
    ExpertConfig,
    Experts,
    MoEConfig,
    MoELayer,
    Router,
    RouterConfig,
)


def _router(**fields) -> MoEConfig:
    return MoEConfig(router=RouterConfig(**fields))


def _experts(**fields) -> MoEConfig:
    return MoEConfig(experts=ExpertConfig(**fields))


@pytest.mark.parametrize(
    "build,error,pattern",
    [
        (lambda: MoEConfig(num_experts=4, router=RouterConfig(top_k=5)), ValueError,
         r"top_k=5 must be <= num_experts=4"),
        (lambda: _router(top_k=0), ValueError, r"router.top_k must be >= 1, got 0"),
        (lambda: _router(top_k=-1), ValueError, r"router.top_k must be >= 1, got -1"),
        (lambda: MoEConfig(num_experts=0), ValueError, r"num_experts must be >= 1, got 0"),
        (lambda: MoEConfig(num_experts=2.5), TypeError, r"num_experts must be an int, got 2.5"),
        (lambda: _router(top_k=True), TypeError, r"router.top_k must be an int, got True"),
        (lambda: _experts(hidden=0), ValueError, r"experts.hidden must be >= 1, got 0"),
        (lambda: _experts(depth=0), ValueError, r"experts.depth must be >= 1, got 0"),
        (lambda: _experts(latent_dim=0), ValueError, r"experts.latent_dim must be >= 1, got 0"),
        (lambda: _experts(activation="swish"), ValueError,
         r"experts.activation='swish' is unknown; expected one of"),
        (lambda: _router(scorer="attention"), ValueError, r"router.scorer='attention' is unknown"),
        (lambda: _router(weighting="softmax"), ValueError, r"router.weighting='softmax' is unknown"),
        (lambda: _router(routing="hash"), ValueError, r"router.routing='hash' is unknown"),
        (lambda: _router(noise="gumbel"), ValueError, r"router.noise='gumbel' is unknown"),
        (lambda: MoEConfig(dispatch="fast"), ValueError, r"dispatch='fast' is unknown"),
        (lambda: _router(capacity_priority="random"), ValueError,
         r"router.capacity_priority='random' is unknown"),
        (lambda: _router(capacity_factor=0.0), ValueError,
         r"router.capacity_factor must be a finite number > 0"),
        (lambda: _router(capacity_factor=float("nan")), ValueError,
         r"router.capacity_factor must be a finite"),
        (lambda: _router(jitter_eps=-0.1), ValueError,
         r"router.jitter_eps must be a finite number >= 0"),
        (lambda: MoEConfig(shared_experts=-1), ValueError,
         r"shared_experts must be an int >= 0, got -1"),
        (lambda: _experts(gated=True, depth=3), ValueError, r"gated experts have experts.depth=2"),
        (lambda: _experts(latent_decoder=True), ValueError, r"latent_decoder=True needs latent_dim"),
        (lambda: _router(scorer="mlp", hidden=0), ValueError, r"router.hidden must be >= 1, got 0"),
        (lambda: _router(scorer="mlp", depth=0), ValueError, r"router.depth must be >= 1, got 0"),
    ],
)
def test_bad_layer_config(build, error, pattern):
    with pytest.raises(error, match=pattern):
        MoELayer(4, 2, build())


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(num_experts=4, top_k=5), ValueError, r"top_k=5 must be <= num_experts=4"),
        (dict(top_k=0), ValueError, r"top_k must be >= 1, got 0"),
        (dict(top_k=-1), ValueError, r"top_k must be >= 1, got -1"),
        (dict(top_k=True), TypeError, r"top_k must be an int, got True"),
        (dict(expert_hidden=0), ValueError, r"expert_hidden must be >= 1, got 0"),
        (dict(expert_depth=0), ValueError, r"expert_depth must be >= 1, got 0"),
        (dict(latent_dim=0), ValueError, r"latent_dim must be >= 1, got 0"),
        (dict(activation="swish"), ValueError, r"activation='swish' is unknown; expected one of"),
        (dict(router="attention"), ValueError, r"router='attention' is unknown"),
        (dict(weighting="softmax"), ValueError, r"weighting='softmax' is unknown"),
        (dict(routing="hash"), ValueError, r"routing='hash' is unknown"),
        (dict(noise="gumbel"), ValueError, r"noise='gumbel' is unknown"),
        (dict(capacity_priority="random"), ValueError, r"capacity_priority='random' is unknown"),
        (dict(capacity_factor=0.0), ValueError, r"capacity_factor must be a finite number > 0"),
        (dict(capacity_factor=float("nan")), ValueError, r"capacity_factor must be a finite"),
        (dict(jitter_eps=-0.1), ValueError, r"jitter_eps must be a finite number >= 0"),
        (dict(gated=True, expert_depth=3), ValueError, r"gated experts have expert_depth=2"),
        (dict(latent_decoder=True), ValueError, r"latent_decoder=True needs latent_dim"),
        (dict(router="mlp", router_hidden=0), ValueError, r"router_hidden must be >= 1, got 0"),
        (dict(router="mlp", router_depth=0), ValueError, r"router_depth must be >= 1, got 0"),
    ],
)
def test_bad_flat_layer_config_names_the_flat_argument(kwargs, error, pattern):
    """The deprecated flat spelling warns, and its errors name the flat argument the caller wrote."""
    with pytest.warns(DeprecationWarning, match="flat spelling"), pytest.raises(error, match=pattern):
        MoELayer(4, 2, MoEConfig(**kwargs))


@pytest.mark.parametrize("d_in,d_out,name", [(0, 2, "d_in"), (3, -1, "d_out")])
def test_non_positive_layer_widths(d_in, d_out, name):
    with pytest.raises(ValueError, match=rf"{name} must be >= 1"):
        MoELayer(d_in, d_out, MoEConfig())


def test_wrong_trailing_dimension_names_expected_shape():
    layer = MoELayer(4, 2, MoEConfig())
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\), got \(3, 5\)"):
        layer(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\), got \(\)"):
        layer(torch.tensor(1.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_rejected_by_default(bad):
    layer = MoELayer(4, 2, MoEConfig())
    x = torch.randn(5, 4)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"x contains 1 non-finite value\(s\).*check_finite=False"):
        layer(x)


def test_finite_check_can_be_switched_off():
    layer = MoELayer(4, 2, MoEConfig(check_finite=False))
    x = torch.randn(5, 4)
    x[0, 0] = float("nan")
    y = layer(x)
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1:]).all()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_inputs_rejected(dtype):
    layer = MoELayer(4, 2, MoEConfig())
    with pytest.raises(TypeError, match=rf"x must have a floating dtype, got {dtype}"):
        layer(torch.ones(3, 4, dtype=dtype))


def test_non_tensor_input_rejected():
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        MoELayer(2, 1, MoEConfig())([[1.0, 2.0]])


def test_deep_stack_and_dense_baseline_check_their_arguments():
    with pytest.raises(ValueError, match=r"widths\[1\] must be >= 1, got 0"):
        DeepMoE([3, 0, 1])
    with pytest.raises(ValueError, match=r"widths must list at least an input and an output"):
        DeepMoE([3])
    with pytest.raises(ValueError, match=r"moe_every must be >= 1, got 0"):
        DeepMoE([3, 1], moe_every=0)
    with pytest.raises(ValueError, match=r"depth must be >= 1, got 0"):
        DenseMLP(3, 1, hidden=4, depth=0)
    with pytest.raises(ValueError, match=r"hidden must be >= 1, got -2"):
        MLP(3, 1, hidden=-2)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\)"):
        DenseMLP(3, 1, hidden=4)(torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\)"):
        DeepMoE([3, 1])(torch.randn(2, 4))


def test_experts_and_router_check_their_arguments():
    with pytest.raises(ValueError, match=r"experts.depth must be >= 1, got 0"):
        Experts(2, 3, 1, ExpertConfig(hidden=4, depth=0))
    with pytest.raises(ValueError, match=r"activation='Relu' is unknown"):
        Experts(2, 3, 1, ExpertConfig(hidden=4, activation="Relu"))
    with pytest.raises(ValueError, match=r"top_k=3 must be <= num_experts=2"):
        Router(3, 2, RouterConfig(top_k=3))
    with pytest.raises(ValueError, match=r"needs a router built with balance_bias=True"):
        Router(3, 2).update_balance_bias(torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"tokens_per_expert must have shape \(2,\), got \(3,\)"):
        Router(3, 2, RouterConfig(balance_bias=True)).update_balance_bias(torch.tensor([1, 1, 1]))
