"""Router metrics: their formulas on a hand-made routing, their place in the history, and the
optional TensorBoard and JSON-lines streams (off by default)."""

import json
import math
import sys

import pytest
import torch
from torch import nn

from moelab.layers import DeepMoE, MoEConfig, RouterConfig
from moelab.layers.outputs import Routing
from moelab.training import TrainConfig, train
from moelab.training.metrics import ROUTER_METRICS, layer_metrics, max_violation, router_metrics
from moelab.training.streams import MetricsStream

# p = (1/2, 1/4, 1/8, 1/8): entropy 1.75 ln 2 nats, 0.875 of ln 4.
_P = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)


def _routing(expert_ids, logits, *, kept=None, tokens_per_expert=None):
    logits = torch.as_tensor(logits, dtype=torch.float64)
    ids = torch.as_tensor(expert_ids)
    kept = torch.ones_like(ids, dtype=torch.bool) if kept is None else torch.as_tensor(kept)
    E = logits.shape[1]
    if tokens_per_expert is None:
        tokens_per_expert = torch.bincount(ids[kept], minlength=E)
    return Routing(expert_ids=ids, weights=kept.double(), kept=kept, logits=logits,
                   probs=logits.softmax(-1), tokens_per_expert=tokens_per_expert,
                   dropped_fraction=1 - kept.double().mean())


def _hand_made():
    """4 tokens, 4 experts, top-1: experts 0, 0, 1, 0 (loads 3, 1, 0, 0). Token 0 has all-zero
    logits (uniform, logsumexp ln 4); tokens 1-3 have logits log p + 1 (logsumexp 1)."""
    logits = [[0.0] * 4] + [(_P.log() + 1).tolist()] * 3
    return _routing([[0], [0], [1], [0]], logits)


def test_metrics_of_a_hand_made_routing():
    m = layer_metrics(_hand_made())
    assert m["max_share"] == pytest.approx(3 / 4)
    assert m["max_vio"] == pytest.approx(3 / (4 / 4) - 1)  # max load / mean load - 1 = 2
    assert m["dead_fraction"] == pytest.approx(2 / 4)
    assert m["entropy"] == pytest.approx((1 + 3 * 0.875) / 4)
    assert m["router_z"] == pytest.approx((math.log(4) ** 2 + 3 * 1.0) / 4)
    assert list(m) == list(ROUTER_METRICS)


def test_balanced_and_collapsed_loads():
    assert max_violation(torch.tensor([5, 5, 5, 5])) == 0
    assert max_violation(torch.tensor([8, 0, 0, 0])) == pytest.approx(3)  # E - 1
    assert math.isnan(max_violation(torch.zeros(4)))
    balanced = _routing([[0], [1], [2], [3]], torch.zeros(4, 4))
    m = layer_metrics(balanced)
    assert (m["max_share"], m["max_vio"], m["dead_fraction"], m["entropy"]) == (0.25, 0, 0, 1)


def test_dropped_assignments_count_for_no_expert():
    # top-2, capacity drops token 1's second slot and both of token 2's: kept loads 2, 1, 0
    r = _routing([[0, 1], [0, 2], [1, 2]], torch.zeros(3, 3),
                 kept=[[True, True], [True, False], [False, False]])
    m = layer_metrics(r)
    assert m["max_share"] == pytest.approx(2 / 3)
    assert m["max_vio"] == pytest.approx(2 / 1 - 1)
    assert m["dead_fraction"] == pytest.approx(1 / 3)
    nothing = layer_metrics(_routing([[0]], torch.zeros(1, 2), kept=[[False]]))
    assert math.isnan(nothing["max_share"]) and math.isnan(nothing["max_vio"])
    assert nothing["dead_fraction"] == 1


def test_one_expert_has_entropy_zero():
    assert layer_metrics(_routing([[0], [0]], torch.zeros(2, 1)))["entropy"] == 0


def test_router_metrics_keys_by_call_and_skip_empty_calls():
    empty = _routing(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 4))
    out = router_metrics([_hand_made(), empty, _hand_made()])
    assert sorted(out) == sorted(f"layer{i}/{n}" for i in (0, 2) for n in ROUTER_METRICS)
    assert out["layer2/max_vio"] == pytest.approx(2)
    assert router_metrics([]) == {}


def _line_sampler(n, gen):
    x = torch.rand(n, 2, generator=gen) * 2 - 1
    return x, (x[:, :1] * 3 - x[:, 1:] + 0.5)


def _noisy_deep_moe(seed=0):
    torch.manual_seed(seed)  # router noise draws from torch's default generator while training
    return DeepMoE([2, 4, 1], MoEConfig(num_experts=3, router=RouterConfig(noise="jitter",
                                                                           jitter_eps=0.1)))


