"""Executing one run in the current process: build, initialise, train, measure.

:func:`execute` is deterministic given the configuration; it neither reads nor writes the results
store (the scheduler, :mod:`moelab.experiments.schedule`, does that).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from moelab.analysis import count_parameters
from moelab.experiments.build import build_model, build_task
from moelab.experiments.config import AnyRun, ConstructionRun, RunConfig
from moelab.experiments.measure import routing_summary
from moelab.training import train
from moelab.training.init import data_init
from moelab.training.loop import RouterGradientWarning
from moelab.training.recipes import RESTART_SEED_STRIDE, fit


@dataclass(frozen=True)
class RunOutcome:
    """A finished run, ready to store."""

    run: AnyRun
    test_mse: float
    test_sup: float
    metrics: dict[str, Any]
    routing: dict[str, Any]
    history: list[dict[str, float]]
    evals: list[dict[str, float]]
    seconds: float


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: the paper's models are tiny, and intra-op threads only add
    synchronisation (and contend with parallel workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: Runs draw from torch's process-wide default generator (initialisation, router noise, each
#: inside a forked RNG state) and set its thread count: two runs in threads of one process would
#: interleave their draws, so runs in threads (e.g. a ThreadPoolExecutor) take turns.
_PROCESS_STATE = threading.Lock()


def execute(run: AnyRun, *, progress: bool = False) -> RunOutcome:
    """Build, initialise, train and measure a training run, or build and measure a construction
    (deterministic given the config; runs in threads of one process take turns)."""
    with _PROCESS_STATE, single_thread():
        if isinstance(run, ConstructionRun):
            return _measure_construction(run)
        return _train_and_measure(run, progress=progress)


def _train_and_measure(run: RunConfig, *, progress: bool) -> RunOutcome:
    start = time.perf_counter()
    task = build_task(run.task)

    def build(restart: int = 0) -> torch.nn.Module:
        seed = run.seed + restart * RESTART_SEED_STRIDE
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(run, task.d_in, task.d_out)
            if run.model.init == "data":
                gen = torch.Generator().manual_seed(seed + 12345)
                x_init, _ = task.sampler(4096, gen)
                data_init(model, x_init, generator=gen)
        return model

    with warnings.catch_warnings():
        if run.model.init == "data":  # the recipe keeps the data-initialised routers fixed on purpose
            warnings.simplefilter("ignore", RouterGradientWarning)
        extra: dict[str, Any] = {}
        if run.train.method.is_plain:
            model = build()
            result = train(model, task.sampler, run.train, seed=run.seed, progress=progress,
                           description=describe_run(run))
        else:  # a training method of moelab.training.recipes
            fitted = fit(build, task.sampler, run.train, seed=run.seed, progress=progress,
                         description=describe_run(run))
            model, result = fitted.model, fitted.result
            extra = {"restart_chosen": fitted.restart} if fitted.validation_mse else {}
    counts = count_parameters(model)
    metrics: dict[str, Any] = {"test_mse": result.final.mse, "test_sup": result.final.sup_error,
                               "parameters": counts.total, "active_parameters": counts.active,
                               "train_seconds": result.seconds, **extra}
    routing = routing_summary(model, task, seed=run.seed) if run.model.kind == "moe" else {}
    metrics.update({k: v for k, v in routing.items() if isinstance(v, (int, float))})
    return RunOutcome(run, result.final.mse, result.final.sup_error, metrics, routing,
                      result.history, result.evals, time.perf_counter() - start)


def _measure_construction(run: ConstructionRun) -> RunOutcome:
    """A hand-built construction, measured as built (no training, no history)."""
    from moelab.constructions import CONSTRUCTIONS

    start = time.perf_counter()
    spec = run.construction
    if spec.name not in CONSTRUCTIONS:
        raise ValueError(f"construction.name={spec.name!r} is unknown; known: "
                         f"{sorted(CONSTRUCTIONS)}")
    width = {} if spec.m is None else {"m": spec.m}
    _, summary = CONSTRUCTIONS[spec.name](**width, **spec.args, seed=run.seed)
    metrics: dict[str, Any] = {
        "test_mse": summary.mse, "test_sup": summary.sup_error, "bound": summary.bound,
        "parameters": summary.params_total, "active_parameters": summary.params_active,
        "num_paths": summary.paths_seen, "paths_possible": summary.paths_possible,
        "misrouted": summary.misrouted, "depth": summary.depth,
    }
    routing = {"paths_seen": summary.paths_seen, "paths_possible": summary.paths_possible}
    return RunOutcome(run, summary.mse, summary.sup_error, metrics, routing, [], [],
                      time.perf_counter() - start)


def describe_run(run: AnyRun) -> str:
    """The run's labels as ``k=v`` words (its experiment's name if it has none)."""
    return " ".join(f"{k}={v}" for k, v in run.labels.items()) or run.experiment
