"""The router and expert options of published MoE models, held to a per-token reference loop.

For each token the loop below computes, plainly and one step at a time: the router's logits and
scores, the selection scores (with the selection bias), the group-limited mask, the top-k, the
combine weights, the routed scaling, each selected expert applied on its own, and the shared expert
with its gate. The layer must give the same outputs, the same selected experts and the same
gradients (input and every parameter) on every dispatch path. The semantics mirror transformers
5.23's MoE blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, GPT-OSS).
"""

import dataclasses
import math

import pytest
import torch

from moelab.checkpoints import load_checkpoint, save_checkpoint
from moelab.experiments.config import RunConfig, apply_overrides, parse_override
from moelab.layers import (
    DISPATCH_MODES,
    ExpertConfig,
    GatedMLP,
    MoEConfig,
    MoELayer,
    Router,
    RouterConfig,
)
from moelab.typed_json import from_json, to_json

D, O = 6, 5


# -- the per-token reference ------------------------------------------------------------------------

def _expert(layer, e, x):
    """Expert e of the layer on one token x (D,), from its parameters, one map at a time."""
    ex, cfg = layer.experts, layer.config.experts
    bias = cfg.bias
    if cfg.gated:
        g = x @ ex.weight_gate[e] + (ex.bias_gate[e] if bias else 0)
        v = x @ ex.weight_value[e] + (ex.bias_value[e] if bias else 0)
        h = _unit(g, v, cfg)
        return h @ ex.weight_down[e] + (ex.bias_down[e] if bias else 0)
    h = x @ ex.weight1[e] + (ex.bias1[e] if bias else 0)
    h = torch.nn.functional.gelu(h) if cfg.activation == "gelu" else torch.relu(h)
    return h @ ex.weight2[e] + (ex.bias2[e] if bias else 0)


def _unit(g, v, cfg):
    if cfg.gated_form == "clamped":  # GPT-OSS's _apply_gate
        g = torch.clamp(g, max=cfg.clamp_limit)
        v = torch.clamp(v, -cfg.clamp_limit, cfg.clamp_limit)
        return (v + 1) * (g * torch.sigmoid(g * cfg.glu_alpha))
    assert cfg.activation == "silu"
    return g * torch.sigmoid(g) * v


def _shared(layer, x):
    if layer.shared is None:
        return 0
    s = layer.shared
    if isinstance(s, GatedMLP):
        h = _unit(s.gate(x), s.value(x), layer.config.experts)
        y = s.down(h)
    else:
        y = s.linears[1](torch.relu(s.linears[0](x)))
    if layer.shared_gate is not None:
        y = torch.sigmoid(x @ layer.shared_gate.weight[0]) * y
    return y


