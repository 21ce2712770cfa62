"""Router semantics: weightings, capacity and priority, expert choice, noise, aux-free balancing."""

import math

import pytest
import torch

from moelab.layers import MoEConfig, MoELayer, Router, RouterConfig


def _router(**kw):
    torch.manual_seed(0)
    E, generator = kw.pop("E", 4), kw.pop("generator", None)
    return Router(6, E, RouterConfig(**kw), generator=generator)


def test_paper_weighting_top1_is_hard_routing_without_router_gradient():
    r = _router(top_k=1, weighting="paper")
    x = torch.randn(20, 6)
    routing = r(x)
    assert torch.equal(routing.weights, torch.ones(20, 1))
    assert not routing.weights.requires_grad
    layer = MoELayer(6, 1, MoEConfig(num_experts=4, router=RouterConfig(weighting="paper")))
    layer(torch.randn(20, 6)).square().sum().backward()
    assert layer.router.scorer.weight.grad is None
    assert layer.experts.weights[0].grad is not None


def test_paper_weighting_is_softmax_over_selected_logits():
    r = _router(top_k=2, weighting="paper")
    routing = r(torch.randn(10, 6))
    sel = routing.logits.gather(1, routing.expert_ids)
    torch.testing.assert_close(routing.weights, sel.softmax(-1))
    assert torch.all(routing.logits.gather(1, routing.expert_ids[:, :1])
                     >= routing.logits.max(-1, keepdim=True).values)


def test_switch_weighting_is_full_softmax_probability_and_trains_the_router():
    r = _router(top_k=1, weighting="switch")
    routing = r(torch.randn(20, 6))
    expected = routing.logits.softmax(-1).max(-1, keepdim=True).values
    torch.testing.assert_close(routing.weights, expected)
    routing.weights.sum().backward()
    assert r.scorer.weight.grad.abs().sum() > 0


def test_sigmoid_weighting_normalises_selected_sigmoid_scores():
    r = _router(top_k=2, weighting="sigmoid")
    routing = r(torch.randn(10, 6))
    s = routing.logits.sigmoid().gather(1, routing.expert_ids)
    torch.testing.assert_close(routing.weights, s / s.sum(-1, keepdim=True))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(10))


def test_unweighted_gives_weight_one():
    routing = _router(top_k=3, weighting="unweighted")(torch.randn(9, 6))
    assert torch.equal(routing.weights, torch.ones(9, 3))
    assert all(len(set(row.tolist())) == 3 for row in routing.expert_ids)


def test_linear_router_without_bias_is_w_x():
    r = _router(bias=False)
    x = torch.randn(5, 6)
    assert r.scorer.bias is None
    torch.testing.assert_close(r(x).logits, x @ r.scorer.weight.t())


def test_mlp_router_scores_with_a_relu_network():
    r = _router(scorer="mlp", hidden=7, depth=3)
    lin = r.scorer.linears
    assert [m.out_features for m in lin] == [7, 7, 4]
    x = torch.randn(5, 6)
    h = torch.relu(lin[1](torch.relu(lin[0](x))))
    torch.testing.assert_close(r(x).logits, lin[2](h))


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("factor", [0.5, 1.0])
def test_capacity_bounds_tokens_per_expert_and_reports_drops(K, factor):
    r = _router(top_k=K, capacity_factor=factor, E=4)
    with torch.no_grad():
        r.scorer.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))  # overload expert 0
    routing = r(torch.randn(40, 6))
    cap = math.ceil(factor * 40 * K / 4)
    assert routing.tokens_per_expert.max() <= cap
    assert routing.tokens_per_expert.sum() == routing.kept.sum()
    expected_drop = 1 - routing.kept.float().mean()
    torch.testing.assert_close(routing.dropped_fraction, expected_drop)
    assert routing.dropped_fraction > 0
    assert torch.all(routing.weights[~routing.kept] == 0)


def test_position_priority_keeps_first_choices_then_earlier_tokens():
    r = _router(top_k=2, capacity_factor=0.25, E=2)  # capacity ceil(.25*8*2/2) = 2
    with torch.no_grad():
        r.scorer.weight.zero_()
        r.scorer.bias.copy_(torch.tensor([1.0, 0.0]))  # every token: expert 0 first, 1 second
    routing = r(torch.randn(8, 6))
    kept = routing.kept
    assert kept[:2].all() and not kept[2:].any()  # tokens 0 and 1 keep both slots


