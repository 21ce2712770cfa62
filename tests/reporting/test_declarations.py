"""Declarations meet runs that lack what they ask for: only missing data is forgiven (the
declaration is skipped with a note); a bug in a declaration is raised, not turned into a note."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from moelab.experiments.checks import Check, Flat, Verdict, status_of
from moelab.experiments.config import TaskSpec
from moelab.experiments.displays import Columns, Curves, Related
from moelab.experiments.registry import EXPERIMENTS, register, unnamed
from moelab.experiments.spec import Axis, Experiment
from moelab.experiments.store import ResultStore
from moelab.reporting import build_section
from moelab.reporting.markdown import table_markdown
from moelab.reporting.render import Table, render_figures, render_tables


@dataclass(frozen=True)
class Broken:
    claim: str = "a check with a bug"

    def evaluate(self, grid):
        return [1 / 0]


@pytest.fixture
def toy_runs(tmp_path):
    """Register experiment ``toy`` with the given checks and figures; return its stored runs."""
    before = dict(EXPERIMENTS)

    def make(checks=(), tables=(), figures=()):
        register("toy")(lambda: Experiment(
            title="toy", claim="c", base=unnamed(task=TaskSpec(D=8)),
            axes=(Axis.of("D", "task.D", (8, 16)),), seeds=1, checks=checks, tables=tables,
            figures=figures))
        store = ResultStore(tmp_path)
        for run in EXPERIMENTS["toy"]().runs():
            store.add(run_id=run.run_id(), experiment="toy", labels=run.labels, seed=run.seed,
                      config=run.to_dict(), test_mse=1e-3, test_sup=0.1, metrics={},
                      routing={}, seconds=1.0, history=[], evals=[])
        return store.runs("toy")

    yield make
    EXPERIMENTS.clear()
    EXPERIMENTS.update(before)


def test_a_declaration_asking_for_a_config_path_the_runs_lack_is_skipped_with_a_note(toy_runs):
    runs = toy_runs(checks=(Flat("flat in the renamed key", x="task.renamed", tolerance=1.5),),
                    figures=(Curves("toy", "t", x="model.moe.gone"),))
    section = build_section("toy", runs)
    assert not section.verdicts
    assert any("Skipped Flat" in n and "'task.renamed'" in n for n in section.notes)
    assert any("Skipped Curves" in n and "'model.moe.gone'" in n for n in section.notes)
    assert [f.name for f in section.figures] == ["toy-test-mse"]  # the default figure stands in


def test_a_bug_in_a_declaration_is_raised_not_turned_into_a_note(toy_runs):
    with pytest.raises(ZeroDivisionError):
        build_section("toy", toy_runs(checks=(Broken(),)))


@dataclass(frozen=True)
class Small(Check):
    """A new check: the median test MSE is below ``limit``, per D."""

    claim: str
    limit: float
    per: tuple = ("D",)

    def verdict(self, grid, cells, check):
        medians = [c.median("test_mse") for c in cells]
        return Verdict(status_of([m < self.limit for m in medians]), check, f"medians {medians}")


@dataclass(frozen=True)
class CellCount:
    """A new kind of table, declared: how many grid points there are."""

    caption: str = "grid points"


@render_tables.register(CellCount)
def _cell_count(display, grid, grid_of=None):
    """... and its renderer."""
    return [Table(display.caption, ("cells",), ((str(len(grid.cells)),),))]


def test_a_new_check_and_a_new_table_with_its_renderer_need_no_change_to_the_report(toy_runs):
    runs = toy_runs(checks=(Small("small", limit=1e-2), Small("tiny", limit=1e-4)),
                    tables=(CellCount(),))
    section = build_section("toy", runs)
    assert [(v.status, v.check) for v in section.verdicts] == [
        ("HELD", "small (D 8)"), ("HELD", "small (D 16)"),
        ("NOT HELD", "tiny (D 8)"), ("NOT HELD", "tiny (D 16)")]
    assert [table_markdown(t) for t in section.tables] == [
        "**grid points**\n\n| cells |\n| --- |\n| 2 |"]


@dataclass(frozen=True)
class Unrendered:
    """A table declaration that reporting has no renderer for."""


def test_a_declaration_without_a_renderer_is_a_type_error_naming_it(toy_runs):
    runs = toy_runs(tables=(Unrendered(),))
    with pytest.raises(TypeError, match=r"no tables renderer for a .*test_declarations\.Unrendered"):
        build_section("toy", runs)
    with pytest.raises(TypeError, match=r"no figures renderer for a .*\.Unrendered"):
        render_figures(Unrendered(), None)


def test_a_related_table_needs_the_other_grids():
    with pytest.raises(TypeError, match=r"Related table \('constructions'\) needs grid_of"):
        render_tables(Related("constructions", Columns(), missing="run it"), None)
