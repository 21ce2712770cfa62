"""The layer options reproduce transformers 5.23's MoE blocks (float32, eval mode).

Each test builds a small HF block with random weights, copies them by hand into a moelab layer
configured with the options that model uses, and compares outputs and selected experts. This
checks the options' semantics only; conversion itself is :mod:`moelab.interop`'s business.
"""

import pytest
import torch

from moelab.layers import ExpertConfig, MoEConfig, MoELayer, RouterConfig

transformers = pytest.importorskip("transformers")

D, H, E = 16, 8, 8


def _randomised(block):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block.eval()


def _copy_experts(layer, gate_up, down, *, interleaved=False, transposed=False,
                  gate_up_bias=None, down_bias=None):
    """HF's fused experts -> moelab's (E, in, out) maps. HF stores gate_up (E, 2H, D) and down
    (E, D, H), or transposed (E, D, 2H) and (E, H, D); GPT-OSS interleaves gate and up."""
    ex = layer.experts
    with torch.no_grad():
        gu = gate_up if transposed else gate_up.transpose(1, 2)
        split = (lambda t: (t[..., ::2], t[..., 1::2])) if interleaved else (
            lambda t: t.chunk(2, dim=-1))
        gate, up = split(gu)
        ex.weight_gate.copy_(gate)
        ex.weight_value.copy_(up)
        ex.weight_down.copy_(down if transposed else down.transpose(1, 2))
        if gate_up_bias is not None:
            bg, bu = split(gate_up_bias)
            ex.bias_gate.copy_(bg)
            ex.bias_value.copy_(bu)
            ex.bias_down.copy_(down_bias)


def _copy_mlp(shared, mlp):
    with torch.no_grad():
        shared.gate.weight.copy_(mlp.gate_proj.weight)
        shared.value.weight.copy_(mlp.up_proj.weight)
        shared.down.weight.copy_(mlp.down_proj.weight)


def _check(layer, block, x, ids, *, tuple_out=False):
    with torch.no_grad():
        want = block(x.clone())
        want = want[0] if tuple_out else want
        out = layer.run(x)
    torch.testing.assert_close(out.y, want, rtol=1e-5, atol=1e-5)
    got_ids = out.routing.expert_ids.reshape(-1, ids.shape[-1]).sort(-1).values
    assert torch.equal(got_ids, ids.sort(-1).values)


SWIGLU = ExpertConfig(hidden=H, gated=True, activation="silu", bias=False)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_deepseek_v3_groups_bias_scaling_and_shared_expert(norm_topk_prob):
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    cfg = transformers.DeepseekV3Config(
        hidden_size=D, moe_intermediate_size=H, n_routed_experts=E, num_experts_per_tok=3,
        n_group=4, topk_group=2, routed_scaling_factor=2.5, n_shared_experts=1,
        norm_topk_prob=norm_topk_prob)
    block = _randomised(DeepseekV3MoE(cfg))
    with torch.no_grad():
        block.gate.e_score_correction_bias.copy_(torch.randn(E) * 0.3)
    router = RouterConfig(top_k=3, weighting="sigmoid" if norm_topk_prob else "sigmoid_raw",
                          bias=False, balance_bias=True, groups=4, top_groups=2, norm_eps=1e-20,
                          scaling=2.5, float32=True)
    layer = MoELayer(D, D, MoEConfig(num_experts=E, router=router, experts=SWIGLU,
                                     shared_experts=1, shared_gated=True))
    with torch.no_grad():
        layer.router.scorer.weight.copy_(block.gate.weight)
        layer.router.expert_bias.copy_(block.gate.e_score_correction_bias)
    _copy_experts(layer, block.experts.gate_up_proj, block.experts.down_proj)
    _copy_mlp(layer.shared, block.shared_experts)
    x = torch.randn(2, 12, D)
    _, _, ids = block.gate(x)
    _check(layer, block, x, ids)


def test_qwen2_moe_shared_expert_of_its_own_width_with_its_gate():
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    cfg = transformers.Qwen2MoeConfig(hidden_size=D, moe_intermediate_size=H, num_experts=E,
                                      num_experts_per_tok=2, shared_expert_intermediate_size=12,
                                      norm_topk_prob=False)
    block = _randomised(Qwen2MoeSparseMoeBlock(cfg))
    layer = MoELayer(D, D, MoEConfig(num_experts=E, router=RouterConfig(top_k=2, bias=False),
                                     experts=SWIGLU, shared_experts=1, shared_hidden=12,
                                     shared_gated=True, shared_gate=True))
    with torch.no_grad():
        layer.router.scorer.weight.copy_(block.gate.weight)
        layer.shared_gate.weight.copy_(block.shared_expert_gate.weight)
    _copy_experts(layer, block.experts.gate_up_proj, block.experts.down_proj)
    _copy_mlp(layer.shared, block.shared_expert)
    x = torch.randn(2, 12, D)
    _, _, ids = block.gate(x.view(-1, D))
    _check(layer, block, x, ids)


@pytest.mark.parametrize("family", ["qwen3_moe", "olmoe"])
def test_renormalised_top_k_softmax(family):
    if family == "qwen3_moe":
        from transformers.models.qwen3_moe.modeling_qwen3_moe import (
            Qwen3MoeSparseMoeBlock as Block,
        )
        cfg = transformers.Qwen3MoeConfig(hidden_size=D, moe_intermediate_size=H, num_experts=E,
                                          num_experts_per_tok=2, norm_topk_prob=True)
    else:
        from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock as Block
        cfg = transformers.OlmoeConfig(hidden_size=D, intermediate_size=H, num_experts=E,
                                       num_experts_per_tok=2, norm_topk_prob=True)
    block = _randomised(Block(cfg))
    layer = MoELayer(D, D, MoEConfig(num_experts=E, router=RouterConfig(
        top_k=2, bias=False, weighting="softmax_renorm"), experts=SWIGLU))
    with torch.no_grad():
        layer.router.scorer.weight.copy_(block.gate.weight)
    _copy_experts(layer, block.experts.gate_up_proj, block.experts.down_proj)
    x = torch.randn(2, 12, D)
    _, _, ids = block.gate(x.view(-1, D))
    _check(layer, block, x, ids)


def test_gpt_oss_router_bias_and_clamped_experts_with_biases():
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    cfg = transformers.GptOssConfig(hidden_size=D, intermediate_size=H, num_local_experts=E,
                                    num_experts_per_tok=2)
    block = _randomised(GptOssMLP(cfg))
    layer = MoELayer(D, D, MoEConfig(num_experts=E, router=RouterConfig(top_k=2, weighting="paper"),
                                     experts=ExpertConfig(hidden=H, gated=True, gated_form="clamped",
                                                          clamp_limit=cfg.swiglu_limit,
                                                          glu_alpha=cfg.swiglu_alpha, bias=True)))
    with torch.no_grad():
        layer.router.scorer.weight.copy_(block.router.weight)
        layer.router.scorer.bias.copy_(block.router.bias)
    ex = block.experts
    _copy_experts(layer, ex.gate_up_proj, ex.down_proj, interleaved=True, transposed=True,
                  gate_up_bias=ex.gate_up_proj_bias, down_bias=ex.down_proj_bias)
    x = torch.randn(2, 12, D) * 4  # large enough that the clamp at 7 bites
    with torch.no_grad():
        gu = x.view(-1, D) @ ex.gate_up_proj[0] + ex.gate_up_proj_bias[0]
    assert (gu.abs() > cfg.swiglu_limit).any()
    _, _, ids = block.router(x.view(-1, D))
    _check(layer, block, x, ids, tuple_out=True)