def reference(layer, x_TD):
    """The layer's function, token by token; returns (y (T, O), chosen experts per token)."""
    rc = layer.config.router
    router = layer.router
    E = layer.config.num_experts
    ys, chosen_all = [], []
    for x in x_TD:
        xr = x.float() if rc.float32 else x
        w = router.scorer.weight.to(xr.dtype)
        logits = w @ xr
        if router.scorer.bias is not None:
            logits = logits + router.scorer.bias.to(xr.dtype)
        sigmoid = rc.weighting in ("sigmoid", "sigmoid_raw")
        scores = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, 0)
        select = [float(s) for s in scores.detach()]
        if rc.balance_bias:
            select = [s + float(b) for s, b in zip(select, router.expert_bias, strict=True)]
        top_groups = rc.top_groups or rc.groups
        if top_groups < rc.groups:
            n = E // rc.groups
            group_score = [sum(sorted(select[g * n:(g + 1) * n], reverse=True)[:2])
                           for g in range(rc.groups)]
            kept = sorted(range(rc.groups), key=lambda g: -group_score[g])[:top_groups]
            select = [s if e // n in kept else -math.inf for e, s in enumerate(select)]
        chosen = sorted(range(E), key=lambda e: -select[e])[:rc.top_k]
        picked = torch.stack([scores[e] for e in chosen])
        if rc.weighting in ("switch", "sigmoid_raw"):
            weights = picked
        elif rc.weighting in ("softmax_renorm", "sigmoid"):
            weights = picked / (picked.sum() + rc.norm_eps)
        elif rc.weighting == "paper":
            weights = torch.softmax(torch.stack([logits[e] for e in chosen]), 0)
        else:
            weights = torch.ones_like(picked)
        weights = (weights * rc.scaling).to(x.dtype)
        y = 0
        for k, e in enumerate(chosen):
            y = y + weights[k] * _expert(layer, e, x)
        ys.append(y + _shared(layer, x))
        chosen_all.append(chosen)
    return torch.stack(ys), chosen_all


# -- the configurations of published models -----------------------------------------------------------

SILU_GATED = ExpertConfig(hidden=7, gated=True, activation="silu", bias=False)

CONFIGS = {
    # Mixtral, Qwen3-MoE / OLMoE with norm_topk_prob=True
    "softmax_renorm": MoEConfig(num_experts=6, router=RouterConfig(
        top_k=2, weighting="softmax_renorm", bias=False), experts=SILU_GATED),
    "softmax_renorm-eps": MoEConfig(num_experts=6, router=RouterConfig(
        top_k=3, weighting="softmax_renorm", norm_eps=0.5)),
    # DeepSeek-V3 with norm_topk_prob=False
    "sigmoid_raw": MoEConfig(num_experts=6, router=RouterConfig(
        top_k=2, weighting="sigmoid_raw", bias=False), experts=SILU_GATED),
    # DeepSeek-V3: sigmoid + selection bias + 4 groups keep 2 + eps + scaling 2.5, a SwiGLU shared expert
    "deepseek-v3": MoEConfig(num_experts=8, router=RouterConfig(
        top_k=3, weighting="sigmoid", bias=False, balance_bias=True, groups=4, top_groups=2,
        norm_eps=1e-20, scaling=2.5), experts=SILU_GATED, shared_experts=2, shared_gated=True),
    "deepseek-v3-raw": MoEConfig(num_experts=8, router=RouterConfig(
        top_k=2, weighting="sigmoid_raw", bias=False, balance_bias=True, groups=4, top_groups=1,
        scaling=2.5), experts=SILU_GATED, shared_experts=1, shared_gated=True),
    # Qwen2-MoE: full softmax weights, a SwiGLU shared expert of its own width and its sigmoid gate
    "qwen2-moe": MoEConfig(num_experts=6, router=RouterConfig(top_k=2, bias=False),
                           experts=SILU_GATED, shared_experts=1, shared_hidden=11,
                           shared_gated=True, shared_gate=True),
    # GPT-OSS: router bias, softmax over the top-k logits, clamped gated experts with biases
    "gpt-oss": MoEConfig(num_experts=6, router=RouterConfig(top_k=2, weighting="paper"),
                         experts=ExpertConfig(hidden=7, gated=True, gated_form="clamped",
                                              clamp_limit=0.3, glu_alpha=1.702, bias=True)),
    "gpt-oss-limit-7": MoEConfig(num_experts=6, router=RouterConfig(top_k=2, weighting="paper"),
                                 experts=ExpertConfig(hidden=7, gated=True, gated_form="clamped",
                                                      bias=True)),
    # group-limited softmax routing with scaling, plain experts and a plain shared MLP
    "softmax-groups": MoEConfig(num_experts=6, router=RouterConfig(
        top_k=2, groups=3, top_groups=2, scaling=0.5, balance_bias=True),
        shared_experts=1, shared_hidden=3, shared_gate=True),
    "unweighted-scaled": MoEConfig(num_experts=4, router=RouterConfig(
        top_k=2, weighting="unweighted", scaling=3.0)),
    "float32-router": MoEConfig(num_experts=8, router=RouterConfig(
        top_k=2, weighting="sigmoid", bias=False, balance_bias=True, groups=4, top_groups=2,
        scaling=2.5, float32=True), experts=SILU_GATED),
}


def _layer(config, seed=0):
    torch.manual_seed(seed)
    layer = MoELayer(D, O, config)
    if layer.router.expert_bias is not None:  # a bias large enough to change the selection
        layer.router.expert_bias.copy_(torch.randn(config.num_experts) * 0.3)
    return layer


def _grads(layer, x, y, cot):
    layer.zero_grad()
    x.grad = None
    (y * cot).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    grads["x"] = x.grad.clone()
    return grads


@pytest.mark.parametrize("mode", DISPATCH_MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_layer_matches_the_per_token_loop(name, mode):
    layer = _layer(CONFIGS[name])
    x = torch.randn(13, D, requires_grad=True)
    cot = torch.randn(13, O)
    out = layer.run(x, dispatch_mode=mode)
    y_ref, chosen = reference(layer, x)
    ids = out.routing.expert_ids.tolist()
    assert [sorted(a) for a in ids] == [sorted(b) for b in chosen]
    torch.testing.assert_close(out.y, y_ref, rtol=1e-5, atol=1e-6)
    got, want = _grads(layer, x, out.y, cot), _grads(layer, x, y_ref, cot)
    assert sorted(got) == sorted(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


def test_the_options_change_the_function():
    """Each option takes effect: switching it off changes the outputs (so the loop tests bite)."""
    x = torch.randn(64, D)
    for name, change in [
        ("deepseek-v3", {"router": {"scaling": 1.0}}),
        ("deepseek-v3", {"router": {"top_groups": None}}),
        ("deepseek-v3", {"router": {"weighting": "sigmoid_raw"}}),
        ("softmax_renorm-eps", {"router": {"norm_eps": 0.0}}),
        ("qwen2-moe", {"shared_gate": False}),
        ("qwen2-moe", {"shared_gated": False}),
        ("gpt-oss", {"experts": {"gated_form": "swiglu"}}),
    ]:
        config = CONFIGS[name]
        parts = {k: dataclasses.replace(getattr(config, k), **v) if isinstance(v, dict) else v
                 for k, v in change.items()}
        a, b = _layer(config), _layer(dataclasses.replace(config, **parts))
        b.load_state_dict(a.state_dict(), strict=False)
        assert not torch.allclose(a(x), b(x)), (name, change)


# -- the pieces, one by one -----------------------------------------------------------------------

def test_softmax_renorm_is_the_paper_weighting_computed_another_way():
    torch.manual_seed(0)
    paper = Router(D, 6, RouterConfig(top_k=3, weighting="paper"))
    renorm = Router(D, 6, RouterConfig(top_k=3, weighting="softmax_renorm"))
    renorm.load_state_dict(paper.state_dict())
    x = torch.randn(50, D)
    a, b = paper(x), renorm(x)
    assert torch.equal(a.expert_ids, b.expert_ids)
    torch.testing.assert_close(a.weights, b.weights)
    p = b.probs.gather(1, b.expert_ids)
    assert torch.equal(b.weights, p / p.sum(-1, keepdim=True))  # HF's exact arithmetic


def test_norm_eps_is_added_to_the_denominator():
    torch.manual_seed(0)
    r = Router(D, 4, RouterConfig(top_k=2, weighting="sigmoid", norm_eps=0.25))
    routing = r(torch.randn(9, D))
    s = routing.logits.sigmoid().gather(1, routing.expert_ids)
    torch.testing.assert_close(routing.weights, s / (s.sum(-1, keepdim=True) + 0.25))


def test_group_limited_selection_keeps_the_best_groups_by_top2_sum():
    """A hand-made case: group 0 holds the single best expert but group 1 the best pair."""
    r = Router(2, 6, RouterConfig(top_k=2, weighting="sigmoid_raw", bias=False, groups=3,
                                  top_groups=1))
    with torch.no_grad():
        r.scorer.weight.zero_()
        r.scorer.weight[:, 0] = torch.tensor([4.0, -4.0, 2.0, 1.9, 0.0, 0.0])
    routing = r(torch.tensor([[1.0, 0.0]]))
    assert sorted(routing.expert_ids[0].tolist()) == [2, 3]
    free = Router(2, 6, dataclasses.replace(r.config, groups=1, top_groups=None))
    free.load_state_dict(r.state_dict())
    assert sorted(free(torch.tensor([[1.0, 0.0]])).expert_ids[0].tolist()) == [0, 2]


def test_selection_bias_moves_the_groups_and_never_the_weights():
    r = Router(D, 8, RouterConfig(top_k=2, weighting="sigmoid", bias=False, balance_bias=True,
                                  groups=4, top_groups=1))
    with torch.no_grad():
        r.expert_bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 5.0, 4.0]))
    routing = r(torch.randn(20, D))
    assert (routing.expert_ids.sort(-1).values == torch.tensor([6, 7])).all()
    s = routing.logits.sigmoid().gather(1, routing.expert_ids)
    torch.testing.assert_close(routing.weights, s / s.sum(-1, keepdim=True))
    r.update_balance_bias(routing.tokens_per_expert, rate=0.5)
    assert r.expert_bias[6] == 4.5 and r.expert_bias[0] == 0.5


