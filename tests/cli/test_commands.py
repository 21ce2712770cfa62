"""Each CLI command end to end on tiny configurations."""

import sqlite3

import pytest

from moelab.cli import build_parser, main
from moelab.experiments.registry import EXPERIMENTS

TINY = ["--set", "train.steps=3", "--set", "train.test_size=64", "--seeds", "1", "--quiet"]


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in out


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_run_every_experiment_tiny(name, tmp_path, capsys):
    # constructions are built, not trained: no train.* keys, and their own width key
    args = (["--set", "construction.m=4", "--seeds", "1", "--quiet"] if name == "constructions"
            else TINY)
    assert main(["run", name, "--out", str(tmp_path), *args]) == 0
    out = capsys.readouterr().out
    assert f"{name}:" in out and "run(s) done" in out
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    (n,) = conn.execute("SELECT COUNT(*) FROM runs WHERE experiment=?", (name,)).fetchone()
    (h,) = conn.execute("SELECT COUNT(*) FROM history").fetchone()
    assert n >= 1 and (h >= n or name == "constructions")  # constructions are not trained


def test_rerun_skips_and_export(tmp_path, capsys):
    args = ["run", "table3", "--out", str(tmp_path), "--set", "task.D=8", *TINY]
    assert main(args) == 0
    assert main(args) == 0
    assert "0 run(s) done, 2 already stored" in capsys.readouterr().out
    assert main(["export", str(tmp_path), "--format", "csv"]) == 0
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(lines) == 3


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["run", "table9"], "unknown experiment 'table9'"),
        (["run", "table3", "--set", "train.stepz=3"], "unknown config key 'train.stepz'"),
        (["run", "table3", "--set", "train.steps=abc"], "train.steps must be int, got 'abc'"),
        (["run", "table3", "--set", "steps"], "must have the form key=value"),
        (["export", "/nonexistent/dir"], "no results database"),
    ],
)
def test_bad_arguments_are_clean_errors(argv, pattern, capsys, tmp_path):
    if argv[0] == "run":
        argv = [*argv, "--out", str(tmp_path)]
    assert main(argv) == 2
    assert pattern in capsys.readouterr().err


def test_every_command_has_complete_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert p.description, name
        for action in p._actions:
            if action.dest != "help" and action.option_strings:
                assert action.help, f"{name} {action.option_strings}"
        assert "usage:" in text


@pytest.mark.parametrize("name", ["thm5.3", "cor4.9", "thm4.8", "thm5.2", "nonlinear-router"])
def test_construct_prints_a_summary(name, capsys):
    assert main(["construct", name]) == 0
    out = capsys.readouterr().out
    assert "expert paths" in out and "sup error" in out and "bound" in out


def test_construct_reports_pieces_and_all_paths(capsys):
    assert main(["construct", "thm5.3", "--set", "E=2", "--set", "L=3", "--set", "m=8"]) == 0
    out = capsys.readouterr().out
    assert "8 seen / 8 possible" in out and "linear pieces on the diagonal 16" in out


def test_construct_bad_arguments(capsys):
    assert main(["construct", "thm9"]) == 2
    assert "unknown construction 'thm9'" in capsys.readouterr().err
    assert main(["construct", "thm5.3", "--set", "E=0"]) == 2
    assert "E must be >= 1, got 0" in capsys.readouterr().err


def test_constructions_experiment_stores_bounds_and_paths(tmp_path, capsys):
    from moelab.experiments.store import ResultStore

    args = ["--set", "construction.m=8", "--quiet", "--out", str(tmp_path)]
    assert main(["run", "constructions", *args]) == 0
    runs = {r.labels["construction"]: r for r in ResultStore(tmp_path, create=False).runs()}
    assert len(runs) == 5
    thm53 = runs["Thm 5.3, Eq. (4), E=3, L=2"]
    assert thm53.config["construction"] == {"name": "thm5.3", "m": 8, "args": {"E": 3, "L": 2}}
    assert thm53.metrics["num_paths"] == thm53.metrics["paths_possible"] == 9
    assert thm53.metrics["misrouted"] == 0 and thm53.test_sup <= thm53.metrics["bound"]


def test_constructions_experiment_reports_bounds_and_paths(tmp_path, capsys):
    args = ["--set", "construction.m=8", "--quiet", "--out", str(tmp_path)]
    assert main(["run", "constructions", *args]) == 0
    assert main(["report", str(tmp_path), "--experiment", "constructions"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## constructions" in report and "| Thm 5.3, Eq. (4), E=3, L=2 | 8 |" in report
    assert "9 / 9" in report and (tmp_path / "figures" / "constructions-rate.png").exists()


def test_reproduce_measures_the_table4_contrast_without_the_users_training_overrides(
        tmp_path, monkeypatch, capsys):
    import moelab.cli as cli
    from moelab.experiments.store import ResultStore

    monkeypatch.setattr(cli, "REPRODUCED", ("table3",))
    args = ["reproduce", "--seeds", "1", "--set", "train.steps=2", "--set", "train.test_size=16",
            "--set", "task.D=8", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    runs = ResultStore(tmp_path, create=False).runs()
    assert {r.experiment for r in runs} == {"table3", "constructions"}
    assert (tmp_path / "report.md").exists()
