"""Nonlinear routers halve the depth (docs/paper.md Sec. 4, suggestion 1).

The linear-router constructions spend a layer on routing features: layer 1 computes tau ~ rho for the
manifold case, layer 2l the piece scores for Eq. (4). A router that is itself a two-layer ReLU net
(``RouterConfig(scorer="mlp", depth=2)``) computes those features inside the router, so:

* manifold (Cor 4.9): depth 1. The router's hidden layer is tau's units, its output layer tau's
  output map; the E experts are the chart experts of :mod:`moelab.constructions.manifold`, reading
  x directly. Routing and output equal the depth-2 model's (same tau, same experts), with neither
  the pass-through units for x nor the tau block between the layers.
* piecewise (Thm 5.3): depth L. Layer l's router has E + 1 hidden units, relu(x_l) and
  relu(x_l - c_j) with c_j = j + 1/2, and scores -|x_l - c_j| = relu(x_l) - 2 relu(x_l - c_j) - c_j
  (x_l >= 0): the nearest centre wins, i.e. the piece of x_l; ties at the integers as in
  :mod:`moelab.constructions.piecewise`. The experts are those of the depth-2L construction.

Each summary's ``extra`` holds the linear-router construction's depth, parameters and sup error on
the same points, and the largest difference between the two models' outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moelab._validation import positive_int
from moelab.analysis.params import count_parameters
from moelab.constructions.assembly import LayerSpec, Net, build_layer, build_stack
from moelab.constructions.manifold import (
    chart_parts,
    manifold_specs,
    routed_to_argmax,
    summarize_charts,
)
from moelab.constructions.piecewise import (
    interpolant_experts,
    piecewise_eval_points,
    piecewise_specs,
    resolve_piecewise_task,
    summarize_pieces,
)
from moelab.constructions.summary import ConstructionSummary, eval_points, route
from moelab.layers import DeepMoE, MoELayer
from moelab.tasks import ManifoldTask, PiecewiseTask

_F64 = torch.float64


def _comparison(linear, x: Tensor, y_true: Tensor, y: Tensor) -> dict[str, float | int | str]:
    y_lin, _ = route(linear, x)
    params = count_parameters(linear)
    return {
        "linear-router depth": len(linear.moe_layers),
        "linear-router params total": params.total,
        "linear-router params active": params.active,
        "linear-router sup error": float((y_lin - y_true).abs().max()),
        "max |y - y_linear|": float((y - y_lin).abs().max()),
    }


def build_nonlinear_manifold_moe(
    task: ManifoldTask,
    m: int = 16,
    *,
    tau: str = "auto",
    tau_knots: int = 16,
    n_eval: int = 4000,
    seed: int = 0,
    dtype: torch.dtype = _F64,
) -> tuple[MoELayer, ConstructionSummary]:
    """One MoE layer with a two-layer ReLU router computing tau ~ rho, and chart experts (Cor 4.9's
    target at depth 1). Arguments as for :func:`~moelab.constructions.manifold.build_manifold_moe`."""
    parts = chart_parts(task, m, tau=tau, tau_knots=tau_knots, seed=seed)
    task, tau_ = parts.task, parts.partition.net
    router = [(tau_.weight.T.contiguous(), tau_.bias), (tau_.out, tau_.out_bias)]
    maps = tuple(ex.add_to(Net(task.D, 1), src=0, dst=0).affine_maps() for ex in parts.experts)
    model = build_layer(LayerSpec(task.D, 1, maps, mlp_router=router), dtype)
    linear = build_stack(manifold_specs(parts), dtype)
    x = eval_points(task, n_eval, seed)
    y, ids = route(model, x.to(dtype))
    extra = {"routed to argmax rho": routed_to_argmax(task, x, ids[:, 0]),
             **_comparison(linear, x.to(dtype), task.target(x), y)}
    summary = summarize_charts(model, parts, x, y, ids, layer=0,
                               theorem="Cor 4.9 with an MLP router (depth 1, suggestion 1)", extra=extra)
    return model, summary


def _router(E: int, L: int, l: int) -> list[tuple[Tensor, Tensor]]:
    """Router of layer l: hidden relu(x_l), relu(x_l - c_j); scores -|x_l - c_j|."""
    centres = torch.arange(E, dtype=_F64) + 0.5
    w1 = torch.zeros(L, E + 1, dtype=_F64)
    w1[l] = 1.0
    b1 = torch.cat([torch.zeros(1, dtype=_F64), -centres])
    w2 = torch.cat([torch.ones(1, E, dtype=_F64), -2 * torch.eye(E, dtype=_F64)])
    return [(w1, b1), (w2, -centres)]


def build_nonlinear_piecewise_moe(
    task_or_E: PiecewiseTask | int,
    L: int | None = None,
    subfunctions=None,
    m: int = 16,
    *,
    per_piece: int = 1000,
    n_random: int = 2000,
    seed: int = 0,
    dtype: torch.dtype = _F64,
) -> tuple[DeepMoE, ConstructionSummary]:
    """A depth-L MoE with two-layer ReLU routers for an Eq. (4) target (Thm 5.3's target at half the
    depth). Arguments as for :func:`~moelab.constructions.piecewise.build_piecewise_moe`."""
    task = resolve_piecewise_task(task_or_E, L, subfunctions)
    m = positive_int("m", m)
    specs = [
        LayerSpec(task.L, task.L, interpolant_experts(task, l, m, task.L),
                  mlp_router=_router(task.E, task.L, l))
        for l in range(task.L)
    ]
    model = build_stack(specs, dtype)
    linear = build_stack(piecewise_specs(task, m), dtype)
    x = piecewise_eval_points(task, per_piece=positive_int("per_piece", per_piece),
                              n_random=n_random, seed=seed)
    y, ids = route(model, x.to(dtype))
    summary = summarize_pieces(
        model, task, m, x, y, ids, layers=list(range(task.L)),
        theorem="Thm 5.3 with MLP routers (depth L, suggestion 1)",
        routing_note="points whose layer-l expert is not the piece of x_l, for some l",
        extra=_comparison(linear, x.to(dtype), task.components(x), y),
    )
    return model, summary