def test_scaling_multiplies_expert_choice_weights_too():
    torch.manual_seed(0)
    plain = Router(D, 4, RouterConfig(routing="expert_choice"))
    scaled = Router(D, 4, RouterConfig(routing="expert_choice", scaling=2.5))
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(12, D)
    torch.testing.assert_close(scaled(x).weights, 2.5 * plain(x).weights)


def test_empty_batch_with_groups():
    layer = _layer(CONFIGS["deepseek-v3"])
    out = layer.run(torch.randn(0, D))
    assert out.y.shape == (0, O) and out.routing.tokens_per_expert.sum() == 0


def test_clamped_unit_clamps_the_gate_from_above_and_the_value_both_ways():
    layer = _layer(CONFIGS["gpt-oss"])
    gate = torch.tensor([-2.0, 0.1, 5.0])
    value = torch.tensor([-5.0, 0.1, 5.0])
    from moelab.layers import gated_unit
    h = gated_unit(gate, value, layer.config.experts)
    g = torch.tensor([-2.0, 0.1, 0.3])
    v = torch.tensor([-0.3, 0.1, 0.3])
    torch.testing.assert_close(h, (v + 1) * g * torch.sigmoid(1.702 * g))


def test_shared_expert_shapes_and_names():
    layer = _layer(CONFIGS["qwen2-moe"])
    assert isinstance(layer.shared, GatedMLP)
    assert layer.shared.gate.weight.shape == (11, D) and layer.shared.down.weight.shape == (O, 11)
    assert layer.shared_gate.weight.shape == (1, D) and layer.shared_gate.bias is None
    ds = _layer(CONFIGS["deepseek-v3"])
    assert ds.shared.value.weight.shape == (2 * 7, D)  # shared_experts * experts.hidden
    plain = _layer(MoEConfig(experts=SILU_GATED, shared_experts=1))  # moelab 0.1's shared MLP
    assert [n for n, _ in plain.shared.named_parameters()] == [
        "linears.0.weight", "linears.1.weight"]
    assert plain.shared_gate is None


