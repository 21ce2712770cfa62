"""moelab's MoE layer against the implementations benchmarks/layer_speed.py times it against.

Each peer is built by benchmarks/baselines.py to hold a moelab layer's weights; here it must compute
the same function: the same outputs, the same selected experts and the same gradients for every
parameter and the input. Gradients reach moelab's own parameters through the peer's computation
(``torch.func.functional_call`` with the peer's state dict built from the layer), so both sides'
gradients are compared under moelab's parameter names.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from moelab.layers import ExpertConfig, MoEConfig, MoELayer, RouterConfig


def _load_baselines():
    """benchmarks/baselines.py as a module (benchmarks/ is not a package on the import path)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "baselines.py"
    spec = importlib.util.spec_from_file_location("moelab_benchmark_baselines", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


baselines = _load_baselines()


def _grads(forward, layer: MoELayer, x: torch.Tensor, cotangent: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of <forward(x), cotangent> for each of ``layer``'s parameters and for x (zeros for
    a parameter the loss does not reach, e.g. the router of a top-1 layer with the paper's weights)."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    (forward(x) * cotangent).sum().backward()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in layer.named_parameters()}
    return {**grads, "x": x.grad}


def _layer_and_peer_grads(layer: MoELayer, peer, state_dict, x: torch.Tensor
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Gradients (see :func:`_grads`) of ``layer`` and of the ``peer`` module holding the layer's
    weights through ``state_dict(layer)``, both on the moelab parameters, for one random cotangent."""
    T, D = x.shape
    cotangent = torch.randn(T, D)
    expected = _grads(layer, layer, x, cotangent)
    got = _grads(
        lambda x: torch.func.functional_call(peer, state_dict(layer), (x.view(1, T, D),)).view(T, D),
        layer, x, cotangent,
    )
    return got, expected


def _assert_same_grads(got: dict, expected: dict, atol: float) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=0, msg=name)


# -- Hugging Face's MixtralSparseMoeBlock --------------------------------------------------------------

T, D, H = 64, 32, 48  # widths divisible by 4: aligned for the grouped_mm kernels of both sides


def _gated_layer(*, num_experts: int, top_k: int) -> MoELayer:
    """A Mixtral-shaped moelab layer: SiLU-gated experts, no biases, softmax over the top-K logits."""
    config = MoEConfig(
        num_experts=num_experts,
        router=RouterConfig(top_k=top_k, bias=False, weighting="paper"),
        experts=ExpertConfig(hidden=H, gated=True, activation="silu", bias=False),
    )
    return MoELayer(D, D, config)


@pytest.fixture(params=["grouped_mm", "eager"])
def implementation(request):
    pytest.importorskip("transformers")
    return request.param


@pytest.mark.parametrize(("num_experts", "top_k"), [(8, 2), (4, 1), (4, 3)])
def test_gated_layer_matches_hf_mixtral_block(implementation, num_experts, top_k):
    torch.manual_seed(0)
    layer = _gated_layer(num_experts=num_experts, top_k=top_k)
    block = baselines.hf_mixtral_block(layer, implementation=implementation)
    x = torch.randn(T, D)
    with torch.no_grad():
        out = layer.run(x)
        _, weights_TK, ids_TK = block.gate(x)
        y_hf = block(x.view(1, T, D)).view(T, D)

    assert torch.equal(ids_TK, out.routing.expert_ids)
    torch.testing.assert_close(weights_TK, out.routing.weights, atol=1e-6, rtol=0)
    assert out.y.abs().max() > 0.1  # the comparison below is not of near-zero outputs
    torch.testing.assert_close(y_hf, out.y, atol=1e-6, rtol=0)

    got, expected = _layer_and_peer_grads(layer, block, baselines.mixtral_state_dict, x)
    _assert_same_grads(got, expected, atol=1e-5)


def test_mixtral_state_dict_fills_every_entry_of_the_block():
    pytest.importorskip("transformers")
    layer = _gated_layer(num_experts=4, top_k=2)
    block = baselines.hf_mixtral_block(layer, implementation="eager")
    state = baselines.mixtral_state_dict(layer)
    assert state.keys() == block.state_dict().keys()
    for name, value in block.state_dict().items():
        assert torch.equal(value, state[name]), name


# -- torchtitan's MoE ------------------------------------------------------------------------------------

#: torchtitan's router asks for float32 autocast on CPU, which torch does not support; it warns and
#: computes in float32 anyway.
_titan_autocast_warning = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")


@pytest.fixture
def titan():
    """Skip unless torchtitan's MoE imports (torchtitan plus spmd_types, tyro, docstring_parser, triton:
    see benchmarks/README.md)."""
    return pytest.importorskip("torchtitan.models.common.moe")


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


#: torchtitan's grouped experts compute in bfloat16 (8 significant bits, eps = 2**-8): routed tokens,
#: expert weights, the hidden activations and the experts' outputs are all rounded to it. Each rounding
#: is a relative error of at most eps/2, and they add up over the three matmuls to about 1.5 eps in
#: norm (measured 5.3e-3..8.6e-3 over 90 seeds and shapes, outputs and every gradient). 4 eps bounds
#: that with margin and still fails on any real disagreement (a wrong expert, weight or routing
#: weight moves the output by O(1) relative to its norm).
TITAN_RTOL = 4 * 2**-8


@_titan_autocast_warning
@pytest.mark.parametrize(("num_experts", "top_k"), [(8, 2), (4, 1), (4, 3)])
def test_gated_layer_matches_torchtitan_moe(titan, num_experts, top_k):
    torch.manual_seed(0)
    layer = _gated_layer(num_experts=num_experts, top_k=top_k)
    moe = baselines.torchtitan_moe(layer)
    x = torch.randn(T, D)
    with torch.no_grad():
        out = layer.run(x)
        scores_TK, ids_TK, _ = (t.view(T, -1) for t in moe.router(x.view(1, T, D)))
        y_titan = moe(x.view(1, T, D)).view(T, D)

    # The same routing, in float32: torchtitan's top-K is unsorted, moelab's best first.
    order, moelab_order = ids_TK.argsort(dim=1), out.routing.expert_ids.argsort(dim=1)
    assert torch.equal(ids_TK.gather(1, order), out.routing.expert_ids.gather(1, moelab_order))
    torch.testing.assert_close(
        scores_TK.gather(1, order), out.routing.weights.gather(1, moelab_order), atol=1e-6, rtol=0
    )
    # The same layer output, up to the experts' bfloat16 arithmetic.
    assert out.y.abs().max() > 0.1  # the comparison below is not of near-zero outputs
    assert _relative_error(y_titan, out.y) < TITAN_RTOL

    got, expected = _layer_and_peer_grads(layer, moe, baselines.torchtitan_state_dict, x)
    assert got.keys() == expected.keys()
    for name in expected:
        if top_k == 1 and name == "router.scorer.weight":
            # Renormalised top-1 weights are 1 on both sides, so the router gets no gradient: exactly
            # zero in moelab; in torchtitan the two terms of d(s / (s + 1e-20))/ds cancel only to
            # float32 rounding (about 2e-7 here, against input gradients of order 1).
            torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=name)
        else:
            assert _relative_error(got[name], expected[name]) < TITAN_RTOL, name


@_titan_autocast_warning
def test_torchtitan_moe_differs_from_the_layer_only_by_bfloat16_experts(titan):
    """Why the tolerance above is needed: torchtitan's output is, to float32 rounding, moelab's routing
    with every expert evaluated in bfloat16 (inputs and weights cast, each matmul's output rounded),
    scaled by the routing weight in float32 after the expert."""
    torch.manual_seed(0)
    layer = _gated_layer(num_experts=4, top_k=2)
    moe = baselines.torchtitan_moe(layer)
    x = torch.randn(T, D)
    with torch.no_grad():
        routing = layer.run(x).routing
        w1_EDH, w2_EHD, w3_EDH = (w.bfloat16() for w in layer.experts.weights)
        expected = torch.zeros(T, D)
        for e in range(layer.num_experts):
            t, k = torch.where(routing.expert_ids == e)
            x_bf16 = x[t].bfloat16()
            h = torch.nn.functional.silu(x_bf16 @ w1_EDH[e]) * (x_bf16 @ w3_EDH[e])
            expected.index_add_(0, t, (h @ w2_EHD[e]).float() * routing.weights[t, k, None])
        y_titan = moe(x.view(1, T, D)).view(T, D)
    torch.testing.assert_close(y_titan, expected, atol=1e-6, rtol=0)


def test_torchtitan_state_dict_fills_every_entry_of_the_moe(titan):
    layer = _gated_layer(num_experts=4, top_k=2)
    moe = baselines.torchtitan_moe(layer)
    state = baselines.torchtitan_state_dict(layer)
    assert state.keys() == moe.state_dict().keys()
    for name, value in moe.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_building_torchtitan_moe_leaves_the_global_generator_alone(titan):
    layer = _gated_layer(num_experts=4, top_k=2)
    before = torch.get_rng_state()
    baselines.torchtitan_moe(layer)
    assert torch.equal(torch.get_rng_state(), before)


# -- the eager loop over nn.Linear experts --------------------------------------------------------------


@pytest.mark.parametrize("width", [10, 128])
def test_loop_over_experts_matches_the_layer(width):
    """The paper's regime of the benchmark: top-1, Switch weighting, two-layer ReLU experts."""
    torch.manual_seed(0)
    layer = MoELayer(64, 1, MoEConfig(num_experts=4, experts=ExpertConfig(hidden=width)))
    loop = baselines.LoopMoE.like(layer)
    x = torch.randn(128, 64)
    with torch.no_grad():
        y_loop = loop(x)
        for mode in ("auto", "grouped", "dense", "reference"):
            torch.testing.assert_close(
                y_loop, layer.run(x, dispatch_mode=mode).y, atol=1e-7, rtol=1e-7, msg=mode
            )

    cotangent = torch.randn(128, 1)
    expected = _grads(layer, layer, x, cotangent)
    got = _grads(
        lambda x: torch.func.functional_call(loop, baselines.loop_state_dict(layer), (x,)),
        layer, x, cotangent,
    )
    _assert_same_grads(got, expected, atol=1e-5)
