"""The demo command runs end to end on a tiny budget and prints its error."""

import subprocess
import sys

from moelab.cli import main


def test_demo_prints_test_error(capsys):
    assert main(["demo", "--steps", "30", "--quiet", "--D", "8"]) == 0
    out = capsys.readouterr().out
    assert "1-4-MoE on the unit circle in R^8" in out
    mse = float(out.split("test MSE")[1].split()[0])
    assert 0 < mse < 10
    assert "tokens per expert on 4096 test points" in out


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "moelab.cli", "demo", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--steps" in res.stdout and "--D" in res.stdout


def test_bad_argument_is_a_clean_error(capsys):
    assert main(["demo", "--steps", "0", "--quiet"]) == 2
    assert "steps must be >= 1, got 0" in capsys.readouterr().err
