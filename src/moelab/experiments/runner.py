"""Execute runs: build the task and model a :class:`RunConfig` describes, train, measure, store.

:func:`execute` runs one configuration in the current process and returns a :class:`RunOutcome`;
:func:`run_all` runs many, skipping those already in the :class:`ResultStore`, optionally in
parallel worker processes, and writes each finished run to the store as soon as it finishes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from moelab.analysis import count_parameters, expert_paths
from moelab.experiments.config import RunConfig, TaskSpec
from moelab.experiments.store import ResultStore
from moelab.layers import DeepMoE, DenseMLP, record_routing
from moelab.tasks import build_manifold_task, build_piecewise_task
from moelab.training import train
from moelab.training.init import data_init


@dataclass(frozen=True)
class BuiltTask:
    """A task ready for training: its sampler, widths and ground-truth labeller."""

    sampler: Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
    d_in: int
    d_out: int
    truth: Callable[[Tensor], Tensor]  # (n, d_in) -> (n,) chart or flat piece id
    n_truth: int
    picture_points: Tensor  # points on which routing pictures are drawn
    picture_kind: str  # "circle" (angles) or "grid" (square cells) or "none"
    picture_coords: Tensor


def build_task(spec: TaskSpec) -> BuiltTask:
    """The task of ``spec`` with its sampler ``(n, generator) -> (x, y)`` and ground truth."""
    if spec.kind == "piecewise":
        task = build_piecewise_task(E=spec.E, L=spec.L, output=spec.output, noise=spec.noise)

        def sampler(n, gen):
            s = task.sample(n, generator=gen)
            return s.x, s.y

        pts, coords = _grid_points(spec.E, spec.L)
        return BuiltTask(sampler, spec.L, task.out_dim, task.piece_id, task.n_pieces, pts,
                         "grid" if spec.L == 2 else "none", coords)
    mtask = build_manifold_task(
        spec.manifold, D=spec.D, d=spec.d, n_charts=spec.n_charts, embedding=spec.embedding,
        target=spec.target, smoothness=spec.smoothness, noise=spec.noise, seed=spec.task_seed,
    )

    def msampler(n, gen):
        s = mtask.sample(n, generator=gen)
        return s.x, s.y

    kind, pts, coords = "none", torch.zeros(0, spec.D), torch.zeros(0)
    if spec.manifold == "circle":
        theta = torch.linspace(0, 2 * math.pi, 361)[:-1]
        kind, coords = "circle", theta
        pts = mtask.from_latent(theta[:, None]).to(torch.float32)
    return BuiltTask(msampler, spec.D, 1, mtask.chart_of, mtask.n_charts, pts, kind, coords)


def _grid_points(E: int, L: int, per_unit: int = 16) -> tuple[Tensor, Tensor]:
    if L != 2:
        return torch.zeros(0, L), torch.zeros(0)
    ticks = (torch.arange(E * per_unit) + 0.5) / per_unit
    gx, gy = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), ticks


def build_model(run: RunConfig, d_in: int, d_out: int) -> nn.Module:
    """The model of ``run.model`` for inputs of width d_in and outputs of width d_out."""
    spec = run.model
    if spec.kind == "dense":
        return DenseMLP(d_in, d_out, hidden=spec.dense_hidden, depth=spec.dense_depth)
    inner = spec.width or d_in
    widths = [d_in] + [inner] * (spec.layers - 1) + [d_out]
    return DeepMoE(widths, spec.moe, residual=spec.residual, moe_every=spec.moe_every)


@dataclass(frozen=True)
class RunOutcome:
    """A finished run, ready to store."""

    run: RunConfig
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


def execute(run: RunConfig, *, progress: bool = False) -> RunOutcome:
    """Build, initialise, train and measure one run (deterministic given the config)."""
    with single_thread():
        return _execute(run, progress=progress)


def _execute(run: RunConfig, *, progress: bool) -> RunOutcome:
    if run.model.kind == "construction":
        return _construct(run)
    start = time.perf_counter()
    task = build_task(run.task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        model = build_model(run, task.d_in, task.d_out)
        if run.model.init == "data":
            gen = torch.Generator().manual_seed(run.seed + 12345)
            x_init, _ = task.sampler(4096, gen)
            data_init(model, x_init, generator=gen)
    result = train(model, task.sampler, run.train, seed=run.seed, progress=progress,
                   description=_describe(run))
    counts = count_parameters(model)
    metrics: dict[str, Any] = {"test_mse": result.final.mse, "test_sup": result.final.sup_error,
                               "parameters": counts.total, "active_parameters": counts.active,
                               "train_seconds": result.seconds}
    routing = routing_summary(model, task, seed=run.seed) if run.model.kind == "moe" else {}
    metrics.update({k: v for k, v in routing.items() if isinstance(v, (int, float))})
    return RunOutcome(run, result.final.mse, result.final.sup_error, metrics, routing,
                      result.history, result.evals, time.perf_counter() - start)


def _construct(run: RunConfig) -> RunOutcome:
    """A hand-built construction, measured as built (no training, no history); its expert width m
    is ``model.moe.expert_hidden`` unless ``construction_args`` sets it."""
    from moelab.constructions import CONSTRUCTIONS

    start = time.perf_counter()
    name = run.model.construction
    if name not in CONSTRUCTIONS:
        raise ValueError(f"model.construction={name!r} is unknown; known: {sorted(CONSTRUCTIONS)}")
    args = {"m": run.model.moe.expert_hidden, **run.model.construction_args, "seed": run.seed}
    _, summary = CONSTRUCTIONS[name](**args)
    metrics: dict[str, Any] = {
        "test_mse": summary.mse, "test_sup": summary.sup_error, "bound": summary.bound,
        "parameters": summary.params_total, "active_parameters": summary.params_active,
        "num_paths": summary.paths_seen, "paths_possible": summary.paths_possible,
        "misrouted": summary.misrouted, "depth": summary.depth,
    }
    routing = {"paths_seen": summary.paths_seen, "paths_possible": summary.paths_possible}
    return RunOutcome(run, summary.mse, summary.sup_error, metrics, routing, [], [],
                      time.perf_counter() - start)


def _describe(run: RunConfig) -> str:
    return " ".join(f"{k}={v}" for k, v in run.labels.items()) or run.experiment


@torch.no_grad()
def routing_summary(model: nn.Module, task: BuiltTask, *, seed: int, n: int = 8192
                    ) -> dict[str, Any]:
    """Routing statistics of a trained MoE model on fresh test points.

    ``num_paths``: distinct expert paths (top-1 expert per MoE layer); ``pieces_separated``: how many
    ground-truth regions (charts or pieces) get a majority path no other region has;
    ``distinct_majority_paths``: how many different paths the regions' majority paths are;
    ``routing_purity``: the fraction of points whose path is their region's majority path;
    ``load``: per layer, the fraction of tokens per expert; ``picture``: the path of each picture
    point (circle angles or square cells) for the report.
    """
    model.eval()
    x, _ = task.sampler(n, torch.Generator().manual_seed(seed + 2_000_003))
    with record_routing(model) as record:  # the routing of expert_paths' forward pass
        paths = expert_paths(model, x).paths
    load = [(r.tokens_per_expert.float() / r.tokens_per_expert.sum()).tolist()
            for r in record.routings]
    truth = task.truth(x)
    path_ids, inverse = torch.unique(paths, dim=0, return_inverse=True)
    joint = torch.zeros(task.n_truth, len(path_ids), dtype=torch.long)
    joint.index_put_((truth, inverse), torch.ones_like(truth), accumulate=True)
    present = joint.sum(1) > 0
    majority = joint.argmax(1)[present]
    unique_major, major_counts = torch.unique(majority, return_counts=True)
    separated = int((major_counts == 1).sum())
    purity = float(joint.max(1).values.sum() / n)
    summary: dict[str, Any] = {
        "num_paths": len(path_ids),
        "pieces_separated": separated,
        "distinct_majority_paths": len(unique_major),
        "regions": int(present.sum()),
        "routing_purity": purity,
        "load": load,
    }
    if task.picture_kind != "none":
        summary["picture"] = {
            "kind": task.picture_kind,
            "coords": task.picture_coords.tolist(),
            "paths": _path_codes(expert_paths(model, task.picture_points).paths, model),
        }
    return summary


def _path_codes(paths: Tensor, model: nn.Module) -> list[int]:
    """Each path (one expert per layer) as one integer, mixed radix over the layers' E."""
    radices = [layer.num_experts for layer in model.moe_layers]
    code = torch.zeros(paths.shape[0], dtype=torch.long)
    for col, radix in enumerate(radices):
        code = code * radix + paths[:, col]
    return code.tolist()


