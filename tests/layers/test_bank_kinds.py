"""Expert bank kinds: a new kind is one class registered in the experts module (here, in this test
file only); a config names it, and the layers, the typed-JSON parser, ``--set`` overrides and
checkpoints take it with no other change."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from moelab._validation import positive_float, positive_int
from moelab.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from moelab.experiments.config import RunConfig, apply_overrides, parse_override
from moelab.experiments.execute import batch_key
from moelab.experiments.registry import table4
from moelab.layers import (
    DeepMoE,
    DeepMoEConfig,
    ExpertBank,
    ExpertConfig,
    Experts,
    LowDimExperts,
    MoEConfig,
    MoELayer,
    RouterConfig,
)
from moelab.layers.experts import (
    BANKS,
    ExpertResult,
    bank_options,
    batched_linear,
    grouped_linear,
    register_bank,
)
from moelab.training import TrainConfig
from moelab.training.batched import alone_reason, layer_alone_reason
from moelab.typed_json import build, to_json


@register_bank("lowrank")
class LowRankExperts(nn.Module):
    """E linear experts of rank r: expert e maps x to (x @ down[e]) @ up[e] + bias[e], with
    down (E, I, r), up (E, r, O) and bias (E, O); ``scale`` multiplies the initial ``up``."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options:
        rank: int = 2
        scale: float = 1.0

        def __post_init__(self) -> None:
            positive_int("experts.options.rank", self.rank)
            positive_float("experts.options.scale", self.scale)

    def __init__(self, num_experts: int, d_in: int, d_out: int, config: ExpertConfig) -> None:
        super().__init__()
        if config.gated:
            raise ValueError("the 'lowrank' bank has no gated form, got experts.gated=True")
        options = bank_options(config)
        self.num_experts, self.d_in, self.d_out, self.config = num_experts, d_in, d_out, config
        r = options.rank
        self.down = nn.Parameter(torch.randn(num_experts, d_in, r) / math.sqrt(d_in))
        self.up = nn.Parameter(torch.randn(num_experts, r, d_out) * options.scale / math.sqrt(r))
        self.bias = nn.Parameter(torch.zeros(num_experts, d_out)) if config.bias else None
        self.macs_per_token = r * (d_in + d_out)

    def forward_all(self, x_TI: Tensor) -> ExpertResult:
        return ExpertResult(batched_linear(batched_linear(x_TI, self.down, None), self.up, self.bias))

    def forward_grouped(self, x_NI: Tensor, counts_E: Tensor) -> ExpertResult:
        offsets_E = counts_E.cumsum(0).to(torch.int32)
        h_Nr = grouped_linear(x_NI, self.down, None, counts_E, offsets_E)
        return ExpertResult(grouped_linear(h_Nr, self.up, self.bias, counts_E, offsets_E))

    def forward_mixed(self, x_TI: Tensor, w_TE: Tensor) -> None:
        return None


def _lowrank(**options) -> MoEConfig:
    return MoEConfig(num_experts=3, experts=ExpertConfig(bank="lowrank", options=options),
                     check_finite=False)


def test_the_builtin_kinds_and_the_default_rule():
    assert BANKS["ffn"] is Experts and BANKS["lowdim"] is LowDimExperts
    assert ExpertConfig().kind == "ffn" and ExpertConfig(latent_dim=2).kind == "lowdim"
    # The rule's own answer, spelled out, is the same config (and so the same run id).
    assert ExpertConfig(bank="ffn") == ExpertConfig() and ExpertConfig(bank="ffn").bank is None
    assert ExpertConfig(bank="lowdim", latent_dim=2) == ExpertConfig(latent_dim=2)
    torch.manual_seed(0)
    a = MoELayer(4, 2, MoEConfig(experts=ExpertConfig(bank="lowdim", latent_dim=2)))
    torch.manual_seed(0)
    b = MoELayer(4, 2, MoEConfig(experts=ExpertConfig(latent_dim=2)))
    assert isinstance(a.experts, LowDimExperts)
    x = torch.randn(6, 4)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("mode", ["reference", "dense", "grouped"])
def test_a_registered_kind_builds_a_layer_that_trains(mode):
    torch.manual_seed(0)
    layer = MoELayer(5, 2, _lowrank(rank=3))
    assert isinstance(layer.experts, LowRankExperts) and isinstance(layer.experts, ExpertBank)
    assert layer.experts.down.shape == (3, 5, 3)
    x = torch.randn(16, 5)
    y = layer.run(x, dispatch_mode=mode).y
    y.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("experts."))
    layer.zero_grad()
    layer.run(x, dispatch_mode="reference").y.square().sum().backward()
    torch.testing.assert_close(y, layer.run(x, dispatch_mode="reference").y)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)


