"""Cor 4.9 and Thm 4.8: a depth-2 MoE that realises a target on a manifold with E linear charts.

Layer 1 (dense; ``feature_experts`` copies of one net, 1 by default) maps x in R^D to (x, tau(x)):

* x passes through one unit per coordinate, x_j = relu(x_j + B) - B with B = max |p| over M, exact on
  the ball |x| <= B that contains M (half the units of relu(z) - relu(-z));
* tau ~ rho, the atlas's partition of unity, with ||tau - rho||_inf < 1/(2E)
  (:mod:`moelab.constructions.partition`: an exact-argmax profile on the circle, a least-squares
  ridge fit elsewhere).

Layer 2's router reads only the tau block (W_R = [0 | I], no bias): top-1 picks i* = argmax tau, a
chart whose domain contains x (the 1/(2E) argument, docs/paper.md Sec. 3). Expert i computes g_i o phi_i,
g_i ~ f o phi_i^{-1} on phi_i(U_i) (:mod:`moelab.constructions.charts`):

* ``expert_depth=2`` (Cor 4.9): phi_i is affine and folds into the first affine map;
* ``expert_depth=3`` (Thm 4.8's shape, H^{2,E}_{3,m}): a first hidden layer computes the chart,
  psi_i(x) = relu(phi_i(x)) - relu(-phi_i(x)), and g_i reads it. With linear charts psi_i = phi_i
  exactly, so the theorem's second term, E_{2,m}(phi_i) ||g_i||_{C^1}, is 0.

Error: the routed expert is accurate on all of its chart, so sup |model - f| <= max_i
||g_hat_i - g_i|| on phi_i(U_i): the bound reported (d = 1: a priori max_i ||g_i''|| / (8 m^2);
d >= 2: the experts' errors measured on dense grids of their chart domains). Nothing depends on D
beyond the first affine maps, so the error does not change with D (zero padding or isometry).

Shape legend: n points, D ambient width, d intrinsic dim, E charts, U units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from moelab._validation import positive_int
from moelab.constructions.assembly import Affine, LayerSpec, Net, build_stack, choice_spec, dense_spec
from moelab.constructions.baseline import MISROUTE_ENTRY, linear_router_misroute
from moelab.constructions.charts import ChartExpert, chart_experts
from moelab.constructions.partition import PartitionNet, partition_net
from moelab.constructions.summary import ConstructionSummary, eval_points, route, routed_outside, summarize
from moelab.layers import DeepMoE
from moelab.tasks import ManifoldTask

_F64 = torch.float64


def as_float64(task: ManifoldTask) -> ManifoldTask:
    """``task`` with float64 geometry and outputs and no noise (constructions are measured exactly)."""
    return replace(task, atlas=replace(task.atlas, dtype=_F64), dtype=_F64, noise=0.0)


def target_function(task: ManifoldTask):
    """x (n, D) -> f(x) (n,), float64."""
    return lambda x: task.target(x)[:, 0].to(_F64)


def three_layer_expert(expert: ChartExpert, d_in: int, src: int) -> list[Affine]:
    """Thm 4.8's expert g_hat(psi(x)): hidden layer 1 computes psi(x) = relu(phi(x)) - relu(-phi(x))
    (2d units), hidden layer 2 g_hat's units on psi, then the output map."""
    A, a, local = expert.A, expert.a, expert.local
    d = A.shape[0]
    w1 = torch.zeros(d_in, 2 * d, dtype=_F64)
    w1[src:src + A.shape[1]] = torch.cat([A, -A]).T
    b1 = torch.cat([a, -a])
    w2 = torch.cat([local.weight.T, -local.weight.T])  # (2d, U): u = h_+ - h_-
    return [(w1, b1), (w2, local.bias.clone()), (local.out.clone(), local.out_bias.clone())]


@dataclass(frozen=True, eq=False)
class ChartParts:
    """What every construction for a manifold target is made of (:func:`chart_parts`).

    Attributes:
        task: the task in float64, without noise (:func:`as_float64`).
        m: the expert width.
        partition: the partition net tau ~ rho.
        experts: the E chart experts g_i o phi_i, g_i ~ f o phi_i^{-1}.
    """

    task: ManifoldTask
    m: int
    partition: PartitionNet
    experts: tuple[ChartExpert, ...]


def chart_parts(task: ManifoldTask, m: int, *, tau: str, tau_knots: int, seed: int) -> ChartParts:
    """``task`` in float64, its partition net (:func:`~moelab.constructions.partition.partition_net`
    with ``method=tau``, ``knots=tau_knots`` and ``seed``) and its chart experts of width ``m``."""
    task = as_float64(task)
    m = positive_int("m", m)
    partition = partition_net(task.atlas, method=tau, knots=tau_knots, seed=seed)
    return ChartParts(task, m, partition, chart_experts(task.atlas, target_function(task), m))


