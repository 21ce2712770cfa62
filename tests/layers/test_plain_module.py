"""MoE models behave like ordinary PyTorch modules: no hidden state, copyable, picklable, compilable,
and inputs of the wrong dtype or device get a moelab error."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from moelab.layers import (
    DeepMoE,
    ExpertConfig,
    Experts,
    MoEConfig,
    MoELayer,
    RouterConfig,
    collect_aux_losses,
    record_routing,
)


def _models():
    torch.manual_seed(0)
    config = MoEConfig(num_experts=3, router=RouterConfig(top_k=2), experts=ExpertConfig(hidden=6))
    layer = MoELayer(4, 4, config)
    return {
        "layer": layer,
        "deep": DeepMoE([4, 5, 2], config),
        "sequential": nn.Sequential(nn.Linear(3, 4), MoELayer(4, 4, config), nn.ReLU(),
                                    MoELayer(4, 2, config)),
    }


@pytest.mark.parametrize("name", ["layer", "deep", "sequential"])
def test_copy_average_pickle_and_save_after_a_forward_pass_with_gradients(name):
    model = _models()[name]
    x = torch.randn(8, 4 if name != "sequential" else 3)
    model(x).square().mean().backward()  # the graph of this step must not stay on the model
    clone = copy.deepcopy(model)
    averaged = AveragedModel(model)
    averaged.update_parameters(model)
    restored = pickle.loads(pickle.dumps(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        y = model(x)
        for other in (clone, averaged, restored, loaded):
            torch.testing.assert_close(other(x), y, rtol=0, atol=0)


def test_record_routing_sees_every_moe_layer_inside_any_module_in_call_order():
    net = _models()["sequential"]
    x = torch.randn(10, 3)
    with record_routing(net) as rec:
        net(x)
    assert rec.layers == [net[1], net[3]]
    assert [r.expert_ids.shape for r in rec.routings] == [(10, 2), (10, 2)]
    # Detached by default: nothing holds the step's graph.
    assert not rec.outputs[0].y.requires_grad and not rec.routings[1].weights.requires_grad
    assert not rec.aux_losses["load_balance"].requires_grad
    net(x)  # outside the block nothing is recorded
    assert len(rec.outputs) == 2


def test_record_routing_without_detach_trains_on_the_aux_losses():
    net = _models()["sequential"]
    with record_routing(net, detach=False) as rec:
        y = net(torch.randn(10, 3))
    (y.square().mean() + rec.aux_losses["load_balance"]).backward()
    assert net[1].router.scorer.weight.grad is not None
    separate = sum(out.aux_losses["load_balance"] for out in rec.outputs)
    torch.testing.assert_close(rec.aux_losses["load_balance"], separate)


def test_collect_aux_losses_names_its_replacement():
    with pytest.raises(RuntimeError, match="record_routing"):
        collect_aux_losses(_models()["layer"])


def test_deep_run_takes_a_dispatch_mode_like_the_layer():
    model = _models()["deep"]
    x = torch.randn(30, 4)
    reference = model.run(x, dispatch_mode="reference")
    for mode in ("grouped", "dense", "auto"):
        out = model.run(x, dispatch_mode=mode)
        torch.testing.assert_close(out.y, reference.y)
        assert all(torch.equal(a.expert_ids, b.expert_ids)
                   for a, b in zip(out.routings, reference.routings, strict=True))
    with pytest.raises(ValueError, match=r"dispatch='fast' is unknown"):
        model.run(x, dispatch_mode="fast")


@pytest.mark.parametrize("name", ["layer", "deep"])
def test_input_of_another_dtype_or_device_gets_a_moelab_error(name):
    model = _models()[name]
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but .*parameters are torch.float32"):
        model(torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x is on device meta but .*parameters are on cpu"):
        model(torch.randn(5, 4, device="meta"))


@pytest.mark.parametrize("mode", ["dense", "grouped"])
def test_compile_fullgraph_matches_eager_in_outputs_and_gradients(mode):
    torch.manual_seed(1)
    config = MoEConfig(num_experts=4, router=RouterConfig(top_k=2), experts=ExpertConfig(hidden=16),
                       dispatch=mode)  # check_finite stays on: it must not break the graph
    layer = MoELayer(8, 8, config)
    compiled_layer = copy.deepcopy(layer)
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(32, 8)
    x_eager, x_comp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_eager, y_comp = layer(x_eager), compiled(x_comp)
    torch.testing.assert_close(y_comp, y_eager)
    g = torch.randn_like(y_eager)
    y_eager.backward(g)
    y_comp.backward(g)
    torch.testing.assert_close(x_comp.grad, x_eager.grad)
    for (name, p), q in zip(layer.named_parameters(), compiled_layer.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_expert_weights_are_named_parameters_with_documented_shapes():
    plain = Experts(5, 3, 2, ExpertConfig(hidden=7, depth=3))
    shapes = {n: tuple(p.shape) for n, p in plain.named_parameters()}
    assert shapes == {"weight1": (5, 3, 7), "weight2": (5, 7, 7), "weight3": (5, 7, 2),
                      "bias1": (5, 7), "bias2": (5, 7), "bias3": (5, 2)}
    gated = Experts(5, 3, 2, ExpertConfig(hidden=7, gated=True, activation="silu", bias=False))
    shapes = {n: tuple(p.shape) for n, p in gated.named_parameters()}
    assert shapes == {"weight_gate": (5, 3, 7), "weight_down": (5, 7, 2), "weight_value": (5, 3, 7)}
    # The gated expert by hand: down(silu(gate x) * value x) for expert 4.
    x = torch.randn(6, 3)
    h = torch.nn.functional.silu(x @ gated.weight_gate[4]) * (x @ gated.weight_value[4])
    torch.testing.assert_close(gated.forward_all(x).y[4], h @ gated.weight_down[4])


def test_state_dicts_with_the_old_expert_names_still_load():
    torch.manual_seed(2)
    gated = MoELayer(3, 2, MoEConfig(experts=ExpertConfig(gated=True, activation="silu")))
    old = {}
    for name, tensor in gated.state_dict().items():
        for k, part in enumerate(("_gate", "_down", "_value")):
            name = name.replace(f"experts.weight{part}", f"experts.weights.{k}")
            name = name.replace(f"experts.bias{part}", f"experts.biases.{k}")
        old[name] = tensor.clone() + 1
    assert "experts.weights.2" in old  # the value branch was index 2
    fresh = MoELayer(3, 2, MoEConfig(experts=ExpertConfig(gated=True, activation="silu")))
    fresh.load_state_dict(old)
    assert torch.equal(fresh.experts.weight_value, gated.experts.weight_value + 1)
