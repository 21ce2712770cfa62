"""Run configs: dotted overrides are checked against fields and types; grids expand as declared."""

import pytest

from moelab.experiments.config import (
    ModelSpec,
    RunConfig,
    TaskSpec,
    apply_overrides,
    parse_override,
)
from moelab.experiments.registry import EXPERIMENTS, get_experiment, table3, table4
from moelab.experiments.spec import Axis, Experiment


def test_parse_override_values():
    assert parse_override("train.steps=100") == ("train.steps", 100)
    assert parse_override("train.lr=1e-2") == ("train.lr", 0.01)
    assert parse_override("task.manifold=sphere") == ("task.manifold", "sphere")
    assert parse_override("model.moe.router.capacity_factor=none") == (
        "model.moe.router.capacity_factor", None)
    assert parse_override("model.residual=true") == ("model.residual", True)
    assert parse_override('train.aux_weights={"z_loss": 0.01}') == (
        "train.aux_weights", {"z_loss": 0.01})


@pytest.mark.parametrize("bad", ["train.steps", "=3", "train..steps=3", "1x=2"])
def test_parse_override_rejects_malformed(bad):
    with pytest.raises(ValueError, match="override"):
        parse_override(bad)


def test_apply_overrides_sets_nested_fields_and_keeps_the_rest():
    run = RunConfig(experiment="x")
    new = apply_overrides(run, {"train.steps": 7, "model.moe.experts.hidden": 33, "task.D": 64})
    assert new.train.steps == 7 and new.model.moe.experts.hidden == 33 and new.task.D == 64
    assert new.train.lr == run.train.lr and run.train.steps != 7


@pytest.mark.parametrize(
    "key,value,error,pattern",
    [
        ("train.stepz", 3, ValueError, r"unknown config key 'train.stepz'.*known: \["),
        ("modle.layers", 3, ValueError, r"unknown config key 'modle.layers'"),
        ("train.steps.x", 3, ValueError, r"train.steps has no sub-fields"),
        ("train.steps", "many", TypeError, r"bad override: train.steps must be int, got 'many'"),
        ("train.steps", 2.5, TypeError, r"train.steps must be int"),
        ("train.lr", True, TypeError, r"train.lr must be float"),
        ("model.moe.router.capacity_factor", "big", TypeError,
         r"model.moe.router.capacity_factor must be float or None"),
        ("train.steps", 0, ValueError, r"bad override: steps must be >= 1, got 0"),
        ("model.moe.router.top_k", 9, ValueError, r"top_k=9 must be <= num_experts=4"),
        ("task.kind", "graph", ValueError, r"task.kind='graph' is unknown"),
    ],
)
def test_bad_overrides_name_the_key(key, value, error, pattern):
    with pytest.raises(error, match=pattern):
        apply_overrides(RunConfig(experiment="x"), {key: value})


def test_round_trip_and_stable_identity():
    run = RunConfig(experiment="x", task=TaskSpec(D=32), model=ModelSpec(layers=2), seed=3)
    again = RunConfig.from_dict(run.to_dict())
    assert again == run and again.run_id() == run.run_id()
    relabelled = apply_overrides(run, {"labels": {"a": "b"}})
    assert relabelled.run_id() == run.run_id()
    assert apply_overrides(run, {"seed": 4}).run_id() != run.run_id()


def test_grid_expansion_counts_and_labels():
    runs = table3().runs()
    assert len(runs) == 4 * 2 * 3
    assert {r.labels["D"] for r in runs} == {"16", "32", "64", "128"}
    paper = [r for r in runs if r.labels["recipe"] == "paper"]
    assert all(r.train.lr == 1e-3 and r.train.steps == 2000 for r in paper)
    assert len({r.run_id() for r in runs}) == len(runs)
    assert len(table4().runs(seeds=1)) == 2 * 4 * 3 * 2


def test_user_override_collapses_the_axis_it_covers():
    runs = table3().runs(seeds=1, overrides={"task.D": 8})
    assert len(runs) == 2 and all(r.task.D == 8 and "D" not in r.labels for r in runs)


def test_bad_override_fails_before_any_run():
    with pytest.raises(ValueError, match="unknown config key 'train.nope'"):
        table3().runs(overrides={"train.nope": 1})


def test_every_registered_experiment_builds():
    for name in EXPERIMENTS:
        exp = get_experiment(name)
        assert exp.name == name and exp.claim and exp.runs(seeds=1)


def test_unknown_experiment():
    with pytest.raises(ValueError, match=r"unknown experiment 'table5'; known: \["):
        get_experiment("table5")


def test_axis_of_and_duplicate_runs_deduplicated():
    exp = Experiment(name="e", title="t", claim="c", base=RunConfig(experiment="e"),
                     axes=(Axis.of("D", "task.D", (16, 16)),), seeds=2)
    assert len(exp.runs()) == 2
