"""Runs build, train, measure and store; finished runs are skipped; results are deterministic."""


from moelab.experiments.config import RunConfig, apply_overrides
from moelab.experiments.registry import table3, table4
from moelab.experiments.runner import execute, run_all
from moelab.experiments.store import ResultStore

TINY = {"train.steps": 20, "train.test_size": 256}


def test_execute_a_tiny_table3_run():
    run = table3().runs(seeds=1, overrides=TINY)[0]
    out = execute(run)
    assert out.metrics["parameters"] == 4 * (16 * 10 + 10 + 10 + 1) + 16 * 4 + 4
    assert out.routing["picture"]["kind"] == "circle"
    assert len(out.routing["picture"]["paths"]) == 360
    assert out.routing["regions"] == 4 and 1 <= out.routing["num_paths"] <= 4
    assert abs(sum(out.routing["load"][0]) - 1) < 1e-6
    assert out.evals[-1]["step"] == 20


def test_execute_a_tiny_deep_table4_run_with_data_init():
    runs = table4().runs(seeds=1, overrides=TINY)
    run = next(r for r in runs if r.labels["model"] == "2-3-MoE" and r.labels["recipe"] == "best")
    assert run.model.init == "data" and run.model.moe.router.weighting == "paper"
    out = execute(run)
    assert out.routing["picture"]["kind"] == "grid"
    assert out.routing["regions"] == 9 and out.routing["num_paths"] <= 9
    assert len(out.routing["load"]) == 2


def test_execute_is_deterministic():
    run = table3().runs(seeds=1, overrides=TINY)[0]
    a, b = execute(run), execute(run)
    assert a.test_mse == b.test_mse and a.history == b.history and a.routing == b.routing


def test_dense_runs_have_no_routing():
    run = apply_overrides(RunConfig(experiment="x"), {**TINY, "model.kind": "dense"})
    out = execute(run)
    assert out.routing == {} and out.metrics["parameters"] == 16 * 40 + 40 + 40 + 1


def test_run_all_skips_finished_runs(tmp_path):
    store = ResultStore(tmp_path)
    runs = table3().runs(seeds=1, overrides={**TINY, "task.D": 8})
    assert len(run_all(runs, store, progress=False)) == 2
    assert run_all(runs, store, progress=False) == []
    assert len(store.runs("table3")) == 2


def test_parallel_workers_store_the_same_results(tmp_path):
    runs = table3().runs(seeds=2, overrides={**TINY, "task.D": 8})
    serial, parallel = ResultStore(tmp_path / "s"), ResultStore(tmp_path / "p")
    run_all(runs, serial, progress=False)
    run_all(runs, parallel, workers=2, progress=False)
    key = lambda s: sorted((r.run_id, r.test_mse, r.test_sup) for r in s.runs())  # noqa: E731
    assert key(serial) == key(parallel)


class _RecordingStore(ResultStore):
    """A store that records which thread writes each run."""

    writers: list

    def add(self, **kw):
        import threading

        self.writers.append(threading.get_ident())
        return super().add(**kw)


def test_run_all_on_any_executor_with_the_driver_the_only_writer(tmp_path):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    runs = table3().runs(seeds=1, overrides={**TINY, "task.D": 8})
    serial = ResultStore(tmp_path / "s")
    run_all(runs, serial, progress=False)
    store = _RecordingStore(tmp_path / "t")
    store.writers = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = run_all(runs, store, executor=pool, progress=False)
        assert pool.submit(lambda: 1).result() == 1  # the caller's executor stays usable
    assert sorted(done) == sorted(r.run_id() for r in runs)
    assert store.writers == [threading.get_ident()] * len(runs)
    key = lambda s: sorted((r.run_id, r.test_mse, r.test_sup) for r in s.runs())  # noqa: E731
    assert key(store) == key(serial)


def test_run_all_refuses_fewer_than_one_worker(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        run_all([], ResultStore(tmp_path), workers=0)


def test_runner_keeps_its_names():
    from moelab.experiments import build, execute, measure, runner, schedule

    assert runner.build_task is build.build_task and runner.build_model is build.build_model
    assert runner.execute is execute.execute and runner.routing_summary is measure.routing_summary
    assert runner.run_all is schedule.run_all and runner.store_outcome is schedule.store_outcome
    assert runner.BuiltTask is build.BuiltTask and runner.RunOutcome is execute.RunOutcome


def test_a_recipe_that_fixes_its_routers_on_purpose_does_not_warn(recwarn):
    from moelab.training.loop import RouterGradientWarning

    best = [r for r in table3().runs(seeds=1, overrides={**TINY, "task.D": 8})
            if r.labels["recipe"] == "best"]
    execute(best[0])
    assert not [w for w in recwarn if issubclass(w.category, RouterGradientWarning)]
