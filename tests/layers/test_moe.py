"""The MoE layer as a module, its outputs and losses; deep stacks; the dense baseline; counts."""

import pytest
import torch
from torch import nn

from moelab import losses
from moelab.analysis import count_parameters
from moelab.layers import DeepMoE, DenseMLP, ExpertConfig, MoEConfig, MoELayer, RouterConfig, record_routing


def test_accepts_any_leading_shape_and_maps_d_in_to_d_out():
    layer = MoELayer(5, 3, MoEConfig(num_experts=3))
    for shape in [(5,), (7, 5), (2, 4, 5), (1, 2, 3, 5)]:
        y = layer(torch.randn(*shape))
        assert y.shape == shape[:-1] + (3,)
    flat = torch.randn(6, 5)
    torch.testing.assert_close(layer(flat.view(2, 3, 5)).view(6, 3), layer(flat))


def test_works_inside_nn_sequential_and_records_its_routing():
    torch.manual_seed(0)
    moe = MoELayer(4, 4, MoEConfig(num_experts=2))
    net = nn.Sequential(nn.Linear(3, 4), moe, nn.ReLU(), nn.Linear(4, 1))
    x = torch.randn(10, 3)
    with record_routing(net, detach=False) as rec:
        y = net(x)
    assert y.shape == (10, 1)
    (out,) = rec.outputs
    assert out.routing.expert_ids.shape == (10, 1)
    assert out.routing.tokens_per_expert.sum() == 10
    aux = rec.aux_losses
    assert set(aux) == {"z_loss", "load_balance"}
    (y.square().mean() + aux["load_balance"]).backward()
    assert moe.router.scorer.weight.grad is not None


def test_run_reports_routing_and_aux_losses_that_match_the_pure_functions():
    torch.manual_seed(1)
    layer = MoELayer(6, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2)))
    out = layer.run(torch.randn(3, 5, 6))
    r = out.routing
    assert r.expert_ids.shape == (15, 2) and r.logits.shape == (15, 4)
    torch.testing.assert_close(out.aux_losses["z_loss"], losses.router_z_loss(r.logits))
    torch.testing.assert_close(
        out.aux_losses["load_balance"],
        losses.load_balancing_loss(r.probs, r.expert_ids, 4),
    )


def test_noisy_topk_layer_reports_importance_and_load_losses():
    layer = MoELayer(6, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2, noise="noisy_topk")))
    aux = layer.run(torch.randn(20, 6)).aux_losses
    assert {"importance", "load"} <= set(aux)
    assert all(torch.isfinite(v) for v in aux.values())


def test_shared_expert_is_added_to_every_token():
    torch.manual_seed(2)
    layer = MoELayer(4, 3, MoEConfig(num_experts=3, experts=ExpertConfig(hidden=5), shared_experts=1))
    x = torch.randn(8, 4)
    with_shared = layer(x)
    routed = with_shared - layer.shared(x)
    shared = layer.shared
    layer.shared = None
    torch.testing.assert_close(layer(x), routed)
    assert shared.linears[0].out_features == 5


def test_low_dim_experts_report_their_reconstruction_loss():
    torch.manual_seed(3)
    cfg = MoEConfig(num_experts=2, router=RouterConfig(top_k=1),
                    experts=ExpertConfig(latent_dim=2, latent_decoder=True, hidden=4))
    layer = MoELayer(8, 1, cfg)
    x = torch.randn(12, 8)
    out = layer.run(x)
    ex = layer.experts
    ids = out.routing.expert_ids[:, 0]
    errs = []
    for t in range(12):
        e = ids[t]
        z = x[t] @ ex.encoder.weights[0][e] + ex.encoder.biases[0][e]
        xhat = z @ ex.decoder.weights[0][e] + ex.decoder.biases[0][e]
        errs.append((xhat - x[t]).square().sum())
    torch.testing.assert_close(out.aux_losses["reconstruction"], torch.stack(errs).mean())
    assert ex.encoder.weights[0].shape == (2, 8, 2)


def test_empty_batch_gives_empty_output():
    layer = MoELayer(4, 2, MoEConfig(num_experts=3, router=RouterConfig(top_k=2)))
    for mode in ("dense", "grouped"):
        out = layer.run(torch.randn(0, 4), dispatch_mode=mode)
        assert out.y.shape == (0, 2)
        assert out.routing.tokens_per_expert.tolist() == [0, 0, 0]


