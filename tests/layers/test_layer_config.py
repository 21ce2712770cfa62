"""Nested layer configs: one frozen config per component, used as-is, the flat spelling deprecated."""

import dataclasses
import pickle

import pytest
import torch

from moelab.layers import LEGACY_NAMES, ExpertConfig, MoEConfig, MoELayer, RouterConfig


def test_the_layer_hands_each_component_its_part_of_the_config():
    config = MoEConfig(num_experts=5, router=RouterConfig(top_k=2, scorer="mlp", hidden=7),
                       experts=ExpertConfig(hidden=9, depth=3))
    layer = MoELayer(4, 2, config)
    assert layer.config is config
    assert layer.router.config is config.router and layer.experts.config is config.experts
    assert layer.router.scorer.linears[0].out_features == 7
    assert layer.experts.weight2.shape == (5, 9, 9)


def test_the_flat_spelling_warns_names_the_nested_one_and_builds_the_same_config():
    with pytest.warns(DeprecationWarning, match=r"expert_hidden -> experts.hidden"):
        flat = MoEConfig(num_experts=4, top_k=1, expert_hidden=10, router="mlp", router_bias=False)
    nested = MoEConfig(num_experts=4, router=RouterConfig(top_k=1, scorer="mlp", bias=False),
                       experts=ExpertConfig(hidden=10))
    assert flat == nested
    with pytest.warns(DeprecationWarning, match=r"read MoEConfig.experts.hidden"):
        assert nested.expert_hidden == 10
    with pytest.warns(DeprecationWarning):
        assert nested.replace(weighting="paper").router.weighting == "paper"
    torch.manual_seed(0)
    a = MoELayer(3, 1, flat)
    torch.manual_seed(0)
    b = MoELayer(3, 1, nested)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# Fields added after moelab 0.1: they have no flat spelling.
NESTED_ONLY = {("router", "norm_eps"), ("router", "scaling"), ("router", "groups"),
               ("router", "top_groups"), ("router", "float32"), ("experts", "gated_form"),
               ("experts", "clamp_limit"), ("experts", "glu_alpha"), ("experts", "bank"),
               ("experts", "options")}


def test_every_flat_name_has_a_nested_home():
    nested = {("router", f.name) for f in dataclasses.fields(RouterConfig)}
    nested |= {("experts", f.name) for f in dataclasses.fields(ExpertConfig)}
    assert set(LEGACY_NAMES.values()) == nested - NESTED_ONLY


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (lambda: RouterConfig(top_k=0), ValueError, r"router.top_k must be >= 1, got 0"),
        (lambda: RouterConfig(weighting="softmax"), ValueError,
         r"router.weighting='softmax' is unknown; expected one of \['paper', 'switch'"),
        (lambda: ExpertConfig(hidden=0), ValueError, r"experts.hidden must be >= 1, got 0"),
        (lambda: ExpertConfig(gated=True, depth=3), ValueError, r"gated experts have experts.depth=2"),
        (lambda: MoEConfig(num_experts=2, router=RouterConfig(top_k=3)), ValueError,
         r"top_k=3 must be <= num_experts=2"),
        (lambda: MoEConfig(router={"top_k": 2}), TypeError, r"router must be a RouterConfig, got dict"),
        (lambda: MoEConfig(expert_width=3), TypeError,
         r"unexpected keyword argument\(s\) \['expert_width'\]"),
    ],
)
def test_each_config_checks_its_fields_once_at_construction(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


def test_configs_are_frozen_keyword_only_and_picklable():
    config = MoEConfig(router=RouterConfig(top_k=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_experts = 3
    with pytest.raises(TypeError):
        RouterConfig(2)
    assert pickle.loads(pickle.dumps(config)) == config


def test_the_function_choices_are_the_tables_the_experts_run():
    """One list of activations and one of gated units: the config's choice types are built from
    the tables the experts use, so every name the config accepts runs, and every entry of the
    tables can be chosen."""
    from moelab.layers import ACTIVATIONS, ExpertConfig, gated_unit, get_activation
    from moelab.layers.activations import GATED_UNITS
    from moelab.layers.config import Activation, GatedForm, choices

    assert choices(Activation) == tuple(ACTIVATIONS)
    assert choices(GatedForm) == tuple(GATED_UNITS)
    for name in ACTIVATIONS:
        assert ExpertConfig(activation=name).activation == name
        assert callable(get_activation(name))
    g, v = torch.linspace(-9, 9, 7), torch.linspace(9, -9, 7)
    for form in GATED_UNITS:
        config = ExpertConfig(gated=True, activation="silu", gated_form=form, clamp_limit=3.0)
        assert torch.equal(gated_unit(g, v, config), GATED_UNITS[form](g, v, config))
    assert torch.equal(gated_unit(g, v, ExpertConfig(gated=True, activation="silu")),
                       torch.nn.functional.silu(g) * v)
