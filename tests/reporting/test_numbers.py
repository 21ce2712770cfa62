"""The numbers the report reads off its runs, and how it writes them."""

from __future__ import annotations

import math

import pytest

from moelab.experiments.checks import status_of
from moelab.experiments.config import TaskSpec
from moelab.experiments.formats import cell, ratio, sci
from moelab.experiments.grid import build_grid, spread
from moelab.experiments.registry import unnamed
from moelab.experiments.spec import Axis, Experiment
from moelab.experiments.store import StoredRun
from moelab.reporting.markdown import table_markdown
from moelab.reporting.render import Table, path_names


def test_spread_is_median_min_max_of_the_finite_values():
    s = spread([3.0, 1.0, float("nan"), 2.0, None, 10.0])
    assert (s.median, s.low, s.high, s.n, s.missing) == (2.5, 1.0, 10.0, 4, 2)
    assert cell(s) == "2.50e+00 [1.00e+00, 1.00e+01] (2 runs without a finite value)"
    assert not spread([float("inf")]).ok and cell(spread([])) == "n/a"


def test_path_names_decode_mixed_radix_first_layer_most_significant():
    names = path_names([[0.3, 0.3, 0.4], [0.5, 0.2, 0.3]])
    assert names[0] == "(0, 0)" and names[5] == "(1, 2)" and names[8] == "(2, 2)"
    assert path_names([[0.25] * 4]) == {i: f"expert {i}" for i in range(4)}


def test_formats_and_status():
    assert sci(3.4e-4) == "3.40e-04" and sci(math.nan) == "n/a"
    assert ratio(1.0) == "1.00" and ratio(22.64) == "22.6"
    assert [status_of(f) for f in ([True, True], [True, False], [False], [])] == [
        "HELD", "PARTLY", "NOT HELD", "NO DATA"]


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="has 1 cells, header has 2"):
        Table("t", ("a", "b"), (("x",),))
    assert table_markdown(Table("t", ("a", "b"), (("x", "1|2"),))).endswith("| x | 1/2 |")


def test_a_keyed_axis_places_its_cells_by_their_config_value_not_their_label():
    exp = Experiment(name="toy", title="t", claim="c", base=unnamed(task=TaskSpec(D=8)),
                     axes=(Axis.of("D", "task.D", (8, 16)),))
    runs = [StoredRun(f"r{D}", "toy", {"D": f"D={D}"}, 0, {"task": {"D": D}}, 1e-3, 0.1, {}, {},
                      1.0, "0", "") for D in (8, 16)]  # labels written by another registration
    cells = build_grid("toy", runs, exp).cells
    assert {c.label("D"): c.x("D") for c in cells} == {"D=8": 8.0, "D=16": 16.0}
    assert [c.x("task.D") for c in cells] == [c.x("D") for c in cells]


def _stored(run, config: dict) -> StoredRun:
    return StoredRun(run.run_id(), run.experiment, run.labels, run.seed, config, 1e-3, 0.1, {}, {},
                     1.0, "0", "")


def test_runs_stored_before_a_field_was_added_pool_with_later_ones():
    """A config stored by an earlier version lacks the fields added since (marked ADDED_LATER);
    they hold their defaults, so its runs pool with the same settings stored today."""
    from moelab.experiments.registry import get_experiment

    runs = [r for r in get_experiment("table3").runs(seeds=3) if r.labels["D"] == "16"]
    old = []
    for run in (r for r in runs if r.seed == 0):
        config = run.to_dict()
        for key in ("gated_form", "clamp_limit", "glu_alpha", "bank", "options"):
            del config["model"]["moe"]["experts"][key]
        old.append(_stored(run, config))
    new = [_stored(r, r.to_dict()) for r in runs if r.seed > 0]
    grid = build_grid("table3", old + new, get_experiment("table3"))
    assert grid.extra == ()
    assert sorted(len(c.runs) for c in grid.cells) == [3, 3]
    changed = [_stored(r, r.to_dict() | {"train": {**r.to_dict()["train"], "steps": 7}})
               for r in runs if r.seed == 0]
    assert build_grid("table3", changed + new, get_experiment("table3")).extra == ("train.steps",)