# -- float32 router in a bfloat16 model -------------------------------------------------------------

def test_float32_router_under_bfloat16():
    layer = _layer(CONFIGS["float32-router"]).to(torch.bfloat16)
    assert layer.router.expert_bias.dtype == torch.float32  # kept, like HF's correction bias
    assert layer.router.scorer.weight.dtype == torch.bfloat16
    x = torch.randn(40, D).to(torch.bfloat16).requires_grad_()
    out = layer.run(x)
    routing = out.routing
    assert routing.logits.dtype == torch.float32 and routing.weights.dtype == torch.bfloat16
    assert out.y.dtype == torch.bfloat16
    # the logits are the float32 product of the bf16 parameters and inputs
    w = layer.router.scorer.weight.float()
    torch.testing.assert_close(routing.logits, x.detach().float() @ w.t(), rtol=1e-6, atol=1e-6)
    y_ref, chosen = reference(layer, x)
    assert [sorted(a) for a in routing.expert_ids.tolist()] == [sorted(b) for b in chosen]
    torch.testing.assert_close(out.y, y_ref, rtol=2e-2, atol=2e-2)
    out.y.float().square().sum().backward()
    assert layer.router.scorer.weight.grad.dtype == torch.bfloat16
    assert layer.router.scorer.weight.grad.abs().sum() > 0


