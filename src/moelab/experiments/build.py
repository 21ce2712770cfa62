"""Building a run: the task and the model a :class:`~moelab.experiments.config.RunConfig`
describes, with what the measurements need (widths, ground truth, picture points)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moelab.experiments.config import RunConfig, TaskSpec
from moelab.layers import DeepMoE, DenseMLP
from moelab.tasks import Task, build_manifold_task, build_piecewise_task, build_real_data_task


@dataclass(frozen=True)
class BuiltTask:
    """A task ready for training and measuring: the :class:`~moelab.tasks.Task` (a sampler
    ``task(n, generator) -> (x, y)`` with its widths and ground-truth regions) and the points on
    which routing pictures are drawn. A task with a fixed data set also gives its splits as (x, y):
    ``train_set`` (what the sampler draws from) and ``test_set`` (held out, what the model is
    evaluated on); None for tasks whose test points are drawn from their distribution."""

    task: Task
    picture_points: Tensor  # points on which routing pictures are drawn
    picture_kind: str  # "circle" (angles) or "grid" (square cells) or "none"
    picture_coords: Tensor
    train_set: tuple[Tensor, Tensor] | None = None
    test_set: tuple[Tensor, Tensor] | None = None


def build_task(spec: TaskSpec) -> BuiltTask:
    """The task of ``spec``, with the points its routing pictures are drawn on."""
    if spec.kind == "piecewise":
        task = build_piecewise_task(E=spec.E, L=spec.L, output=spec.output, noise=spec.noise)
        pts, coords = _grid_points(spec.E, spec.L)
        return BuiltTask(task, pts, "grid" if spec.L == 2 else "none", coords)
    if spec.kind == "real":
        rtask = build_real_data_task(spec.dataset, D=spec.D, embedding=spec.embedding,
                                     split_seed=spec.split_seed, seed=spec.task_seed)
        train, test = rtask.train_set(), rtask.test_set()
        return BuiltTask(rtask, torch.zeros(0, spec.D), "none", torch.zeros(0),
                         train_set=(train.x, train.y), test_set=(test.x, test.y))
    mtask = build_manifold_task(
        spec.manifold, D=spec.D, d=spec.d, n_charts=spec.n_charts, embedding=spec.embedding,
        target=spec.target, smoothness=spec.smoothness, noise=spec.noise, seed=spec.task_seed,
    )
    kind, pts, coords = "none", torch.zeros(0, spec.D), torch.zeros(0)
    if spec.manifold == "circle":
        theta = torch.linspace(0, 2 * math.pi, 361)[:-1]
        kind, coords = "circle", theta
        pts = mtask.from_latent(theta[:, None]).to(torch.float32)
    return BuiltTask(mtask, pts, kind, coords)


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