def test_a_stack_mixes_kinds_per_layer_and_round_trips_through_the_parser():
    config = DeepMoEConfig(widths=(4, 6, 2), moe=(_lowrank(rank=4, scale=0.5), MoEConfig()))
    model = DeepMoE.from_config(config)
    assert isinstance(model.layers[0].experts, LowRankExperts)
    assert isinstance(model.layers[1].experts, Experts)
    model(torch.randn(8, 4)).sum().backward()
    assert model.layers[0].experts.up.grad is not None
    data = to_json(config)
    assert data["moe"][0]["experts"]["bank"] == "lowrank"
    assert data["moe"][0]["experts"]["options"] == {"rank": 4, "scale": 0.5}
    assert build(DeepMoEConfig, data) == config
    assert "bank" not in to_json(MoEConfig(), identity=True)["experts"]


def test_options_are_stored_as_their_differences_from_the_defaults():
    spelled = ExpertConfig(bank="lowrank", options={"rank": 2, "scale": 3})
    assert spelled.options == {"scale": 3.0}  # rank=2 is the default; 3 is the float 3.0
    assert spelled == ExpertConfig(bank="lowrank", options={"scale": 3.0})
    assert hash(spelled) == hash(ExpertConfig(bank="lowrank", options={"scale": 3.0}))
    assert bank_options(spelled) == LowRankExperts.Options(rank=2, scale=3.0)


@pytest.mark.parametrize(
    ("changes", "error", "pattern"),
    [
        ({"bank": "lowrnak"}, ValueError,
         r"experts.bank='lowrnak' is unknown; expected one of \['ffn', 'lowdim', .*'lowrank'"),
        ({"bank": 3}, TypeError, r"experts.bank must be a str or None, got 3 \(int\)"),
        ({"bank": "lowrank", "options": {"rnak": 4}}, ValueError,
         r"experts.options has unknown key\(s\) \['rnak'\] for experts.bank='lowrank'; "
         r"known: \['rank', 'scale'\]"),
        ({"bank": "lowrank", "options": {"rank": "four"}}, TypeError,
         r"experts.options.rank must be int, got 'four' \(str\)"),
        ({"bank": "lowrank", "options": {"rank": 0}}, ValueError,
         r"experts.options.rank must be >= 1, got 0"),
        ({"bank": "lowrank", "options": [4]}, TypeError, r"experts.options must be a mapping"),
        ({"options": {"rank": 4}}, ValueError,
         r"unknown key\(s\) \['rank'\] for experts.bank='ffn'; known: \[\]"),
        ({"bank": "lowdim"}, ValueError, r"experts.bank='lowdim' .* needs experts.latent_dim"),
        ({"bank": "lowrank", "latent_dim": 2}, ValueError,
         r"experts.latent_dim=2 is read by the 'lowdim' bank only, got experts.bank='lowrank'"),
    ],
)
def test_a_bad_kind_or_bad_options_are_named_when_the_config_is_built(changes, error, pattern):
    with pytest.raises(error, match=pattern):
        ExpertConfig(**changes)


def test_a_kind_refuses_the_settings_it_does_not_support_when_built():
    with pytest.raises(ValueError, match="the 'lowrank' bank has no gated form"):
        MoELayer(3, 1, MoEConfig(experts=ExpertConfig(bank="lowrank", gated=True)))


def test_registering_checks_the_name_and_the_options_class():
    with pytest.raises(ValueError, match="'lowrank' is already registered"):
        register_bank("lowrank")(Experts)
    assert register_bank("lowrank")(LowRankExperts) is LowRankExperts  # the same class again

    class Loose(nn.Module):
        @dataclasses.dataclass
        class Options:
            rank: int = 1

    with pytest.raises(TypeError, match="Loose.Options must be a frozen dataclass"):
        register_bank("loose")(Loose)
    with pytest.raises(ValueError, match="must be an identifier, got 'low rank'"):
        register_bank("low rank")
    assert "loose" not in BANKS


def test_overrides_choose_a_kind_and_keep_the_other_run_ids():
    run = table4().runs(seeds=1)[0]
    assert isinstance(run, RunConfig)
    key, value = parse_override('model.moe.experts.options={"rank": 4}')
    changed = apply_overrides(run, {"model.moe.experts.bank": "lowrank", key: value})
    assert changed.model.moe.experts.kind == "lowrank"
    assert changed.model.moe.experts.options == {"rank": 4}
    assert changed.run_id() != run.run_id()
    assert RunConfig.from_dict(changed.to_dict()) == changed
    same = apply_overrides(run, {"model.moe.experts.bank": "ffn",
                                 "model.moe.experts.options": {}})
    assert same.run_id() == run.run_id()
    with pytest.raises(ValueError, match=r"bad override: .*experts.options has unknown key"):
        apply_overrides(run, {"model.moe.experts.bank": "lowrank",
                              "model.moe.experts.options": {"width": 4}})


def test_a_dotted_override_reaches_one_option():
    run = table4().runs(seeds=1)[0]
    changed = apply_overrides(run, {"model.moe.experts.bank": "lowrank",
                                    "model.moe.experts.options.rank": 4})
    assert changed.model.moe.experts.options == {"rank": 4}