def test_float32_router_selects_what_a_float32_model_selects():
    """In bf16 the router's own rounding changes which experts win; in float32 it does not."""
    config = MoEConfig(num_experts=16, router=RouterConfig(top_k=2, bias=False, float32=True))
    torch.manual_seed(0)
    x = torch.randn(400, 64).to(torch.bfloat16)
    r32 = Router(64, 16, config.router).to(torch.bfloat16)
    r16 = Router(64, 16, dataclasses.replace(config.router, float32=False))
    r16.load_state_dict(r32.state_dict())
    r16 = r16.to(torch.bfloat16)
    exact = Router(64, 16, dataclasses.replace(config.router, float32=False))
    exact.load_state_dict({k: v.float() for k, v in r32.state_dict().items()})
    want = exact(x.float()).expert_ids
    assert torch.equal(r32(x).expert_ids, want)
    assert not torch.equal(r16(x).expert_ids, want)


def test_float32_router_in_a_float32_model_changes_nothing():
    config = CONFIGS["deepseek-v3"]
    plain = _layer(config)
    f32 = _layer(dataclasses.replace(config, router=dataclasses.replace(config.router,
                                                                        float32=True)))
    f32.load_state_dict(plain.state_dict())
    x = torch.randn(20, D)
    assert torch.equal(plain(x), f32(x))


# -- configs: validation, overrides, checkpoints ------------------------------------------------