def manifold_specs(parts: ChartParts, *, expert_depth: int = 2, feature_experts: int = 1) -> list[LayerSpec]:
    """The two layer specs of the construction (see the module docstring)."""
    task, experts = parts.task, parts.experts
    D, E = task.D, task.n_charts
    first = Net(D, D + E).carry(0, 0, D, lower=-task.manifold.radius)  # x through
    parts.partition.add_to(first, src=0, dst=D)  # tau appended
    if expert_depth == 2:
        maps = tuple(ex.add_to(Net(D + E, 1), src=0, dst=0).affine_maps() for ex in experts)
    elif expert_depth == 3:
        maps = tuple(three_layer_expert(ex, D + E, src=0) for ex in experts)
    else:
        raise ValueError(f"expert_depth must be 2 (Cor 4.9) or 3 (Thm 4.8), got {expert_depth!r}")
    return [dense_spec(first, feature_experts), choice_spec(D, 1, maps)]


def chart_bound(experts: tuple[ChartExpert, ...]) -> tuple[float, str]:
    """The first term of the bound, max_i E_{2,m}(g_i), from the experts, and how it was obtained."""
    if all(ex.bound is not None for ex in experts):
        return max(ex.bound for ex in experts), "max_i ||g_i''|| / (8 m^2), g_i = f o phi_i^-1 (d = 1)"
    return (max(ex.error for ex in experts),
            "max_i sup |g_hat_i - g_i| on a dense grid of phi_i(U_i) (d >= 2, least-squares experts)")


def routed_to_argmax(task: ManifoldTask, x: Tensor, chosen: Tensor) -> float:
    """The fraction of points x (n, D) whose chosen chart (n,) is argmax_i rho_i(x)."""
    return float((chosen == task.atlas.chart_of(x)).double().mean())


def summarize_charts(
    model: nn.Module,
    parts: ChartParts,
    x: Tensor,
    y: Tensor,
    ids: Tensor,
    *,
    layer: int,
    theorem: str,
    bound_suffix: str = "",
    extra: Mapping[str, float | int | str],
) -> ConstructionSummary:
    """The summary of a construction from ``parts`` whose MoE layer ``layer`` picks the chart, measured
    on points x (n, D) with outputs y and top-1 ids (:func:`~moelab.constructions.summary.route`):
    the error against f, the fraction routed outside the chosen chart's domain, the experts' bound
    (``bound_suffix`` appended to its description) and ||tau - rho||_inf."""
    task, partition = parts.task, parts.partition
    bound, note = chart_bound(parts.experts)
    return summarize(
        model, theorem=theorem,
        target=f"f on the {task.manifold.name} (d={task.d}) in R^{task.D}, E={task.n_charts} charts",
        m=parts.m, y_pred=y, y_true=task.target(x), ids=ids, routing_layers=[layer],
        misrouted=routed_outside(task.atlas, x, ids[:, layer]),
        routing_note="points routed to a chart whose domain does not contain them",
        bound=bound, bound_note=note + bound_suffix,
        tau_error=partition.error(task.atlas, x), tau_threshold=partition.threshold, extra=extra,
    )


def build_manifold_moe(
    task: ManifoldTask,
    m: int = 16,
    *,
    expert_depth: int = 2,
    tau: str = "auto",
    tau_knots: int = 16,
    feature_experts: int = 1,
    n_eval: int = 4000,
    seed: int = 0,
    linear_baseline: bool = False,
    dtype: torch.dtype = _F64,
) -> tuple[DeepMoE, ConstructionSummary]:
    """The depth-2 construction of Cor 4.9 (``expert_depth=2``) or Thm 4.8 (``expert_depth=3``).

    Args:
        task: a :class:`~moelab.tasks.ManifoldTask` (its atlas has linear charts).
        m: expert width: interpolation units (d = 1) or ridge units (d >= 2) per expert.
        expert_depth: 2 (chart folded into the first affine map) or 3 (a chart layer first).
        tau, tau_knots: the partition net's build (``"auto"``, ``"profile"``, ``"fit"``) and the
            profile's knots; see :func:`~moelab.constructions.partition.partition_net`.
        feature_experts: experts of layer 1 (1, or E copies for H^{2,E} literally).
        n_eval, seed: the evaluation points, ``task.sample(n_eval, seed=seed + 2)``.
        linear_baseline: also fit linear routers on raw x to the chart labels and report their
            misroute fraction (:func:`~moelab.constructions.baseline.linear_router_misroute`).
        dtype: the model's dtype.

    Returns:
        (a :class:`~moelab.layers.DeepMoE` with widths D, D + E, 1; its summary).
    """
    parts = chart_parts(task, m, tau=tau, tau_knots=tau_knots, seed=seed)
    task, partition = parts.task, parts.partition
    specs = manifold_specs(parts, expert_depth=expert_depth,
                           feature_experts=positive_int("feature_experts", feature_experts))
    model = build_stack(specs, dtype)
    x = eval_points(task, n_eval, seed)
    y, ids = route(model, x.to(dtype))
    extra: dict[str, float | int | str] = {
        "tau build": f"{partition.method}, {partition.units} units",
        "routed to argmax rho": routed_to_argmax(task, x, ids[:, 1]),
    }
    if linear_baseline:
        extra[MISROUTE_ENTRY] = linear_router_misroute(task, seed=seed).best
    theorem = "Cor 4.9 (depth-2 MoE, 2-layer experts)" if expert_depth == 2 else \
        "Thm 4.8 (depth-2 MoE, 3-layer experts)"
    summary = summarize_charts(
        model, parts, x, y, ids, layer=1, theorem=theorem,
        bound_suffix="; + 0 for the linear charts" if expert_depth == 3 else "", extra=extra,
    )
    return model, summary
