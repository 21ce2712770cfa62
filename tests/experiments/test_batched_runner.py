"""The runner trains runs in batches and stores one row per run, as solo runs store them."""

import pytest

from moelab.experiments.config import apply_overrides
from moelab.experiments.execute import batch_key, execute, execute_batch
from moelab.experiments.registry import constructions, table3, table4
from moelab.experiments.schedule import plan_batches, run_all, store_outcome
from moelab.experiments.store import ResultStore

TINY = {"train.steps": 60, "train.test_size": 256}


def _table3(seeds=2):
    return table3().runs(seeds=seeds, overrides=TINY)


def test_runs_differing_in_seed_recipe_and_task_share_a_batch():
    runs = _table3()
    batches = plan_batches(runs)
    # D (the task), the seed and the recipe (lr, schedule, warm-up, init, weighting) vary in a batch
    assert [len(b) for b in batches] == [16]
    assert {r.labels["recipe"] for r in batches[0]} == {"paper", "best"}
    assert {r.run_id() for b in batches for r in b} == {r.run_id() for r in runs}
    # the registered recipes train for different step counts, so they do not share a batch
    registered = plan_batches(table3().runs(seeds=2))
    assert [len(b) for b in registered] == [8, 8]
    assert all(len({r.labels["recipe"] for r in b}) == 1 for b in registered)
    assert batch_key(apply_overrides(runs[0], {"train.lr": 0.5, "seed": 9})) == batch_key(runs[0])
    assert batch_key(apply_overrides(runs[0], {"model.moe.experts.hidden": 11})) != \
        batch_key(runs[0])


def test_what_trains_alone():
    run = _table3(seeds=1)[0]
    alone = [
        apply_overrides(run, {"model.kind": "dense"}),
        apply_overrides(run, {"model.moe.router.capacity_factor": 1.0}),
        apply_overrides(run, {"model.moe.router.balance_bias": True}),
        apply_overrides(run, {"model.moe.router.noise": "jitter"}),
        apply_overrides(run, {"train.aux_weights": {"load_balance": 0.01}}),
        apply_overrides(run, {"model.moe.router.scaling": 2.5}),
        apply_overrides(run, {"model.moe.router.groups": 2, "model.moe.router.top_groups": 1}),
        apply_overrides(run, {"train.jsonl_path": "rows.jsonl"}),
        apply_overrides(run, {"train.method.name": "anneal"}),
        apply_overrides(run, {"train.method.restarts": 2}),
        constructions().runs()[0],
    ]
    assert all(batch_key(r) is None for r in alone)
    assert [len(b) for b in plan_batches(alone + alone)] == [1] * len(alone)


def test_switching_batching_off_plans_every_run_alone(monkeypatch, tmp_path):
    runs = _table3(seeds=1)
    assert all(len(b) == 1 for b in plan_batches(runs, batch=False))
    assert [len(b) for b in plan_batches(runs, max_size=3)] == [3, 3, 2]
    monkeypatch.setenv("MOELAB_BATCH", "0")
    monkeypatch.setattr("moelab.experiments.schedule.execute_batch", None)  # never called
    quick = [apply_overrides(r, {"train.steps": 10}) for r in plan_batches(runs)[0][:2]]
    assert len(run_all(quick, ResultStore(tmp_path), progress=False)) == 2


def test_a_batched_run_stores_what_its_solo_run_stores():
    runs = [r for r in table4().runs(seeds=1, overrides=TINY)
            if r.labels["m"] == "16" and r.labels["recipe"] == "best"
            and r.labels["model"] == "2-3-MoE"]
    batched = execute_batch(runs)
    for run, got in zip(runs, batched, strict=True):
        want = execute(run)
        assert got.run is run
        assert got.test_mse == pytest.approx(want.test_mse, rel=1e-4)
        assert got.metrics.keys() == want.metrics.keys()
        assert got.routing.keys() == want.routing.keys()
        assert got.routing["num_paths"] == want.routing["num_paths"]
        assert got.routing["picture"]["paths"] == want.routing["picture"]["paths"]
        assert [r.keys() for r in got.history] == [r.keys() for r in want.history]
        assert [r["step"] for r in got.evals] == [r["step"] for r in want.evals]


def test_a_resumed_sweep_trains_the_same_batches(tmp_path):
    runs = [r for r in plan_batches(_table3(seeds=1))[0]
            if r.labels["recipe"] == "paper"]  # the paper recipe at D = 16, 32, 64, 128
    clean, partial = ResultStore(tmp_path / "clean"), ResultStore(tmp_path / "partial")
    assert len(run_all(runs, clean, progress=False)) == 4
    # a sweep stopped after storing half of the batch: the resume trains the whole batch again
    # and stores only what is missing, bit-identical to the clean sweep
    for outcome in execute_batch(runs)[:2]:
        store_outcome(partial, outcome)
    assert sorted(run_all(runs, partial, progress=False)) == sorted(r.run_id() for r in runs[2:])
    stored = {r.run_id: r for r in clean.runs()}
    for b in partial.runs():
        a = stored[b.run_id]
        assert (a.test_mse, a.test_sup, a.routing) == (b.test_mse, b.test_sup, b.routing)
        assert clean.history(b.run_id) == partial.history(b.run_id)


def test_the_routing_summary_counts_paths_as_expert_paths_does():
    import torch

    from moelab.analysis import expert_paths
    from moelab.experiments.execute import _prepare
    from moelab.experiments.measure import routing_summary

    run = next(r for r in table4().runs(seeds=1, overrides=TINY) if r.labels["model"] == "2-3-MoE")
    built, model = _prepare(run)
    summary = routing_summary(model, built, seed=run.seed)
    x, _ = built.task(8192, torch.Generator().manual_seed(run.seed + 2_000_003))
    assert summary["num_paths"] == len(expert_paths(model, x).distinct)
    pic = expert_paths(model, built.picture_points).paths
    assert summary["picture"]["paths"] == (pic[:, 0] * 3 + pic[:, 1]).tolist()


def test_any_executor_gets_the_longest_batches_first(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from moelab.experiments import schedule

    runs = table4().runs(seeds=1, overrides={"train.steps": 2, "train.test_size": 64})
    runs += constructions().runs()[:2]
    submitted = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn, batch):
            submitted.append(batch)
            return super().submit(fn, batch)

    with Recording(1) as pool:
        run_all(runs, ResultStore(tmp_path), progress=False, executor=pool)
    costs = [schedule._cost(b) for b in submitted]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) > 2
    first = submitted[0][0].model
    assert (first.layers, first.moe.experts.hidden) == (2, 128)  # the 2-3-MoE at m = 128
    assert all(b[0].experiment == "constructions" for b in submitted[-2:])