def test_score_priority_keeps_the_highest_weights():
    r = _router(top_k=1, capacity_factor=0.5, E=2, capacity_priority="score")
    with torch.no_grad():
        r.scorer.weight.zero_()
        r.scorer.weight[0, 0] = 1.0  # logit of expert 0 = x_0
        r.scorer.bias.zero_()
    x = torch.zeros(8, 6)
    x[:, 0] = torch.tensor([0.1, 0.2, 3.0, 0.3, 2.0, 0.4, 0.5, 0.6])  # all prefer expert 0
    routing = r(x)  # capacity ceil(.5 * 8 / 2) = 2
    assert routing.kept[:, 0].nonzero().flatten().tolist() == [2, 4]


def test_dropless_by_default():
    routing = _router(top_k=2)(torch.randn(100, 6))
    assert routing.kept.all() and routing.dropped_fraction == 0


def test_expert_choice_each_expert_takes_its_top_c_tokens():
    r = _router(routing="expert_choice", top_k=1, capacity_factor=1.5, E=4)
    x = torch.randn(16, 6)
    routing = r(x)
    cap = math.ceil(1.5 * 16 / 4)
    assert routing.expert_choice
    assert routing.tokens_per_expert.tolist() == [cap] * 4
    probs = routing.logits.softmax(-1)
    for e in range(4):
        chosen = routing.kept[:, e].nonzero().flatten()
        top = probs[:, e].topk(cap).indices
        assert set(chosen.tolist()) == set(top.tolist())
    torch.testing.assert_close(routing.weights, probs * routing.kept)
    untaken = (~routing.kept.any(-1)).float().mean()
    torch.testing.assert_close(routing.dropped_fraction, untaken)


def test_jitter_and_noise_only_in_training():
    for noise in ("jitter", "noisy_topk"):
        r = _router(noise=noise, jitter_eps=0.5, top_k=2)
        x = torch.randn(30, 6)
        r.eval()
        assert torch.equal(r(x).logits, r(x).logits)
        r.train()
        assert not torch.equal(r(x).logits, r(x).logits)


def test_noise_uses_the_given_generator():
    a = _router(noise="noisy_topk", top_k=2, generator=torch.Generator().manual_seed(3))
    b = _router(noise="noisy_topk", top_k=2, generator=torch.Generator().manual_seed(3))
    x = torch.randn(10, 6)
    assert torch.equal(a(x).logits, b(x).logits)


def test_noisy_topk_adds_scaled_gaussian_noise_and_reports_clean_logits():
    r = _router(noise="noisy_topk", top_k=2)
    routing = r(torch.randn(4000, 6))
    z = (routing.logits - routing.clean_logits) / routing.noise_std
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    torch.testing.assert_close(routing.noise_std, torch.full_like(routing.noise_std,
                                                                 math.log(2)))


def test_balance_bias_changes_selection_not_weights():
    r = _router(balance_bias=True, top_k=1, E=3)
    x = torch.randn(50, 6)
    before = r(x)
    with torch.no_grad():
        r.expert_bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    after = r(x)
    assert torch.all(after.expert_ids == 0)
    torch.testing.assert_close(after.weights[:, 0], after.probs[:, 0])
    torch.testing.assert_close(after.logits, before.logits)


def test_update_balance_bias_follows_deepseek_rule():
    r = _router(balance_bias=True, E=4)
    r.update_balance_bias(torch.tensor([10, 2, 4, 4]), rate=0.1)
    # mean load 5: overloaded expert 0 goes down, the others up
    torch.testing.assert_close(r.expert_bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))
    r.update_balance_bias(torch.tensor([5, 5, 5, 5]), rate=0.1)
    torch.testing.assert_close(r.expert_bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))


def test_balance_bias_evens_out_load_when_called_in_a_loop():
    r = _router(balance_bias=True, E=4)
    with torch.no_grad():
        r.scorer.bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0]))
    x = torch.randn(400, 6)
    start = r(x).tokens_per_expert.max().item()
    for _ in range(300):
        r.update_balance_bias(r(x).tokens_per_expert, rate=0.01)
    end = r(x).tokens_per_expert.max().item()
    assert end < start and end <= 400 / 4 * 1.3