# -- many runs ----------------------------------------------------------------------------------------

def _execute_quietly(run: RunConfig) -> RunOutcome:
    return execute(run)


def store_outcome(store: ResultStore, outcome: RunOutcome) -> bool:
    run = outcome.run
    return store.add(
        run_id=run.run_id(), experiment=run.experiment, labels=run.labels, seed=run.seed,
        config=run.to_dict(), test_mse=outcome.test_mse, test_sup=outcome.test_sup,
        metrics=outcome.metrics, routing=outcome.routing, seconds=outcome.seconds,
        history=outcome.history, evals=outcome.evals,
    )


def run_all(runs: Sequence[RunConfig], store: ResultStore, *, workers: int = 1,
            progress: bool = True) -> list[str]:
    """Run every configuration not yet in ``store``; return the run ids executed now.

    Each finished run is written to the store at once (atomically), so an interrupted sweep
    resumes where it stopped. ``workers`` > 1 runs independent runs in parallel processes, started
    with the "spawn" method: a script that calls this must guard its entry point with
    ``if __name__ == "__main__":`` (the workers re-import the main module).
    """
    pending, seen = [], set()
    for run in runs:
        rid = run.run_id()
        if rid not in seen and not store.has(rid):
            pending.append(run)
        seen.add(rid)
    done: list[str] = []
    bar = tqdm(total=len(pending), desc="runs", disable=not progress or not pending)
    if workers <= 1 or len(pending) <= 1:
        for run in pending:
            bar.set_postfix_str(_describe(run), refresh=True)
            store_outcome(store, execute(run, progress=progress))
            done.append(run.run_id())
            bar.update()
    else:
        workers = min(workers, len(pending), os.cpu_count() or 1)
        ctx = torch.multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_execute_quietly, run): run for run in pending}
            for future in as_completed(futures):
                outcome = future.result()
                store_outcome(store, outcome)
                done.append(outcome.run.run_id())
                bar.set_postfix_str(_describe(outcome.run), refresh=False)
                bar.update()
    bar.close()
    return done
