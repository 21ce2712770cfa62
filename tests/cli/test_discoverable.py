"""A command line you can discover (issue 8, section 4): --show-config, seed lists, export -o,
clean refusals of bad arguments, databases that cannot be used, and Ctrl-C."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from moelab.cli import main
from moelab.experiments.store import DB_NAME

TINY = ["--set", "train.steps=3", "--set", "train.test_size=64", "--quiet"]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moelab: error: ") and "Traceback" not in err
    return err


def test_show_config_lists_runs_and_every_set_key(capsys, tmp_path):
    out_dir = tmp_path / "never"
    assert main(["run", "table3", "--show-config", "--seeds", "2", "--set", "train.steps=7",
                 "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert not out_dir.exists()  # nothing run, nothing created
    runs = [line for line in out.splitlines() if " seed=" in line]
    assert len(runs) == 16 and sum("seed=1" in r for r in runs) == 8
    assert "D=128 recipe=best" in out and "task.D=128" in out
    assert "train.steps" in out and "int; 7" in out  # the --set value, resolved
    assert "model.moe.num_experts" in out and "task.D" in out and "(varied by axis 'D')" in out
    assert "task.n_charts" in out and "int | None" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  task.")}
    assert "not read by" in lines["task.E"] and "not read by" not in lines["task.n_charts"]


def test_explicit_seed_list(tmp_path, capsys):
    assert main(["run", "table3", "--seeds", "5,9", "--set", "task.D=8", "--out", str(tmp_path),
                 *TINY]) == 0
    conn = sqlite3.connect(tmp_path / DB_NAME)
    seeds = sorted(s for (s,) in conn.execute("SELECT seed FROM runs"))
    conn.close()
    assert seeds == [5, 5, 9, 9]
    assert "4 run(s) done" in capsys.readouterr().out


@pytest.mark.parametrize("seeds,pattern", [("0", "count must be >= 1"), ("a,b", "comma-separated"),
                                           ("3,3", "distinct seeds"), ("1,-2", "distinct seeds")])
def test_bad_seeds(seeds, pattern, capsys, tmp_path):
    assert pattern in _error(capsys, ["run", "table3", "--seeds", seeds, "--out", str(tmp_path)])


def test_export_to_a_chosen_path(tmp_path, capsys):
    assert main(["run", "table3", "--seeds", "1", "--set", "task.D=8", "--out", str(tmp_path),
                 *TINY]) == 0
    target = tmp_path / "elsewhere" / "all.json"
    assert main(["export", str(tmp_path), "-o", str(target)]) == 0  # format from the suffix
    assert len(json.loads(target.read_text())) == 2
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "x.txt"), "--format", "csv"]) == 0
    assert len((tmp_path / "x.txt").read_text().splitlines()) == 3
    assert "is a directory" in _error(capsys, ["export", str(tmp_path), "-o", str(tmp_path)])


def test_workers_below_one(capsys, tmp_path):
    err = _error(capsys, ["run", "table3", "--workers", "0", "--out", str(tmp_path)])
    assert "--workers must be >= 1, got 0" in err
    assert not (tmp_path / DB_NAME).exists()


def test_out_naming_a_regular_file(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    for cmd in (["run", "table3"], ["reproduce"]):
        err = _error(capsys, [*cmd, "--out", str(f), *TINY])
        assert "is a regular file, not a directory" in err
    assert f.read_text() == "keep"


def test_set_nan_says_why(capsys, tmp_path):
    err = _error(capsys, ["run", "table3", "--set", "train.lr=nan", "--out", str(tmp_path)])
    assert "train.lr=nan is refused" in err and "not a finite number" in err


def test_construct_refusals(capsys):
    err = _error(capsys, ["construct", "thm5.3", "--set", "M=8"])
    assert "unknown argument(s) ['M']" in err and "E=3" in err and "m=16" in err
    err = _error(capsys, ["construct", "thm5.3", "--set", "m=8", "--sweep", "m=4,8"])
    assert "both set 'm'" in err
    err = _error(capsys, ["construct", "thm5.3", "--sweep", "m=4,8", "--sweep", "E=2,3"])
    assert "--sweep given 2 times" in err
    err = _error(capsys, ["construct", "thm5.3", "--sweep", "q=4,8"])
    assert "unknown argument(s) ['q']" in err


def test_directory_named_like_the_database(capsys, tmp_path):
    (tmp_path / DB_NAME).mkdir()
    for argv in (["run", "table3", "--out", str(tmp_path), *TINY], ["report", str(tmp_path)],
                 ["export", str(tmp_path)]):
        err = _error(capsys, argv)
        assert "results.sqlite is a directory" in err and "not a moelab" not in err


def test_damaged_database(capsys, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    assert main(["run", "table3", "--seeds", "1", "--set", "task.D=8", "--out", str(good),
                 *TINY]) == 0
    bad.mkdir()
    data = (good / DB_NAME).read_bytes()
    (bad / DB_NAME).write_bytes(data[: len(data) // 2])
    for argv in (["run", "table3", "--out", str(bad), *TINY], ["report", str(bad)],
                 ["export", str(bad)]):
        assert "is damaged (database disk image is malformed)" in _error(capsys, argv)


def _unshare_available() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


READ_ONLY_SCRIPT = """
set -e
mount --bind "$1" "$1"
mount -o remount,ro,bind "$1"
"$2" -m moelab.cli export "$1" -o "$3/out.csv"
"$2" -m moelab.cli run table3 --seeds 1 --set task.D=8 --set train.steps=3 --quiet --out "$1" \
    || echo "run exit $?"
