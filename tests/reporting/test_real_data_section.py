"""The real-data experiment through the CLI: runs stored, then its report section with verdicts,
the table of accuracy, purity and intrinsic dimensions, and its figures."""

import pytest

from moelab.cli import main
from moelab.experiments.registry import REAL_DATA

TINY = ["--set", "train.steps=3", "--seeds", "1", "--quiet"]
#: Every key the task axis sets: overriding them all collapses the axis to one task (wine in R^13).
ONE_TASK = ["--set", "task.dataset=wine", "--set", "task.D=13", "--set",
            "model.moe.num_experts=3", "--set", "model.dense_hidden=34"]
FIGURES = ("real-data-mse-vs-D.png", "real-data-accuracy-vs-D.png", "real-data-expert-dims.png")
CHECKS = ("(a) the MoE's test MSE is flat in D", "(b) the MoE beats the dense net",
          "(c) the MoE is at least as accurate", "(d) contrast: the dense net's test MSE",
          "(e) each expert's inputs keep the same intrinsic dimension")


def _section(tmp_path, capsys, *args):
    assert main(["run", "real-data", "--out", str(tmp_path), *args]) == 0
    assert main(["report", str(tmp_path)]) == 0
    capsys.readouterr()
    report = (tmp_path / "report.md").read_text()
    start = report.index("## real-data:")
    end = report.find("\n## ", start + 1)
    return report[start:end if end > 0 else None]


def test_a_toy_run_renders_the_section(tmp_path, capsys):
    section = _section(tmp_path, capsys, *TINY, *ONE_TASK)
    assert "2 runs" in section and "provisional" in section  # 3 steps, 1 seed: not registered
    for check in CHECKS:
        assert f"{check}" in section and "(task.dataset wine)" in section
    assert "| test MSE | test accuracy | routing purity | path purity |" in section
    assert "| MoE | 1 |" in section and "| dense | 1 |" in section
    for name in FIGURES:
        assert (tmp_path / "figures" / name).stat().st_size > 0
        assert f"figures/{name}" in section


@pytest.mark.slow
def test_the_whole_grid_renders_a_verdict_per_check_and_dataset(tmp_path, capsys):
    section = _section(tmp_path, capsys, *TINY)
    verdicts = [line for line in section.splitlines() if line.startswith("- **")]
    assert len(verdicts) == len(CHECKS) * len(REAL_DATA)
    for name, _, dims in REAL_DATA:
        assert sum(f"(task.dataset {name})" in v for v in verdicts) == len(CHECKS)
        for D in dims:
            assert f"| {name} D={D} | MoE | 1 |" in section
