"""Save -> load is bit-exact for every model class and keeps outputs and routing identical."""

import copy
import json

import pytest
import safetensors.torch
import torch

from moelab.checkpoints import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    load_checkpoint,
    load_into,
    load_state,
    read_config,
    save_checkpoint,
)
from moelab.checkpoints.config import describe, description_json
from moelab.layers import DeepMoE, DenseMLP, ExpertConfig, MoEConfig, MoELayer, RouterConfig
from moelab.typed_json import to_json


def _with_expert_bias(model):
    """Give every balance-bias router a non-zero bias large enough to change the routing."""
    for m in model.modules():
        if getattr(m, "expert_bias", None) is not None:
            m.expert_bias.copy_(torch.linspace(-2.0, 2.0, m.expert_bias.numel()))
    return model


MODELS = {
    "top2": lambda: MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2))),
    "gated": lambda: MoELayer(
        3, 2, MoEConfig(experts=ExpertConfig(gated=True, activation="silu", bias=False))),
    "lowdim-decoder": lambda: MoELayer(
        5, 2, MoEConfig(experts=ExpertConfig(latent_dim=2, latent_decoder=True))),
    "mlp-router": lambda: MoELayer(3, 2, MoEConfig(router=RouterConfig(scorer="mlp", hidden=8, depth=3))),
    "balance-bias": lambda: _with_expert_bias(
        MoELayer(3, 2, MoEConfig(num_experts=5,
                                 router=RouterConfig(balance_bias=True, weighting="sigmoid")))),
    "shared-experts": lambda: MoELayer(
        3, 2, MoEConfig(experts=ExpertConfig(hidden=4), shared_experts=2)),
    "noisy-topk-capacity": lambda: MoELayer(3, 2, MoEConfig(router=RouterConfig(
        noise="noisy_topk", top_k=2, capacity_factor=1.25, bias=False))),
    "expert-choice": lambda: MoELayer(
        3, 2, MoEConfig(router=RouterConfig(routing="expert_choice", weighting="paper"))),
    "float64": lambda: MoELayer(3, 2, MoEConfig(router=RouterConfig(top_k=2))).double(),
    "deep-residual": lambda: DeepMoE([4, 4, 4, 2], MoEConfig(router=RouterConfig(top_k=2)),
                                     residual=True),
    "deep-moe-every-2": lambda: DeepMoE([3, 5, 5, 5, 2], MoEConfig(experts=ExpertConfig(hidden=6)),
                                        moe_every=2),
    "deep-per-layer": lambda: _with_expert_bias(DeepMoE(
        [3, 4, 4, 2],
        [MoEConfig(router=RouterConfig(scorer="mlp", hidden=6)),
         MoEConfig(router=RouterConfig(top_k=2), shared_experts=1),
         MoEConfig(num_experts=3, router=RouterConfig(balance_bias=True), check_finite=False)],
        residual=True)),
    "deep-per-layer-dense": lambda: DeepMoE(
        [3, 4, 2], [MoEConfig(experts=ExpertConfig(hidden=7, depth=3, activation="tanh")),
                    MoEConfig(experts=ExpertConfig(gated=True, activation="silu"))], moe_every=2),
    "dense": lambda: DenseMLP(3, 2, hidden=8, depth=3, activation="gelu", bias=False),
    "dense-default": lambda: DenseMLP(4, 1, hidden=5, check_finite=False),
}


def _assert_same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


def _routings(model, x):
    if isinstance(model, MoELayer):
        out = model.run(x)
        return out.y, [out.routing]
    out = model.run(x)
    return out.y, [layer.routing for layer in out.layers]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_bit_exact_with_identical_outputs_and_routing(tmp_path, name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    dtype = next(model.parameters()).dtype
    x = torch.randn(32, model.d_in, generator=torch.Generator().manual_seed(1), dtype=dtype)

    save_checkpoint(model, tmp_path / name)
    loaded = load_checkpoint(tmp_path / name)

    assert type(loaded) is type(model)
    assert not loaded.training
    assert description_json(describe(loaded)[1]) == description_json(describe(model)[1])
    _assert_same_tensors(model, loaded)
    with torch.no_grad():
        y, routings = _routings(model, x)
        y2, routings2 = _routings(loaded, x)
    assert torch.equal(y, y2)
    assert len(routings) == len(routings2)
    for r, r2 in zip(routings, routings2, strict=True):
        assert torch.equal(r.expert_ids, r2.expert_ids)
        assert torch.equal(r.kept, r2.kept)
        assert torch.equal(r.weights, r2.weights)


def test_expert_bias_is_saved_and_changes_the_reloaded_routing(tmp_path):
    torch.manual_seed(0)
    model = MODELS["balance-bias"]().eval()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "ckpt"))
    assert torch.equal(loaded.router.expert_bias, torch.linspace(-2.0, 2.0, 5))
    unbiased = load_checkpoint(tmp_path / "ckpt")
    unbiased.router.expert_bias.zero_()
    with torch.no_grad():
        ids = loaded.run(x).routing.expert_ids
        assert torch.equal(ids, model.run(x).routing.expert_ids)
        assert not torch.equal(ids, unbiased.run(x).routing.expert_ids)  # the bias matters here


