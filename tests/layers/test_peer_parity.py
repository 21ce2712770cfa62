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

from moelab.layers import MoEConfig, MoELayer


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


def _assert_same_grads(got: dict, expected: dict, atol: float) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=0, msg=name)


# -- Hugging Face's MixtralSparseMoeBlock --------------------------------------------------------------

T, D, H = 64, 32, 48  # widths divisible by 4: aligned for the grouped_mm kernels of both sides


def _gated_layer(*, num_experts: int, top_k: int) -> MoELayer:
    """A Mixtral-shaped moelab layer: SiLU-gated experts, no biases, softmax over the top-K logits."""
    config = MoEConfig(
        num_experts=num_experts, top_k=top_k, expert_hidden=H, gated=True, activation="silu",
        expert_bias=False, router_bias=False, weighting="paper",
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

    cotangent = torch.randn(T, D)
    expected = _grads(layer, layer, x, cotangent)
    state = baselines.mixtral_state_dict
    got = _grads(
        lambda x: torch.func.functional_call(block, state(layer), (x.view(1, T, D),)).view(T, D),
        layer, x, cotangent,
    )
    _assert_same_grads(got, expected, atol=1e-5)


def test_mixtral_state_dict_fills_every_entry_of_the_block():
    pytest.importorskip("transformers")
    layer = _gated_layer(num_experts=4, top_k=2)
    block = baselines.hf_mixtral_block(layer, implementation="eager")
    state = baselines.mixtral_state_dict(layer)
    assert state.keys() == block.state_dict().keys()
    for name, value in block.state_dict().items():
        assert torch.equal(value, state[name]), name


# -- the eager loop over nn.Linear experts --------------------------------------------------------------


@pytest.mark.parametrize("width", [10, 128])
def test_loop_over_experts_matches_the_layer(width):
    """The paper's regime of the benchmark: top-1, Switch weighting, two-layer ReLU experts."""
    torch.manual_seed(0)
    layer = MoELayer(64, 1, MoEConfig(num_experts=4, expert_hidden=width))
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
