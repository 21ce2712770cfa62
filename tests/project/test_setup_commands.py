"""A fresh machine needs two commands: `make reproduce` and `make test`, both idempotent, both on
the README's first screen, and CI runs the README's test command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_SCREEN = 40  # lines


def _first_screen() -> str:
    return "\n".join((ROOT / "README.md").read_text().splitlines()[:FIRST_SCREEN])


def test_readme_first_screen_gives_the_two_commands():
    screen = _first_screen()
    assert "make reproduce" in screen
    assert "make test" in screen


def test_ci_runs_the_readme_test_command():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in lines


def _dry_run(directory: Path, target: str) -> str:
    res = subprocess.run(["make", "-n", target], cwd=directory, capture_output=True, text=True,
                         timeout=30, env={**os.environ, "MAKEFLAGS": ""})
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["test", "reproduce"])
def test_set_up_runs_once(tmp_path, target):
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    fresh = _dry_run(tmp_path, target)
    assert "-m venv" in fresh and "pip install" in fresh
    # Once installed (the stamp is newer than the files it depends on), only the job runs.
    stamp = tmp_path / ".venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()
    again = _dry_run(tmp_path, target)
    assert "pip install" not in again
    assert ("pytest" if target == "test" else "moelab reproduce") in again