def test_directory_holds_exactly_the_two_files_and_a_readable_config(saved, small_layer):
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    raw = json.loads((saved / CONFIG_NAME).read_text())
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["model"]["class"] == "MoELayer"
    assert raw["model"]["arguments"]["config"]["router"]["top_k"] == 2
    config = read_config(saved)
    assert config.metadata == {"step": 7}
    assert config.moelab_version == __import__("moelab").__version__
    assert list(config.tensors) == list(small_layer.state_dict())
    # Plain safetensors: any safetensors reader sees the same tensors.
    plain = safetensors.torch.load_file(saved / WEIGHTS_NAME)
    assert set(plain) == set(small_layer.state_dict())


def test_deep_model_with_one_config_stores_it_once(tmp_path):
    model = DeepMoE([3, 4, 2], MoEConfig(router=RouterConfig(top_k=2)), residual=True)
    directory = save_checkpoint(model, tmp_path / "ckpt")
    config = read_config(directory)
    assert config.model_config == model.config and config.arguments == {}
    assert isinstance(config.model_config.moe, MoEConfig)
    assert config.model_config.moe.router.top_k == 2
    raw = json.loads((directory / CONFIG_NAME).read_text())["model"]
    assert sorted(raw) == ["class", "config"] and raw["class"] == "DeepMoE"
    assert raw["config"]["widths"] == [3, 4, 2] and raw["config"]["residual"] is True


@pytest.mark.parametrize("name", ["deep-moe-every-2", "deep-per-layer", "dense", "dense-default"])
def test_models_with_a_config_are_stored_by_it_and_rebuilt_from_it_alone(tmp_path, name):
    torch.manual_seed(0)
    model = MODELS[name]()
    directory = save_checkpoint(model, tmp_path / name)
    raw = json.loads((directory / CONFIG_NAME).read_text())["model"]
    assert raw == {"class": type(model).__name__, "config": to_json(model.config)}
    config = read_config(directory)
    assert config.model_config == model.config
    assert type(model).from_config(config.model_config).config == model.config


def test_saving_again_replaces_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    first, second = MoELayer(3, 2), MoELayer(4, 1, MoEConfig(num_experts=2))
    save_checkpoint(first, tmp_path / "ckpt")
    save_checkpoint(second, tmp_path / "ckpt", metadata={"v": 2})
    _assert_same_tensors(second, load_checkpoint(tmp_path / "ckpt"))
    assert read_config(tmp_path / "ckpt").metadata == {"v": 2}
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_loaded_model_trains_and_loading_leaves_the_global_rng_alone(saved):
    rng = torch.get_rng_state()
    model = load_checkpoint(saved)
    assert torch.equal(rng, torch.get_rng_state())  # rebuilt without random initialisation
    assert all(p.requires_grad for p in model.parameters())
    before = model.experts.weights[0].detach().clone()
    model.train()(torch.randn(8, 3)).square().sum().backward()
    with torch.no_grad():  # an SGD step, in place on the loaded storage
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert not torch.equal(before, model.experts.weights[0])
    assert torch.equal(before, load_checkpoint(saved).experts.weights[0])  # file unaffected


# -- explicit (full) state dicts, load_state, load_into --------------------------------------------

def test_explicit_state_dict_is_what_gets_saved(tmp_path):
    torch.manual_seed(0)
    config = MoEConfig(router=RouterConfig(top_k=2))
    model, other = MoELayer(3, 2, config), MoELayer(3, 2, config)
    save_checkpoint(model, tmp_path / "ckpt", state_dict=other.state_dict())
    _assert_same_tensors(other, load_checkpoint(tmp_path / "ckpt"))


def test_state_dict_of_views_into_one_buffer_saves(tmp_path):
    """A full state dict gathered into one flat buffer (views sharing storage) still saves."""
    model = MoELayer(3, 2, MoEConfig(router=RouterConfig(top_k=2, balance_bias=True)))
    state = model.state_dict()
    flat = torch.cat([t.flatten() for t in state.values()])
    views, offset = {}, 0
    for name, t in state.items():
        views[name] = flat[offset:offset + t.numel()].view(t.shape)
        offset += t.numel()
    views["experts.weight1"] = views["experts.weight1"].transpose(1, 2).contiguous().transpose(1, 2)
    save_checkpoint(model, tmp_path / "ckpt", state_dict=views)
    _assert_same_tensors(model, load_checkpoint(tmp_path / "ckpt"))