def test_history_rows_hold_every_layers_metrics():
    res = train(_noisy_deep_moe(), _line_sampler, TrainConfig(steps=7, test_size=10, log_every=3),
                progress=False)
    assert [row["step"] for row in res.history] == [0, 3, 6]
    keys = {f"layer{i}/{n}" for i in (0, 1) for n in ROUTER_METRICS}
    for row in res.history:
        assert keys <= set(row)
        # the model's z_loss sums the layers' router z-losses
        assert row["layer0/router_z"] + row["layer1/router_z"] == pytest.approx(row["z_loss"])
        assert 1 / 3 <= row["layer0/max_share"] <= 1 and 0 <= row["layer1/entropy"] <= 1


def test_a_model_without_moe_layers_logs_no_router_metrics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    res = train(model, _line_sampler, TrainConfig(steps=3, test_size=10, log_every=1),
                progress=False)
    assert all(set(row) == {"step", "loss", "mse", "lr"} for row in res.history)


def test_logging_every_step_leaves_training_bit_identical():
    """The metrics draw no random numbers and change no computation: the same seeded run with
    router noise, logged every step or once, ends with the same bits."""
    weights, histories = [], []
    for log_every in (1, 1000):
        model = _noisy_deep_moe(3)
        res = train(model, _line_sampler, TrainConfig(steps=30, test_size=10, log_every=log_every),
                    seed=2, progress=False)
        weights.append([p.detach().clone() for p in model.parameters()])
        histories.append(res.history)
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    assert histories[0][0] == histories[1][0] and histories[0][-1] == histories[1][-1]


def test_streams_write_tensorboard_events_and_json_lines(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(steps=5, test_size=10, log_every=2, tensorboard_dir=str(tmp_path / "tb"),
                         jsonl_path=str(tmp_path / "rows" / "run.jsonl"))
    res = train(_noisy_deep_moe(), _line_sampler, config, progress=False)
    lines = (tmp_path / "rows" / "run.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == res.history
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {k for k in res.history[0] if k != "step"}
    for tag in ("loss", "lr", "layer1/max_vio", "layer0/entropy"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [row["step"] for row in res.history] == [0, 2, 4]
        assert [s.value for s in scalars] == pytest.approx([row[tag] for row in res.history],
                                                           rel=1e-6)


def test_streams_are_off_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(steps=3, test_size=10, log_every=1)
    assert config.tensorboard_dir is None and config.jsonl_path is None
    train(_noisy_deep_moe(), _line_sampler, config, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_value_is_null_in_json_lines(tmp_path):
    with MetricsStream(jsonl_path=tmp_path / "r.jsonl") as stream:
        stream.write({"step": 0, "loss": 1.5, "layer0/max_vio": math.nan})
    assert json.loads((tmp_path / "r.jsonl").read_text()) == {"step": 0, "loss": 1.5,
                                                              "layer0/max_vio": None}


def test_tensorboard_without_its_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ImportError, match=r"moelab\[tensorboard\]"):
        MetricsStream(tensorboard_dir=tmp_path)
    with pytest.raises(TypeError, match="jsonl_path must be a path"):
        MetricsStream(jsonl_path=3)


def test_stream_destinations_are_not_part_of_the_run_id():
    from moelab.experiments.config import apply_overrides
    from moelab.experiments.registry import table3

    run = table3().runs(seeds=1)[0]
    streamed = apply_overrides(run, {"train.tensorboard_dir": "tb", "train.jsonl_path": "r.jsonl"})
    assert streamed.train.tensorboard_dir == "tb" and streamed.to_dict() != run.to_dict()
    assert streamed.run_id() == run.run_id()


def test_batched_metrics_are_each_members_solo_metrics_exactly():
    from moelab.training.metrics import stacked_router_metrics

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 3, generator=gen)  # (N, B, E): member 0 leaves expert 2 dead
    ids = torch.tensor([[0, 1, 0, 1, 0, 1], [0, 1, 2, 2, 1, 0]])[..., None]
    rows = stacked_router_metrics([(logits, logits.softmax(-1), ids)])
    for n in range(2):
        solo = layer_metrics(Routing(
            expert_ids=ids[n], weights=torch.ones(6, 1), kept=torch.ones(6, 1, dtype=torch.bool),
            logits=logits[n], probs=logits[n].softmax(-1),
            tokens_per_expert=torch.bincount(ids[n, :, 0], minlength=3), dropped_fraction=0.0))
        assert rows[n] == {f"layer0/{k}": v for k, v in solo.items()}


def test_the_metrics_are_the_librarys_entropy_and_z_loss():
    from moelab.analysis import token_entropy
    from moelab.losses import router_z_loss

    r = _hand_made()
    m = layer_metrics(r)
    assert m["entropy"] == token_entropy(r) / math.log(4)
    assert m["router_z"] == float(router_z_loss(r.logits))
    with pytest.raises(ValueError, match="no tokens"):
        layer_metrics(_routing(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 2)))