def test_a_checkpoint_of_a_registered_kind_loads_bit_exact(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = DeepMoE([4, 5, 2], _lowrank(rank=3))
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    x = torch.randn(7, 4)
    assert torch.equal(loaded(x), model.eval()(x))
    monkeypatch.delitem(BANKS, "lowrank")  # a process that never registered the kind
    with pytest.raises(CheckpointError, match="experts.bank='lowrank' is unknown"):
        load_checkpoint(tmp_path / "ckpt")


def test_the_batched_trainer_leaves_a_stack_of_another_kind_alone():
    """The trainer stacks plain two-layer ReLU experts with biases only; today it tells them apart
    by the shape fields, so a kind whose fields differ from those trains alone."""
    why = "experts other than two-layer ReLU with biases"
    assert layer_alone_reason(MoEConfig(experts=ExpertConfig(latent_dim=2))) == why
    one_map = MoEConfig(experts=ExpertConfig(bank="lowrank", depth=1))
    assert alone_reason(DeepMoE([3, 2], one_map), TrainConfig()) == why


def test_the_batched_trainer_leaves_a_kind_with_plain_shape_fields_alone():
    config = _lowrank()
    assert layer_alone_reason(config) is not None
    assert alone_reason(DeepMoE([3, 2], config), TrainConfig()) is not None
    run = apply_overrides(table4().runs(seeds=1)[0], {"model.moe.experts.bank": "lowrank"})
    assert batch_key(run) is None


def test_the_documented_kind_runs(monkeypatch):
    """The example of docs/extending.md, "Adding an expert kind", registers and builds as shown."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text()
    section = text.split("## Adding an expert kind", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.delitem(BANKS, "lowrank")  # this file's own class; put back after the test
    exec(compile(code, "docs/extending.md", "exec"), {"__name__": "extending_example"})
    layer = MoELayer(5, 2, MoEConfig(experts=ExpertConfig(bank="lowrank", options={"rank": 4})))
    assert type(layer.experts).__name__ == "LowRankExperts" and layer.experts.down.shape[-1] == 4
    x = torch.randn(9, 5)
    torch.testing.assert_close(layer.run(x, dispatch_mode="grouped").y,
                               layer.run(x, dispatch_mode="reference").y)
    with pytest.raises(ValueError, match="experts.options.rank must be >= 1, got 0"):
        ExpertConfig(bank="lowrank", options={"rank": 0})


class _ScaledExperts(Experts):
    """A kind built on the FFN bank that computes something else: twice its output."""

    def expert(self, x, affine):
        return 2 * super().expert(x, affine)


def test_a_kind_that_subclasses_the_ffn_bank_is_not_taken_for_it():
    from moelab.analysis.pieces import count_pieces
    from moelab.training.init import data_init

    register_bank("scaled_ffn")(_ScaledExperts)
    try:
        config = MoEConfig(num_experts=2, router=RouterConfig(weighting="paper"),
                           experts=ExpertConfig(hidden=4, bank="scaled_ffn"))
        model = DeepMoE([1, 1], config)
        assert type(model.layers[0].experts) is _ScaledExperts
        with pytest.raises(TypeError, match="_ScaledExperts; count_pieces traces Experts banks"):
            count_pieces(model, [-1.0], [1.0])
        before = {k: v.clone() for k, v in model.layers[0].experts.state_dict().items()}
        data_init(model, torch.randn(32, 1), generator=torch.Generator().manual_seed(0))
        after = model.layers[0].experts.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # left at its default init
    finally:
        del BANKS["scaled_ffn"]


class _NotABank(nn.Module):
    """A user's own module registered as a kind without the ExpertBank members."""

    def __init__(self, num_experts: int, d_in: int, d_out: int, config: ExpertConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class _PlainObject:
    """A bank with every member but no nn.Module: its parameters would not be the layer's."""

    num_experts = d_in = d_out = macs_per_token = 1

    def __init__(self, *args) -> None:
        pass

    forward_all = forward_grouped = forward_mixed = None


@pytest.mark.parametrize("cls, pattern", [
    (_NotABank, r"'not_a_bank' \(_NotABank\) is not an ExpertBank: it lacks \['d_in', 'd_out', "
                r"'forward_all', 'forward_grouped', 'forward_mixed', 'macs_per_token', "
                r"'num_experts'\]"),
    (_PlainObject, r"'not_a_bank' \(_PlainObject\) is not an nn.Module"),
])
def test_a_kind_that_is_not_an_expert_bank_is_refused_when_the_layer_is_built(
        cls, pattern, monkeypatch):
    monkeypatch.setitem(BANKS, "not_a_bank", cls)
    with pytest.raises(TypeError, match=pattern):
        MoELayer(3, 2, MoEConfig(experts=ExpertConfig(bank="not_a_bank")))
