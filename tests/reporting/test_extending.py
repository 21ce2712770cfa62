"""Adding an experiment touches one file: a toy experiment registered here, with a check and a
figure, gets its report section from a synthetic store; so does the example of docs/extending.md."""

from __future__ import annotations

import re
from pathlib import Path

from moelab.experiments.checks import Flat
from moelab.experiments.config import TaskSpec
from moelab.experiments.displays import Curves
from moelab.experiments.registry import EXPERIMENTS, register, unnamed
from moelab.experiments.spec import Axis, Experiment
from moelab.experiments.store import ResultStore
from moelab.reporting import write_report

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def _store_fake_runs(directory: Path, name: str, mse) -> None:
    store = ResultStore(directory)
    for run in EXPERIMENTS[name]().runs():
        store.add(run_id=run.run_id(), experiment=run.experiment, labels=run.labels,
                  seed=run.seed, config=run.to_dict(), test_mse=mse(run), test_sup=0.1,
                  metrics={"test_mse": mse(run)}, routing={}, seconds=1.0, history=[], evals=[])


def test_a_toy_experiment_with_a_check_and_a_figure_gets_its_section(tmp_path, clean_registry):
    @register("toy")
    def toy() -> Experiment:
        return Experiment(
            title="Toy: error against D", claim="The error does not depend on D.",
            base=unnamed(task=TaskSpec(D=8)),
            axes=(Axis.of("D", "task.D", (8, 16, 32)),), seeds=2,
            checks=(Flat("flat in D", x="D", tolerance=1.5),),
            figures=(Curves("mse", "Test MSE against D", x="D"),))

    assert toy().base.experiment == "toy"  # the name, written once, reaches every run
    _store_fake_runs(tmp_path, "toy", lambda run: 1e-3 * (1 + 0.1 * run.seed))
    md = write_report(tmp_path, experiments=["toy"]).read_text()
    assert "## toy: Toy: error against D" in md
    assert "- **HELD**: flat in D: max/min of the medians over D <= 1.5: max/min 1.00" in md
    assert "| 16 | 2 | 1.05e-03 [1.00e-03, 1.10e-03] |" in md
    assert (tmp_path / "figures" / "toy-mse.png").read_bytes().startswith(b"\x89PNG")


def test_the_example_in_docs_extending_runs_as_written(tmp_path, clean_registry):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    exec(compile(code, str(DOC), "exec"), {})
    _store_fake_runs(tmp_path, "width-sweep",
                     lambda run: 1e-2 * run.model.moe.experts.hidden ** -1.0 * (1 + 0.1 * run.seed))
    md = write_report(tmp_path, experiments=["width-sweep"]).read_text()
    assert "- **HELD**: the error falls with m: log-log slope in m: 1-4-MoE -1.00" in md
    assert (tmp_path / "figures" / "width-sweep-mse.png").is_file()
