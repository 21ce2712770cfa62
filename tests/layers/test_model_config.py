"""DenseMLP and DeepMoE keep one frozen config each; a model is rebuilt from its config alone."""

import dataclasses
import pickle

import pytest
import torch

from moelab.layers import (
    DeepMoE,
    DeepMoEConfig,
    DenseMLP,
    DenseMLPConfig,
    ExpertConfig,
    MoEConfig,
    MoELayer,
    RouterConfig,
)
from moelab.typed_json import from_json, to_json

PER_LAYER = (MoEConfig(router=RouterConfig(top_k=2)),
             MoEConfig(num_experts=3, experts=ExpertConfig(hidden=5, depth=3, activation="tanh")),
             MoEConfig(shared_experts=1, check_finite=False))


def _same_parameters(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_dense_mlp_keeps_its_arguments_as_one_config():
    model = DenseMLP(3, 2, hidden=6, depth=3, activation="gelu", bias=False, check_finite=False)
    assert model.config == DenseMLPConfig(d_in=3, d_out=2, hidden=6, depth=3, activation="gelu",
                                          bias=False, check_finite=False)
    assert model.check_finite is False and model.d_in == 3 and model.hidden == 6


def test_deep_moe_keeps_widths_per_layer_configs_and_options_as_one_config():
    model = DeepMoE([3, 4, 4, 2], list(PER_LAYER), residual=True, moe_every=1)
    assert model.config == DeepMoEConfig(widths=(3, 4, 4, 2), moe=PER_LAYER, residual=True)
    assert model.config.layer_configs == PER_LAYER
    assert [layer.config for layer in model.layers] == list(PER_LAYER)
    assert model.widths == [3, 4, 4, 2] and model.residual and model.moe_every == 1
    single = DeepMoE([3, 4, 2], PER_LAYER[0], moe_every=2)
    assert single.config.moe is PER_LAYER[0] and single.config.layer_configs == PER_LAYER[:1] * 2
    assert DeepMoE([3, 2]).config.moe == MoEConfig()


@pytest.mark.parametrize("build", [
    lambda: DenseMLP(3, 2, hidden=6, depth=3, activation="gelu", bias=False),
    lambda: DeepMoE([3, 4, 4, 2], list(PER_LAYER), residual=True),
    lambda: DeepMoE([3, 5, 5, 5, 2], MoEConfig(experts=ExpertConfig(hidden=6)), moe_every=2),
])
def test_from_config_rebuilds_the_same_model_with_the_same_random_draws(build):
    torch.manual_seed(3)
    model = build()
    torch.manual_seed(3)
    again = type(model).from_config(model.config)
    assert again.config == model.config
    _same_parameters(model, again)  # parameters created in the same order from the same draws


@pytest.mark.parametrize("config", [
    DenseMLPConfig(d_in=3, d_out=2, hidden=6, activation="silu"),
    DeepMoEConfig(widths=(3, 4, 4, 2), moe=PER_LAYER, residual=True),
    DeepMoEConfig(widths=(3, 4, 2), moe=PER_LAYER[1], moe_every=2),
])
def test_model_configs_are_frozen_picklable_and_round_trip_through_typed_json(config):
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.residual = False
    assert pickle.loads(pickle.dumps(config)) == config
    assert from_json(to_json(config), type(config), "config") == config


@pytest.mark.parametrize(("build", "error", "pattern"), [
    (lambda: DeepMoEConfig(widths=(3, 0, 1)), ValueError, r"widths\[1\] must be >= 1, got 0"),
    (lambda: DeepMoEConfig(widths=(3,)), ValueError, "widths must list at least an input and"),
    (lambda: DeepMoEConfig(widths=3), TypeError, "widths must be a sequence of ints, got 3"),
    (lambda: DeepMoEConfig(widths=(3, 1), moe_every=0), ValueError, "moe_every must be >= 1"),
    (lambda: DeepMoEConfig(widths=(3, 4, 1), moe=PER_LAYER), ValueError,
     r"moe \(DeepMoE's config\) must be one MoEConfig or 2 of them \(one per layer\), got 3"),
    (lambda: DeepMoE([3, 1], "paper"), TypeError,
     r"moe \(DeepMoE's config\) must be a MoEConfig or a sequence of them, got str"),
    (lambda: DenseMLPConfig(d_in=3, d_out=1, hidden=4, depth=0), ValueError,
     "depth must be >= 1, got 0"),
    (lambda: DenseMLP(3, 1, hidden=4, activation="swish"), ValueError,
     "activation='swish' is unknown; expected one of"),
    (lambda: DenseMLPConfig(d_in=3, d_out=1), TypeError, "hidden"),
    (lambda: DeepMoE.from_config(DenseMLPConfig(d_in=3, d_out=1, hidden=4)), TypeError,
     "config must be a DeepMoEConfig, got DenseMLPConfig"),
    (lambda: DenseMLP.from_config(MoEConfig()), TypeError,
     "config must be a DenseMLPConfig, got MoEConfig"),
])
def test_model_configs_check_their_fields_once_at_construction(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


def test_the_dense_layers_of_an_alternating_stack_take_their_shape_from_their_layer_config():
    model = DeepMoE([3, 4, 2], [PER_LAYER[1], PER_LAYER[0]], moe_every=2)
    dense, moe = model.layers
    assert not isinstance(dense, MoELayer) and isinstance(moe, MoELayer)
    assert dense.depth == 3 and dense.hidden == 5 and dense.activation == "tanh"
    assert model.config.moe == (PER_LAYER[1], PER_LAYER[0])
