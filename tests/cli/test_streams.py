"""`moelab run --jsonl DIR --tensorboard DIR`: each run streams its logged rows to a file or
folder named by its run id; the run ids, and so the resume, do not change."""

import json

import pytest

from moelab.cli import main
from moelab.experiments.store import ResultStore

ARGS = ["run", "table3", "--seeds", "1", "--quiet", "--set", "train.steps=12", "--set",
        "train.test_size=64", "--set", "task.D=8"]


def test_run_streams_each_runs_rows_named_by_its_run_id(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    assert main([*ARGS, "--out", str(out), "--jsonl", str(tmp_path / "rows"),
                 "--tensorboard", str(tmp_path / "tb")]) == 0
    store = ResultStore(out, create=False)
    runs = store.runs()
    assert len(runs) == 2
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == sorted(
        f"{r.run_id}.jsonl" for r in runs)
    for run in runs:
        lines = (tmp_path / "rows" / f"{run.run_id}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == store.history(run.run_id)
        events = EventAccumulator(str(tmp_path / "tb" / run.run_id))
        events.Reload()
        assert [s.step for s in events.Scalars("layer0/max_vio")] == [0, 10, 11]
        assert run.config["train"]["jsonl_path"] == str(tmp_path / "rows" / f"{run.run_id}.jsonl")
    # the same runs without streams are the runs already stored
    assert main([*ARGS, "--out", str(out)]) == 0
    assert len(ResultStore(out, create=False).runs()) == 2


def test_run_streams_nothing_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*ARGS, "--out", "out"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.sqlite"]


def test_a_streamed_sweep_reports_like_one_without_streams(tmp_path):
    """Where rows were streamed is no setting of the runs: the report neither splits the seeds of
    a grid point (their paths differ) nor lists the paths as settings that differ."""
    from moelab.reporting import write_report

    assert main([*ARGS, "--seeds", "2", "--out", str(tmp_path / "a"), "--jsonl",
                 str(tmp_path / "rows")]) == 0
    report = write_report(tmp_path / "a", experiments=["table3"]).read_text()
    assert "jsonl_path" not in report and "Not pooled" not in report
