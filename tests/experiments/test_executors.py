"""Sweeps on existing engines: Ray tasks on a local 2-CPU cluster and submitit's local jobs write
the same database as the process pool (timings aside), the driver the only writer."""

from __future__ import annotations

import json
import operator
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest

from moelab.cli import main
from moelab.experiments.executors import RayExecutor, SubmititExecutor, open_executor
from moelab.experiments.registry import table3
from moelab.experiments.schedule import run_all
from moelab.experiments.store import ResultStore

# One small experiment: table3's two recipes at D=8, two seeds, 20 steps each (4 runs).
TINY = {"train.steps": 20, "train.test_size": 256, "task.D": 8}
SWEEP = ["run", "table3", "--seeds", "2", "--workers", "2", "--quiet",
         *(arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}"))]


def _database(directory: Path) -> dict:
    """Every stored row, by table, with the timings (seconds, finished_at, train_seconds) left out."""
    conn = sqlite3.connect(directory / "results.sqlite")
    try:
        runs = {}
        for row in conn.execute("SELECT * FROM runs"):
            (run_id, experiment, labels, seed, config, mse, sup, metrics, routing, _seconds,
             version, _finished_at) = row
            metrics = json.loads(metrics)
            assert metrics.pop("train_seconds") > 0
            runs[run_id] = (experiment, labels, seed, config, mse, sup, metrics, routing, version)
        history = sorted(conn.execute("SELECT run_id, step, row FROM history"))
        evals = sorted(conn.execute("SELECT * FROM evals"))
    finally:
        conn.close()
    return {"runs": runs, "history": history, "evals": evals}


@pytest.fixture(scope="module")
def pool_database(tmp_path_factory) -> dict:
    """The sweep on the process pool (run_all's own executor)."""
    out = tmp_path_factory.mktemp("pool")
    assert main([*SWEEP, "--out", str(out)]) == 0
    db = _database(out)
    assert len(db["runs"]) == 4 and len(db["history"]) == 4 * 3  # steps 0, 10, 19
    assert all("layer0/max_vio" in json.loads(row) for _, _, row in db["history"])
    return db


@pytest.fixture
def ray_sandbox(monkeypatch):
    """Everything a local Ray cluster writes goes to a fresh folder that is removed afterwards:
    its session files (RAY_TMPDIR; a short path, since Ray's sockets live there) and the
    authentication token it keeps under ~/.ray (HOME)."""
    pytest.importorskip("ray")
    folder = Path(tempfile.mkdtemp(prefix="moelab-ray-"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "120")  # a busy CI machine starts slowly
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray sets it; undone after the test
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield folder
    import ray

    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_sweep_through_ray_writes_the_process_pools_database(pool_database, ray_sandbox,
                                                                tmp_path):
    """One local 2-CPU cluster (it takes a while to start): the sweep, then the adapter's
    generic calls and errors; the executor stops the cluster it started."""
    import ray

    runs = table3().runs(seeds=2, overrides=TINY)
    store = ResultStore(tmp_path)
    with open_executor("ray", workers=2) as executor:
        assert isinstance(executor, RayExecutor)
        assert ray.cluster_resources()["CPU"] == 2
        assert len(run_all(runs, store, executor=executor, progress=False)) == 4
        assert _database(tmp_path) == pool_database
        assert [f.result() for f in [executor.submit(operator.mul, i, 3) for i in range(3)]] == [
            0, 3, 6]
        assert executor.submit(sorted, [1, 3], reverse=True).result() == [3, 1]
        with pytest.raises(ZeroDivisionError):
            executor.submit(operator.truediv, 1, 0).result()
    assert not ray.is_initialized()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(operator.mul, 1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]  # Ray wrote elsewhere
    assert (ray_sandbox / "ray").is_dir()  # ... here, removed after the test


@pytest.mark.slow  # a process per job, each importing torch: over a minute on 2 busy cores
def test_a_sweep_through_submitits_local_jobs_writes_the_same_database(pool_database, tmp_path):
    pytest.importorskip("submitit")
    assert main([*SWEEP, "--out", str(tmp_path), "--executor", "submitit",
                 "--submitit-local"]) == 0
    assert _database(tmp_path) == pool_database
    assert len(list((tmp_path / "submitit").glob("*_result.pkl"))) == 4  # one job per run


def test_the_cli_hands_its_engine_options_to_the_executor(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import contextmanager

    import moelab.experiments.executors as executors

    seen = []

    @contextmanager
    def fake(kind, **options):
        seen.append((kind, options))
        with ThreadPoolExecutor(2) as pool:
            yield pool

    monkeypatch.setattr(executors, "open_executor", fake)
    argv = [*SWEEP, "--seeds", "1", "--out", str(tmp_path)]
    assert main([*argv, "--executor", "ray", "--ray-address", "ray://head:10001"]) == 0
    assert main([*argv, "--executor", "submitit", "--submitit-folder", "/shared/jobs",
                 "--slurm-partition", "cpu", "--slurm-time", "30", "--slurm-mem-gb", "2"]) == 0
    import moelab.experiments.schedule as schedule
    import moelab.reporting as reporting

    calls = []
    monkeypatch.setattr(schedule, "run_all", lambda runs, store, **kw: calls.append(kw) or [])
    monkeypatch.setattr(reporting, "write_report", lambda out, **kw: Path(out) / "report.md")
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--executor", "submitit",
                 "--submitit-local", "--quiet", "--workers", "2"]) == 0
    # one sweep of every reproduced experiment (and its contrasts), on the one engine
    assert len(calls) == 1 and calls[0]["executor"] is not None
    assert seen[0] == ("ray", {"workers": 2, "ray_address": "ray://head:10001",
                               "submitit_folder": None, "submitit_cluster": None,
                               "submitit_parameters": {}})
    assert seen[1] == ("submitit", {"workers": 2, "ray_address": None,
                                    "submitit_folder": "/shared/jobs", "submitit_cluster": None,
                                    "submitit_parameters": {"slurm_partition": "cpu",
                                                            "timeout_min": 30, "mem_gb": 2.0}})
    assert seen[2] == ("submitit", {"workers": 2, "ray_address": None,
                                    "submitit_folder": str(tmp_path / "r" / "submitit"),
                                    "submitit_cluster": "local", "submitit_parameters": {}})
    assert len(seen) == 3  # reproduce: one executor for all its experiments


def test_the_submitit_adapter_runs_any_callable_and_bounds_its_jobs(tmp_path):
    pytest.importorskip("submitit")
    executor = SubmititExecutor(tmp_path, cluster="local", max_jobs=1, poll_s=0.1)
    futures = [executor.submit(operator.mul, i, 3) for i in range(2)]
    failed = executor.submit(operator.truediv, 1, 0)
    assert futures[1].running() is False  # queued behind the first job
    assert [f.result() for f in futures] == [0, 3]
    with pytest.raises(Exception, match="division by zero"):
        failed.result()
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(operator.mul, 1, 2)


@pytest.mark.parametrize("module, extra", [("ray", "ray"), ("submitit", "slurm")])
def test_a_missing_engine_names_its_extra(module, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # import fails
    with pytest.raises(ImportError, match=rf"pip install 'moelab\[{extra}\]'"):
        with open_executor("ray" if module == "ray" else "submitit", submitit_folder=tmp_path):
            pass


@pytest.mark.parametrize("argv, message", [
    (["--ray-address", "auto"], "--ray-address: only for --executor ray"),
    (["--executor", "ray", "--slurm-partition", "cpu"], "--slurm-partition: only for --executor "
                                                        "submitit"),
    (["--executor", "submitit"], "needs --submitit-folder DIR"),
])
def test_engine_options_are_checked(argv, message, tmp_path, capsys):
    assert main([*SWEEP, "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.sqlite").exists()  # checked before the store is made


def test_an_unknown_executor_is_an_error():
    with pytest.raises(ValueError, match="executor 'dask' is unknown"):
        with open_executor("dask"):
            pass


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    """On a machine with SLURM (here a stand-in ``srun``), the CLI's options become the job
    script's #SBATCH lines; one CPU per run."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    options = {"slurm_partition": "cpu", "timeout_min": 30, "mem_gb": 2.0}
    with open_executor("submitit", workers=4, submitit_folder=tmp_path / "jobs",
                       submitit_parameters=options) as executor:
        assert executor.cluster == "slurm"
        script = executor._executor._executor._make_submission_file_text("CMD", "uid")
    for line in ("--partition=cpu", "--time=30", "--mem=2GB", "--cpus-per-task=1"):
        assert f"#SBATCH {line}\n" in script