def test_a_sharded_state_dict_is_refused_before_anything_is_written(tmp_path):
    model = MoELayer(3, 2, MoEConfig(num_experts=4))
    shard = {k: (v[:2] if k.startswith("experts.") else v) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'experts\.weight1' has shape \(2, 3, 16\), "
                                         r"expected \(4, 3, 16\)"):
        save_checkpoint(model, tmp_path / "ckpt", state_dict=shard)
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(ValueError, match="'router.scorer.bias' is missing"):
        save_checkpoint(model, tmp_path / "ckpt",
                        state_dict={k: v for k, v in model.state_dict().items() if k != "router.scorer.bias"})
    with pytest.raises(TypeError, match=r"state_dict\['x'\] must be a tensor"):
        save_checkpoint(model, tmp_path / "ckpt", state_dict={**model.state_dict(), "x": 1})


class _ShardedLayer(MoELayer):
    """Stands in for the expert-parallel layer: an MoELayer subclass holding experts 0..1 of 4."""

    @classmethod
    def from_layer(cls, layer: MoELayer) -> "_ShardedLayer":
        shard = copy.deepcopy(layer)
        shard.__class__ = cls
        for name, p in list(shard.experts.named_parameters()):
            setattr(shard.experts, name, torch.nn.Parameter(p.detach()[:2].clone()))
        return shard


def test_sharded_layer_saved_from_its_full_state_loads_as_a_single_process_layer(tmp_path):
    torch.manual_seed(0)
    full = MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2)))
    shard = _ShardedLayer.from_layer(full)
    with pytest.raises(ValueError, match=r"model\.state_dict\(\) does not match a MoELayer .* "
                                         r"'experts\.weight1' has shape \(2, 3, 16\), expected "
                                         r"\(4, 3, 16\); an expert-parallel model saves its full"):
        save_checkpoint(shard, tmp_path / "ckpt")
    save_checkpoint(shard, tmp_path / "ckpt", state_dict=full.state_dict())
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is MoELayer
    _assert_same_tensors(full, loaded)
    # ... and a rank takes its slice from load_state:
    _, state = load_state(tmp_path / "ckpt")
    local = {k: v[:2] if k.startswith("experts.") else v for k, v in state.items()}
    fresh = _ShardedLayer.from_layer(MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2))))
    fresh.load_state_dict(local)
    _assert_same_tensors(shard, fresh)


def test_load_state_gives_the_config_and_full_state_for_slicing(saved, small_layer):
    config, state = load_state(saved)
    assert config.model_class == "MoELayer" and config.arguments["d_in"] == 3
    assert list(state) == list(small_layer.state_dict())
    # What an expert-parallel rank holding experts 2..3 would take:
    local = {k: v[2:4] if k.startswith("experts.") else v for k, v in state.items()}
    assert torch.equal(local["experts.weight2"], small_layer.experts.weights[1][2:4])
    fresh = config.build()
    fresh.load_state_dict(state)
    _assert_same_tensors(small_layer, fresh)


def test_load_into_copies_in_place_and_returns_the_config(saved, small_layer):
    torch.manual_seed(5)
    target = MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2),
                                      experts=ExpertConfig(hidden=8)))
    weight = target.experts.weights[0]
    config = load_into(target, saved)
    assert config.metadata == {"step": 7}
    assert target.experts.weights[0] is weight  # same parameter object, new values
    _assert_same_tensors(small_layer, target)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda: MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=1),
                                          experts=ExpertConfig(hidden=8))),
         r"arguments\.config\.router\.top_k: checkpoint 2, model 1"),
        (lambda: MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2),
                                          experts=ExpertConfig(hidden=8))).double(),
         r"tensor 'router\.scorer\.weight' has dtype float32, expected float64"),
        (lambda: DenseMLP(3, 2, hidden=8), "holds a MoELayer, the model is a DenseMLP"),
    ],
)
def test_load_into_a_different_model_fails_and_leaves_it_unchanged(saved, target, message):
    model = target()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        load_into(model, saved)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_arguments_to_save(tmp_path, small_layer):
    with pytest.raises(TypeError, match="model must be one of .* got Linear"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "a")
    with pytest.raises(ValueError, match="metadata must be JSON-serialisable"):
        save_checkpoint(small_layer, tmp_path / "b", metadata={"loss": float("nan")})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        save_checkpoint(small_layer, tmp_path / "c", metadata=[1])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        save_checkpoint(small_layer, tmp_path / "file")
    assert not any((tmp_path / d).exists() for d in "abc")
