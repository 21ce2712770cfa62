"""A small synthetic results database: the registry's own grids (labels and configs as a sweep
writes them) with made-up but plausible metrics and routing pictures, so the report can be built
in seconds without training anything."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from moelab.experiments.config import RunConfig
from moelab.experiments.registry import get_experiment
from moelab.experiments.store import ResultStore

SEEDS = 2


def _circle_picture(D: int) -> dict:
    angles = [2 * math.pi * k / 360 for k in range(360)]
    shift = {16: 0, 32: 1, 64: 2, 128: 3}.get(D, 0)
    return {"kind": "circle", "coords": angles,
            "paths": [(int(a // (math.pi / 2)) + shift) % 4 for a in angles]}


def _grid_picture(deep: bool) -> dict:
    ticks = [(k + 0.5) / 16 for k in range(48)]
    paths = []
    for x1 in ticks:
        for x2 in ticks:
            i, j = int(x1), int(x2)
            paths.append(3 * i + j if deep else min(2 * i + (j > 1), 5))
    return {"kind": "grid", "coords": ticks, "paths": paths}


def _fake(run: RunConfig) -> tuple[float, dict, dict]:
    """(test MSE, metrics, routing) for one run of the registry's grids."""
    wobble = 1 + 0.15 * run.seed
    lab = run.labels
    routing: dict = {"load": [[0.25] * 4]}
    extra: dict = {"parameters": 200, "active_parameters": 80}
    if run.experiment == "table3":
        mse = (3.3e-4 if lab["recipe"] == "paper" else 1.2e-4) * wobble
        routing["picture"] = _circle_picture(run.task.D)
        extra.update(num_paths=4, pieces_separated=4, distinct_majority_paths=4, regions=4)
    elif run.experiment == "table4":
        m, deep = run.model.moe.experts.hidden, lab["model"] == "2-3-MoE"
        mse = 8e-5 * (m / 16) ** (-1.6 if deep else -0.1) * wobble
        routing = ({"load": [[1 / 3] * 3, [1 / 3] * 3]} if deep else {"load": [[1 / 6] * 6]})
        routing["picture"] = _grid_picture(deep)
        extra.update(num_paths=9 if deep else 6, pieces_separated=9 if deep else 3,
                     distinct_majority_paths=9 if deep else 6, regions=9)
    elif run.experiment == "dense-vs-moe":
        width = run.model.moe.experts.hidden if run.model.kind == "moe" else run.model.dense_hidden
        active = (run.task.D + 2) * width + (4 * run.task.D if run.model.kind == "moe" else 0)
        extra.update(active_parameters=active, parameters=active * 4)
        mse = 1.0 / (active * (4 if run.model.kind == "moe" else 1)) * wobble
    elif run.experiment == "depth":
        L, deep = run.task.L, run.model.layers > 1
        mse = (1e-5 if deep else 1e-3) * wobble
        routing = {"load": [[1 / 3] * 3] * L if deep else [[1 / (3 * L)] * (3 * L)]}
        extra.update(num_paths=3**L if deep else 3 * L, pieces_separated=3**L if deep else 2 * L,
                     distinct_majority_paths=3**L if deep else 3 * L, regions=3**L)
    elif run.experiment == "gating":
        mse = (1e-2 if lab["model"].startswith("1 layer, linear") else 2e-4) * wobble
        extra.update(routing_purity=0.7 if "linear router" in lab["model"] else 0.98)
    elif run.experiment == "lowdim-experts":
        plain = lab["experts"] == "plain"
        mse = 1e-4 * wobble
        extra.update(parameters=4 * (run.task.D * 16 + 33) if plain else 4 * (2 * run.task.D + 70))
    elif run.experiment == "intrinsic":
        mse = 1e-4 * (10 ** ((run.task.d or 1) - 1)) * wobble
    elif run.experiment == "constructions":  # as measured: sup error ~ m^-2, within the bound
        sup = 0.75 * run.construction.m ** -2.0
        metrics = {"test_mse": sup**2 / 4, "test_sup": sup, "bound": 2 * sup, "num_paths": 9,
                   "paths_possible": 9, "misrouted": 0.0, "parameters": 500,
                   "active_parameters": 300}
        return sup**2 / 4, metrics, {"paths_seen": 9, "paths_possible": 9}
    else:
        mse = 1e-3 * wobble
    metrics = {"test_mse": mse, "test_sup": 10 * math.sqrt(mse), "train_seconds": 1.0, **extra}
    metrics.update({k: v for k, v in routing.items() if isinstance(v, (int, float))})
    return mse, metrics, routing


def add_runs(store: ResultStore, experiment: str, *, seeds: int = SEEDS,
             keep: Callable[[RunConfig], bool] | None = None,
             overrides: dict | None = None,
             mse: Callable[[RunConfig], float] | None = None) -> int:
    """Add fake runs of a registered experiment's grid (those ``keep`` accepts, with the user's
    ``overrides``; ``mse(run)`` replaces the fake test MSE); return how many."""
    runs = [r for r in get_experiment(experiment).runs(seeds=seeds, overrides=overrides)
            if keep is None or keep(r)]
    for run in runs:
        fake_mse, metrics, routing = _fake(run)
        if mse is not None:
            fake_mse = metrics["test_mse"] = mse(run)
        store.add(run_id=run.run_id(), experiment=run.experiment, labels=run.labels,
                  seed=run.seed, config=run.to_dict(), test_mse=fake_mse,
                  test_sup=metrics["test_sup"], metrics=metrics, routing=routing, seconds=1.5,
                  history=[{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}],
                  evals=[{"step": 1, "test_mse": fake_mse, "test_sup": metrics["test_sup"]}])
    return len(runs)


def add_custom(store: ResultStore) -> int:
    """Two seeds of an unregistered experiment with its own label."""
    for seed in range(2):
        store.add(run_id=f"custom-{seed}", experiment="custom-sweep", labels={"lr": "0.01"},
                  seed=seed, config={"experiment": "custom-sweep"}, test_mse=2e-3 * (1 + seed),
                  test_sup=0.1, metrics={}, routing={}, seconds=2.0, history=[], evals=[])
    return 2


@pytest.fixture(scope="session")
def fake_runs():
    """``fake_runs(store, experiment)`` adds fake runs of a registered experiment's grid."""
    return add_runs


@pytest.fixture(scope="session")
def paper_results(tmp_path_factory):
    """(directory, number of runs) of a database with the table3 and table4 grids (two seeds),
    the constructions (one seed) and one unregistered experiment."""
    directory = tmp_path_factory.mktemp("paper")
    store = ResultStore(directory)
    total = (add_runs(store, "table3") + add_runs(store, "table4") + add_custom(store)
             + add_runs(store, "constructions", seeds=1))
    return directory, total


@pytest.fixture(scope="session")
def study_store(tmp_path_factory):
    """A store holding the grids of moelab's own studies (dense-vs-moe on the circle only, depth,
    gating, lowdim-experts, intrinsic)."""
    store = ResultStore(tmp_path_factory.mktemp("studies"))
    add_runs(store, "dense-vs-moe", keep=lambda r: r.labels["task"] == "circle d=1")
    for name in ("depth", "gating", "lowdim-experts", "intrinsic"):
        add_runs(store, name)
    return store
