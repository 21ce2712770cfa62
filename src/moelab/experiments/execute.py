"""Executing runs in the current process: build, initialise, train, measure.

:func:`execute` runs one configuration (the reference path); :func:`execute_batch` runs several
that share a :func:`batch_key` as one batched model (:mod:`moelab.training.batched`), each
measured on its own model as :func:`execute` measures it. Both are deterministic given their
configurations; neither reads nor writes the results store (the scheduler,
:mod:`moelab.experiments.schedule`, does that).
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from moelab.analysis import count_parameters
from moelab.experiments.build import BuiltTask, build_model, build_task
from moelab.experiments.config import AnyRun, ConstructionRun, RunConfig
from moelab.experiments.measure import held_out_metrics, routing_summary
from moelab.training import TrainResult, train
from moelab.training.batched import (
    Member,
    layer_alone_reason,
    train_alone_reason,
    train_batched,
)
from moelab.training.init import data_init
from moelab.training.loop import RouterGradientWarning, warn_if_routers_cannot_learn
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


def _prepare(run: RunConfig) -> tuple[BuiltTask, nn.Module]:
    """The run's task and its model, initialised (seeded by the run's seed)."""
    built = build_task(run.task)
    return built, _build(run, built)


def _build(run: RunConfig, built: BuiltTask, restart: int = 0) -> nn.Module:
    """The run's model, initialised; restart r > 0 of a training method draws from its own seed."""
    seed = run.seed + restart * RESTART_SEED_STRIDE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(run, built.task.d_in, built.task.d_out)
        if run.model.init == "data":
            gen = torch.Generator().manual_seed(seed + 12345)
            x_init, _ = built.task(4096, gen)
            data_init(model, x_init, generator=gen)
    return model


@contextmanager
def _router_warnings(run: RunConfig) -> Iterator[None]:
    with warnings.catch_warnings():
        if run.model.init == "data":  # the recipe keeps the data-initialised routers fixed on purpose
            warnings.simplefilter("ignore", RouterGradientWarning)
        yield


def _train_and_measure(run: RunConfig, *, progress: bool) -> RunOutcome:
    start = time.perf_counter()
    built = build_task(run.task)
    extra: dict[str, Any] = {}
    with _router_warnings(run):
        if run.train.method.is_plain:
            model = _build(run, built)
            result = train(model, built.task, run.train, seed=run.seed, test_set=built.test_set,
                           progress=progress, description=describe_run(run))
        else:  # a training method of moelab.training.recipes
            if built.test_set is not None:
                raise ValueError(
                    f"train.method.name={run.train.method.name!r} is not available on a task with "
                    f"a fixed data set (task.kind={run.task.kind!r}): its validation and test "
                    "samples are drawn from the sampler; use train.method.name='plain'")
            fitted = fit(lambda restart=0: _build(run, built, restart), built.task, run.train,
                         seed=run.seed, progress=progress, description=describe_run(run))
            model, result = fitted.model, fitted.result
            extra = {"restart_chosen": fitted.restart} if fitted.validation_mse else {}
    return _measured(run, built, model, result, time.perf_counter() - start, extra)


def _measured(run: RunConfig, built: BuiltTask, model: nn.Module, result: TrainResult,
              seconds: float, extra: dict[str, Any] | None = None) -> RunOutcome:
    counts = count_parameters(model)
    metrics: dict[str, Any] = {"test_mse": result.final.mse, "test_sup": result.final.sup_error,
                               "parameters": counts.total, "active_parameters": counts.active,
                               "train_seconds": result.seconds, **(extra or {})}
    routing = routing_summary(model, built, seed=run.seed) if run.model.kind == "moe" else {}
    routing.update(held_out_metrics(model, built))
    metrics.update({k: v for k, v in routing.items() if isinstance(v, (int, float))})
    return RunOutcome(run, result.final.mse, result.final.sup_error, metrics, routing,
                      result.history, result.evals, seconds)


#: The fields in which the members of one batch may differ (everything else is shared): the seed,
#: the data, and the parts of a recipe a member keeps to itself (learning rate and its schedule,
#: initialisation, the top-1 combine weighting). Runs are grouped by everything else: model
#: shape, routing, steps, batch size and logging.
PER_MEMBER = ("seed", "labels", "task", "train.lr", "train.schedule", "train.warmup_steps",
              "model.init", "model.moe.router.weighting")


def batch_key(run: AnyRun) -> str | None:
    """What a run shares with the other members of its batch, or None if it trains alone:
    constructions, dense models and the runs :func:`~moelab.training.batched.alone_reason`
    excludes (capacity limits, balance biases, noisy or non-linear routers, auxiliary losses, ...).
    Runs with equal keys differ only in :data:`PER_MEMBER` and train as one batch."""
    if isinstance(run, ConstructionRun) or run.model.kind != "moe":
        return None
    if run.task.kind == "real":  # a fixed data set, evaluated on its held-out split
        return None
    if run.model.residual or run.model.moe_every != 1:
        return None
    if layer_alone_reason(run.model.moe) or train_alone_reason(run.train):
        return None
    data = run.to_dict()
    for name in PER_MEMBER:
        *path, last = name.split(".")
        parent = data
        for key in path:
            parent = parent[key]
        parent.pop(last)
    return json.dumps(data, sort_keys=True, default=str)


def constant_inputs(built: BuiltTask) -> Tensor | None:
    """The input coordinates a task's samples can make nonzero, or None (all of them): a manifold
    embedded in R^D by zero padding has x_j = 0 exactly for every j past the manifold's own
    coordinates, because the embedding's row j is zero."""
    embedding = getattr(built.task, "embedding", None)
    if not isinstance(embedding, Tensor):
        return None
    live = (embedding != 0).any(1)
    return None if bool(live.all()) else live.nonzero().squeeze(1)


def execute_batch(runs: Sequence[AnyRun]) -> list[RunOutcome]:
    """Execute runs that share a :func:`batch_key` as one batched model
    (:func:`moelab.training.batched.train_batched`), each measured on its own model exactly as
    :func:`execute` measures it; a single run, or runs without a key, run through :func:`execute`.
    Deterministic given the runs and their order."""
    keys = {batch_key(run) for run in runs}
    if len(runs) == 1 or None in keys:
        return [execute(run) for run in runs]
    if len(keys) != 1:
        raise ValueError("runs of one batch must share their batch_key; group them with "
                         "moelab.experiments.schedule.plan_batches")
    with _PROCESS_STATE, single_thread():
        start = time.perf_counter()
        prepared = [_prepare(run) for run in runs]
        members = [Member(model, built.task, run.train, run.seed,
                          stream=json.dumps(run.to_dict()["task"], sort_keys=True, default=str)
                          + f"/{run.seed}", inputs=constant_inputs(built))
                   for run, (built, model) in zip(runs, prepared, strict=True)]
        for run, member in zip(runs, members, strict=True):
            with _router_warnings(run):
                warn_if_routers_cannot_learn(member.model, member.config)
        with warnings.catch_warnings():  # said above, run by run
            warnings.simplefilter("ignore", RouterGradientWarning)
            results = train_batched(members)
        share = (time.perf_counter() - start) / len(runs)
        outcomes = []
        for run, (built, model), result in zip(runs, prepared, results, strict=True):
            begin = time.perf_counter()
            outcome = _measured(run, built, model, result, 0.0)
            outcomes.append(replace(outcome, seconds=share + time.perf_counter() - begin))
        return outcomes


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