@pytest.mark.parametrize(("build", "error", "pattern"), [
    (lambda: MoEConfig(num_experts=6, router=RouterConfig(groups=4)), ValueError,
     r"router.groups=4 must divide num_experts=6"),
    (lambda: RouterConfig(groups=2, top_groups=3), ValueError,
     r"router.top_groups=3 must be <= router.groups=2"),
    (lambda: RouterConfig(groups=2, top_groups=0), ValueError, r"router.top_groups must be >= 1"),
    (lambda: MoEConfig(num_experts=8, router=RouterConfig(top_k=3, groups=4, top_groups=1)),
     ValueError, r"router.top_k=3 must be <= router.top_groups \* num_experts / router.groups = "
     r"1 \* 2 = 2"),
    (lambda: Router(4, 8, RouterConfig(top_k=3, groups=4, top_groups=1)), ValueError,
     r"router.top_k=3 must be <="),
    (lambda: RouterConfig(groups=2, routing="expert_choice"), ValueError,
     r"router.groups=2 \(group-limited top-k\) needs router.routing='token_choice'"),
    (lambda: RouterConfig(groups=0), ValueError, r"router.groups must be >= 1, got 0"),
    (lambda: RouterConfig(scaling=0.0), ValueError, r"router.scaling must be a finite number > 0"),
    (lambda: RouterConfig(norm_eps=-1e-20), ValueError, r"router.norm_eps must be a finite number"),
    (lambda: RouterConfig(float32=1), TypeError, r"router.float32 must be a bool, got 1"),
    (lambda: RouterConfig(weighting="softmax"), ValueError,
     r"'softmax_renorm', 'sigmoid_raw'\]"),
    (lambda: ExpertConfig(gated_form="clamped"), ValueError,
     r"experts.gated_form='clamped' shapes the gated unit and needs experts.gated=True"),
    (lambda: ExpertConfig(gated=True, gated_form="geglu"), ValueError,
     r"experts.gated_form='geglu' is unknown; expected one of \['swiglu', 'clamped'\]"),
    (lambda: ExpertConfig(gated=True, clamp_limit=-1.0), ValueError,
     r"experts.clamp_limit must be a finite number > 0"),
    (lambda: ExpertConfig(gated=True, glu_alpha=0), ValueError, r"experts.glu_alpha must be"),
    (lambda: MoEConfig(shared_hidden=8), ValueError,
     r"shared_hidden=8 shapes the shared expert and needs shared_experts >= 1"),
    (lambda: MoEConfig(shared_gate=True), ValueError,
     r"shared_gate=True shapes the shared expert and needs shared_experts >= 1"),
    (lambda: MoEConfig(shared_gated=True), ValueError, r"shared_gated=True shapes"),
    (lambda: MoEConfig(shared_experts=1, shared_hidden=0), ValueError,
     r"shared_hidden must be >= 1, got 0"),
    (lambda: MoEConfig(shared_experts=1, shared_gate="yes"), TypeError,
     r"shared_gate must be a bool, got 'yes'"),
])
def test_bad_options_name_the_field(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


@pytest.mark.parametrize(("item", "check"), [
    ("model.moe.router.scaling=2.5", lambda m: m.router.scaling == 2.5),
    ("model.moe.router.weighting=sigmoid_raw", lambda m: m.router.weighting == "sigmoid_raw"),
    ("model.moe.router.norm_eps=1e-20", lambda m: m.router.norm_eps == 1e-20),
    ("model.moe.router.float32=true", lambda m: m.router.float32 is True),
    ("model.moe.router.top_groups=none", lambda m: m.router.top_groups is None),
    ("model.moe.experts.gated=true", lambda m: m.experts.gated),
    ("model.moe.shared_experts=1", lambda m: m.shared_width == m.experts.hidden),
])
def test_set_overrides_reach_the_new_fields(item, check):
    run = RunConfig(experiment="x")
    key, value = parse_override(item)
    assert check(apply_overrides(run, {key: value}).model.moe)


def test_set_overrides_of_groups_are_checked_together():
    run = RunConfig(experiment="x")
    run = apply_overrides(run, {"model.moe.num_experts": 8, "model.moe.router.groups": 4,
                                "model.moe.router.top_groups": 2, "model.moe.router.top_k": 2})
    assert (run.model.moe.router.groups, run.model.moe.router.top_groups) == (4, 2)
    with pytest.raises(ValueError, match="router.groups=3 must divide num_experts=8"):
        apply_overrides(run, {"model.moe.router.groups": 3, "model.moe.router.top_groups": 1})
    with pytest.raises(TypeError, match="model.moe.router.scaling must be float"):
        apply_overrides(run, {"model.moe.router.scaling": "big"})


@pytest.mark.parametrize("name", ["deepseek-v3", "qwen2-moe", "gpt-oss"])
def test_configs_round_trip_through_json(name):
    config = CONFIGS[name]
    assert from_json(to_json(config), MoEConfig) == config


@pytest.mark.parametrize("name", ["deepseek-v3", "qwen2-moe", "gpt-oss", "float32-router"])
def test_checkpoints_keep_the_options(name, tmp_path):
    layer = _layer(CONFIGS[name])
    if name == "float32-router":
        layer = layer.to(torch.bfloat16)
    save_checkpoint(layer, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config == layer.config
    for (k, a), (_, b) in zip(layer.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    x = torch.randn(9, D).to(layer.router.scorer.weight.dtype)
    assert torch.equal(layer.eval()(x), loaded(x))


@pytest.mark.parametrize(("name", "pattern"), [
    ("deepseek-v3", r"group-limited top-k \(groups=4, top_groups=2\)"),
    ("unweighted-scaled", r"scaling=3.0, which count_pieces does not trace"),
    ("qwen2-moe", r"shared is a gated shared expert"),
])
def test_piece_counting_rejects_what_it_does_not_trace(name, pattern):
    from moelab.analysis import count_pieces
    layer = _layer(CONFIGS[name]).eval()
    with pytest.raises(ValueError, match=pattern):
        count_pieces(layer, torch.zeros(D), torch.ones(D), routing_intervals_only=True)


def test_float32_router_keeps_its_selection_bias_at_least_float32():
    router = Router(D, 8, RouterConfig(balance_bias=True, float32=True))
    router.expert_bias.fill_(0.3 + 2**-20)
    assert router.to(torch.bfloat16).expert_bias.dtype == torch.float32
    assert router.expert_bias[0] == torch.tensor(0.3 + 2**-20, dtype=torch.float32)
    assert router.double().expert_bias.dtype == torch.float64
    assert router.half().expert_bias.dtype == torch.float64  # never narrowed below what it holds
    plain = Router(D, 8, RouterConfig(balance_bias=True))
    assert plain.to(torch.bfloat16).expert_bias.dtype == torch.bfloat16  # unchanged without float32