def test_deep_moe_plain_composition_is_eq1():
    torch.manual_seed(4)
    m = DeepMoE([3, 6, 6, 2], MoEConfig(num_experts=2))
    assert [type(layer) for layer in m.layers] == [MoELayer] * 3
    x = torch.randn(9, 3)
    h = x
    for layer in m.layers:
        h = layer(h)
    torch.testing.assert_close(m(x), h)
    out = m.run(x)
    assert len(out.layers) == 3 and len(out.routings) == 3
    torch.testing.assert_close(
        out.aux_losses["z_loss"], sum(o.aux_losses["z_loss"] for o in out.layers)
    )


def test_deep_moe_residual_only_where_widths_match():
    torch.manual_seed(5)
    m = DeepMoE([3, 6, 6, 2], MoEConfig(num_experts=2), residual=True)
    x = torch.randn(4, 3)
    h1 = m.layers[0](x)
    h2 = h1 + m.layers[1](h1)
    torch.testing.assert_close(m(x), m.layers[2](h2))


def test_deep_moe_alternating_dense_and_per_layer_configs():
    cfgs = [MoEConfig(num_experts=2), MoEConfig(num_experts=3, router=RouterConfig(scorer="mlp")),
            MoEConfig(num_experts=2), MoEConfig(num_experts=4, shared_experts=1)]
    m = DeepMoE([2, 4, 4, 4, 1], cfgs, moe_every=2)
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds == ["MLP", "MoELayer", "MLP", "MoELayer"]
    assert m.layers[1].router.scorer_kind == "mlp" and m.layers[3].shared is not None
    assert m(torch.randn(5, 2)).shape == (5, 1)


def test_deep_moe_rejects_wrong_number_of_configs():
    with pytest.raises(ValueError, match="one per layer"):
        DeepMoE([2, 3, 1], [MoEConfig()] * 3)


def test_dense_mlp_has_the_model_interface():
    m = DenseMLP(3, 2, hidden=8, depth=3)
    out = m.run(torch.randn(4, 3))
    assert out.y.shape == (4, 2) and out.aux_losses == {} and out.layers == ()
    assert len(m.linears) == 3


def test_count_parameters_by_hand():
    # d_in 4, d_out 2, E 3, K 1, hidden 5: experts 3*(4*5+5+5*2+2) = 111, router 4*3+3 = 15
    layer = MoELayer(4, 2, MoEConfig(num_experts=3, experts=ExpertConfig(hidden=5)))
    c = count_parameters(layer)
    assert c.total == 126
    assert c.active == pytest.approx(15 + 111 / 3)
    dense = DenseMLP(4, 2, hidden=5)
    c = count_parameters(dense)
    assert c.total == c.active == 4 * 5 + 5 + 5 * 2 + 2
    stack = DeepMoE([4, 4, 2], MoEConfig(num_experts=4, router=RouterConfig(top_k=2),
                                         experts=ExpertConfig(hidden=5)), moe_every=2)
    c = count_parameters(stack)
    mlp = 4 * 5 + 5 + 5 * 4 + 4
    experts = 4 * (4 * 5 + 5 + 5 * 2 + 2)
    assert c.total == mlp + experts + 4 * 4 + 4
    assert c.active == pytest.approx(mlp + experts / 2 + 20)


def test_count_parameters_expert_choice_uses_capacity_factor():
    cfg = MoEConfig(num_experts=4, router=RouterConfig(routing="expert_choice", capacity_factor=2.0),
                    experts=ExpertConfig(hidden=5))
    c = count_parameters(MoELayer(4, 2, cfg))
    experts = 4 * (4 * 5 + 5 + 5 * 2 + 2)
    assert c.active == pytest.approx(c.total - experts + experts * 2 / 4)


def test_config_replace_and_keyword_only():
    cfg = MoEConfig(num_experts=4)
    assert cfg.replace(router=RouterConfig(top_k=2)).router.top_k == 2 and cfg.router.top_k == 1
    with pytest.raises(TypeError):
        MoEConfig(4)  # keyword-only
