"""A sweep killed with SIGKILL resumes to exactly the database an uninterrupted sweep writes."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from moelab.experiments.store import ResultStore

#: 12 runs in two batches of 6 (the deep and the shallow model): a kill between them keeps one.
ARGS = ["run", "table4", "--seeds", "1", "--set", "train.steps=150", "--set",
        "train.test_size=500", "--set", "model.moe.experts.hidden=8", "--quiet"]
RUNS = 12


def _cli(out, **kw):
    cmd = [sys.executable, "-m", "moelab.cli", *ARGS, "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _count(path):
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def _content(directory):
    """Every stored value except wall-clock timings (which legitimately differ)."""
    store = ResultStore(directory, create=False)
    runs = []
    for r in store.runs():
        metrics = {k: v for k, v in r.metrics.items() if k != "train_seconds"}
        runs.append((r.run_id, r.experiment, r.labels, r.seed, r.config, r.test_mse, r.test_sup,
                     metrics, r.routing, store.history(r.run_id), store.evals(r.run_id)))
    return sorted(runs, key=lambda t: t[0])


def test_sigkill_mid_sweep_then_resume(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _cli(killed)
    db = killed / "results.sqlite"
    deadline = time.time() + 240
    while _count(db) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    before_kill = _count(db)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    kept = _content(killed)
    assert 1 <= len(kept) < RUNS and len(kept) >= before_kill

    resumed = _cli(killed)
    assert resumed.wait(300) == 0, resumed.stderr.read().decode()
    final = _content(killed)
    assert len(final) == RUNS and len({r[0] for r in final}) == RUNS  # none duplicated or missing
    assert all(row in final for row in kept)  # finished runs kept unchanged
    out = resumed.stdout.read().decode()
    assert f"{RUNS - len(kept)} run(s) done, {len(kept)} already stored" in out

    assert _cli(clean).wait(300) == 0
    assert final == _content(clean)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
