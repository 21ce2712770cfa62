"""Runs on a real-data task: trained on the training split, measured on the held-out split only,
with accuracy, routing against the classes and the intrinsic dimension each expert receives."""

import pytest
import torch

from moelab.analysis import expert_paths
from moelab.analysis.intrinsic import intrinsic_dimension
from moelab.experiments import execute as execute_module
from moelab.experiments.build import build_model, build_task
from moelab.experiments.config import ModelSpec, RunConfig, TaskSpec, apply_overrides
from moelab.experiments.execute import execute
from moelab.experiments.measure import DIMENSION_NEIGHBOURS, held_out_metrics
from moelab.layers import ExpertConfig, MoEConfig
from moelab.training import TrainConfig, evaluate


def _run(kind="moe", dataset="wine", D=32, steps=20):
    return RunConfig(
        experiment="t", seed=1,
        task=TaskSpec(kind="real", dataset=dataset, D=D, embedding="isometry"),
        model=ModelSpec(kind=kind, moe=MoEConfig(num_experts=3, experts=ExpertConfig(hidden=8)),
                        dense_hidden=11),
        train=TrainConfig(steps=steps, test_size=16),
    )


def test_the_task_spec_reads_its_own_fields():
    spec = TaskSpec(kind="real", dataset="wine", D=20)
    assert set(spec.identity()) == {"kind", "dataset", "D", "embedding", "split_seed", "task_seed"}
    run = _run()
    assert apply_overrides(run, {"task.E": 5}).run_id() == run.run_id()
    assert apply_overrides(run, {"task.split_seed": 1}).run_id() != run.run_id()
    with pytest.raises(ValueError, match=r"task.dataset='mnist' is unknown"):
        apply_overrides(run, {"task.dataset": "mnist"})
    with pytest.raises(ValueError, match=r"D=8 is below the native width 13"):
        build_task(TaskSpec(kind="real", dataset="wine", D=8))


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_a_run_is_evaluated_on_the_held_out_split(kind, monkeypatch):
    seen = {}

    def spy(model, sampler, config, **kwargs):
        seen.update(model=model, test_set=kwargs["test_set"], sampler=sampler)
        return train(model, sampler, config, **kwargs)

    train = execute_module.train
    monkeypatch.setattr(execute_module, "train", spy)
    run = _run(kind)
    outcome = execute(run)
    task = build_task(run.task)
    x_test, y_test = task.test_set
    assert torch.equal(seen["test_set"][0], x_test) and torch.equal(seen["test_set"][1], y_test)
    assert len(x_test) == 45  # a quarter of wine's 178 points, by class; not train.test_size
    model = seen["model"]
    assert outcome.test_mse == evaluate(model, x_test, y_test).mse
    with torch.no_grad():
        accuracy = float((model.run(x_test).y.argmax(1) == y_test.argmax(1)).double().mean())
    assert outcome.metrics["test_accuracy"] == pytest.approx(accuracy)
    held_out = set(task.task.test_index.tolist())
    drawn = task.task.sample(5000, seed=0).index.tolist()
    assert not held_out & set(drawn)
    assert outcome.metrics["input_intrinsic_dim"] == pytest.approx(
        intrinsic_dimension(task.train_set[0], "mle", k=DIMENSION_NEIGHBOURS))
    if kind == "moe":
        assert outcome.routing["regions"] == 3  # the classes of the held-out points
        assert 0 < outcome.metrics["path_purity"] <= 1
    else:
        assert "expert_intrinsic_dim" not in outcome.metrics


def test_each_experts_intrinsic_dimension_is_measured_on_what_it_receives():
    run = _run("moe", dataset="breast_cancer", D=64)
    built = build_task(run.task)
    torch.manual_seed(0)
    model = build_model(run, built.task.d_in, built.task.d_out)
    out = held_out_metrics(model, built)
    x_train = built.train_set[0]
    experts = expert_paths(model, x_train).paths[:, 0]
    assert out["expert_points"] == torch.bincount(experts, minlength=3).tolist()
    k = DIMENSION_NEIGHBOURS
    for e, dim in enumerate(out["expert_intrinsic_dims"]):
        if out["expert_points"][e] < 2 * k:
            assert dim is None
        else:
            assert dim == intrinsic_dimension(x_train[experts == e], "mle", k=k)
    pairs = [(d, c) for d, c in zip(out["expert_intrinsic_dims"], out["expert_points"],
                                    strict=True) if d is not None]
    assert out["expert_intrinsic_dim"] == pytest.approx(
        sum(d * c for d, c in pairs) / sum(c for _, c in pairs))


def test_tasks_drawn_from_a_distribution_get_no_held_out_metrics():
    run = RunConfig(experiment="t", task=TaskSpec(kind="manifold", D=4))
    task = build_task(run.task)
    assert task.test_set is None and held_out_metrics(build_model(run, 4, 1), task) == {}
