"""A run's id hashes what determines its result: task and model fields their kind does not read
are left out (issue 9 item 3), and constructions have their own spec."""

import json
from pathlib import Path

import pytest

from moelab.constructions import CONSTRUCTIONS
from moelab.experiments.config import (
    MODEL_FIELDS,
    TASK_FIELDS,
    ConstructionRun,
    ConstructionSpec,
    ModelSpec,
    RunConfig,
    TaskSpec,
    apply_overrides,
    unused_keys,
)
from moelab.experiments.execute import execute
from moelab.experiments.registry import constructions, dense_vs_moe, get_experiment, table4


def _ids(runs):
    return [r.run_id() for r in runs]


def test_a_field_the_task_kind_ignores_keeps_the_run_ids():
    exp = table4()
    assert _ids(exp.runs(overrides={"task.n_charts": 8})) == _ids(exp.runs())
    assert _ids(exp.runs(overrides={"task.manifold": "sphere", "task.D": 64})) == _ids(exp.runs())
    assert _ids(exp.runs(overrides={"task.E": 4})) != _ids(exp.runs())  # a field it reads


def test_dense_runs_ignore_the_moe_fields():
    exp = dense_vs_moe()
    plain = exp.runs(seeds=1)
    changed = exp.runs(seeds=1, overrides={"model.moe.router.top_k": 2})
    for a, b in zip(plain, changed, strict=True):
        assert (a.run_id() == b.run_id()) == (a.model.kind == "dense")


def test_every_listed_field_is_a_field_and_the_rest_are_left_out():
    task_fields = {f for f in TaskSpec.__dataclass_fields__}
    model_fields = {f for f in ModelSpec.__dataclass_fields__}
    assert all(set(v) < task_fields for v in TASK_FIELDS.values())
    assert all(set(v) < model_fields for v in MODEL_FIELDS.values())
    run = RunConfig(experiment="x", task=TaskSpec(kind="piecewise"))
    assert set(run.identity()["task"]) == {"kind", "E", "L", "output", "noise"}
    assert "moe" in run.identity()["model"] and "dense_hidden" not in run.identity()["model"]
    assert "labels" not in run.identity() and run.to_dict()["task"]["n_charts"] is None


def test_unused_keys():
    run = table4().runs(seeds=1)[0]
    assert unused_keys(run, ["task.n_charts", "task.E", "train.steps", "model.dense_hidden",
                             "model.moe.router.top_k"]) == ["task.n_charts", "model.dense_hidden"]


def test_the_cli_notes_an_ignored_key(capsys):
    from moelab.cli import main

    assert main(["run", "table4", "--set", "task.n_charts=8", "--show-config"]) == 0
    assert "note: --set task.n_charts: not read" in capsys.readouterr().err


def test_constructions_have_their_own_spec_and_path():
    runs = constructions().runs(overrides={"construction.m": 8})
    assert len(runs) == 5 and all(isinstance(r, ConstructionRun) for r in runs)
    run = runs[0]
    assert run.construction == ConstructionSpec(name="thm5.3", m=8, args={"E": 3, "L": 2})
    out = execute(run)
    _, summary = CONSTRUCTIONS["thm5.3"](E=3, L=2, m=8, seed=0)
    assert out.test_sup == summary.sup_error and out.test_mse == summary.mse  # bit-identical
    assert out.metrics["bound"] == summary.bound and out.history == []
    assert ConstructionRun.from_dict(run.to_dict()) == run
    with pytest.raises(ValueError, match="unknown config key 'train.steps'"):
        apply_overrides(run, {"train.steps": 3})
    with pytest.raises(ValueError, match="must not hold 'm' or 'seed'"):
        ConstructionSpec(args={"m": 3})
    with pytest.raises(ValueError, match="construction.name='thm9' is unknown"):
        execute(apply_overrides(run, {"construction.name": "thm9"}))


RUN_IDS = Path(__file__).parent / "data" / "run_ids.json"


def test_run_ids_of_the_registered_experiments_stay_what_they_were():
    """Fields added to the configs later (marked ``ADDED_LATER``) keep stored results' run ids:
    the ids of every registered experiment's runs (seed 0) as first written (data/run_ids.json)."""
    stored = json.loads(RUN_IDS.read_text())
    now = {}
    for name in {key.split(" ", 1)[0] for key in stored}:
        for run in get_experiment(name).runs(seeds=1):
            now[f"{name} {json.dumps(run.labels, sort_keys=True)} seed={run.seed}"] = run.run_id()
    changed = sorted(key for key in stored if now.get(key) != stored[key])
    assert not changed, f"{len(changed)} run ids changed, e.g. {changed[:3]}"


def test_a_later_field_changes_the_run_id_only_when_set():
    run = get_experiment("table4").runs(seeds=1)[0]
    same = apply_overrides(run, {"model.moe.router.scaling": 1.0})
    scaled = apply_overrides(run, {"model.moe.router.scaling": 2.5})
    assert same.run_id() == run.run_id()
    assert scaled.run_id() != run.run_id()