umount "$1"
mount --bind "$1/results.sqlite" "$1/results.sqlite"
mount -o remount,ro,bind "$1/results.sqlite"
"$2" -m moelab.cli report "$1"
"""


@pytest.mark.skipif(sys.platform != "linux", reason="read-only bind mounts")
def test_report_and_export_read_a_database_they_cannot_write(tmp_path, capsys):
    """Root writes through permissions, so the database is made read-only by read-only mounts:
    first of its directory (export elsewhere works, run is refused), then of the file alone
    (the report, written beside it, works)."""
    db_dir, out = tmp_path / "db", tmp_path / "out"
    out.mkdir()
    assert main(["run", "table3", "--seeds", "1", "--set", "task.D=8", "--out", str(db_dir),
                 *TINY]) == 0
    before = (db_dir / DB_NAME).read_bytes()
    if not _unshare_available():
        pytest.skip("no mount namespaces here")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_SCRIPT, "sh", str(db_dir),
                           sys.executable, str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "exported 2 run(s)" in proc.stdout
    assert len((out / "out.csv").read_text().splitlines()) == 3
    assert "run exit 2" in proc.stdout and "is read-only" in proc.stderr
    assert "report:" in proc.stdout and (db_dir / "report.md").exists()
    assert (db_dir / DB_NAME).read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_report_and_export_on_a_read_only_database(tmp_path, capsys):
    db_dir = tmp_path / "db"
    assert main(["run", "table3", "--seeds", "1", "--set", "task.D=8", "--out", str(db_dir),
                 *TINY]) == 0
    (db_dir / DB_NAME).chmod(0o444)
    try:
        assert main(["export", str(db_dir), "-o", str(tmp_path / "out.csv")]) == 0
        assert main(["report", str(db_dir)]) == 0
        assert "is read-only" in _error(capsys, ["run", "table3", "--out", str(db_dir), *TINY])
    finally:
        (db_dir / DB_NAME).chmod(0o644)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, workers):
    db = tmp_path / DB_NAME
    # 48 runs in 8 batches of 6 (one per model and width m): Ctrl-C lands between batches
    cmd = [sys.executable, "-m", "moelab.cli", "run", "table4", "--seeds", "1", "--set",
           "train.steps=400", "--set", "train.test_size=256", "--quiet",
           "--workers", workers, "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and _count(db) < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    stored = _count(db)
    assert f"interrupted: {stored} runs stored; rerun to resume" in err
    assert 1 <= stored < 48


def _count(path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
