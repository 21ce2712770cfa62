"""Thm 5.2: a depth-2L MoE that realises an Eq. (5) target on a product of manifolds M_1 x ... x M_L.

Each pair of layers handles one block x_l as the shallow construction does
(:mod:`moelab.constructions.manifold`) and carries everything else. The state before pair l is
[y_0, ..., y_{l-1} | x_l | x_{l+1}, ..., x_{L-1}]:

* layer 2l (features; dense): carries the state (y's through two units each, x blocks through one
  unit per coordinate, relu(x + B_l) - B_l) and appends tau_l(x_l) ~ rho_l, E values;
* layer 2l + 1 (choice): the router reads only tau_l (W_R = [0 | I]); expert i writes
  g_{l,i}(phi_{l,i}(x_l)) ~ f_{l,i}(x_l) in place of x_l and carries the rest
  (:mod:`moelab.constructions.charts`).

The routing choices of the L blocks are independent, so all E^L paths occur. Eq. (5)'s subfunction
changes with the chart (moelab labels a point by argmax rho, :mod:`moelab.tasks.product`), so here the
router must pick that very chart, not just one containing x_l: the circle's profile tau has
argmax tau = argmax rho by construction (:mod:`moelab.constructions.partition`) and routes exactly;
a fitted tau (other manifolds) may pick a neighbouring chart near chart boundaries, which the
summary's misroute fraction shows. Error: max over (l, i) of expert (l, i)'s error on its chart.

Shape legend: n points, L blocks, D_l block widths, E charts per block.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from moelab._validation import positive_int
from moelab.constructions.assembly import (
    LayerSpec,
    Net,
    build_stack,
    choice_layers,
    choice_spec,
    dense_spec,
)
from moelab.constructions.charts import ChartExpert, chart_expert
from moelab.constructions.manifold import chart_bound
from moelab.constructions.partition import PartitionNet, partition_net
from moelab.constructions.summary import (
    ConstructionSummary,
    eval_points,
    misrouted_fraction,
    route,
    summarize,
)
from moelab.layers import DeepMoE
from moelab.tasks import ProductTask

_F64 = torch.float64


def as_float64(task: ProductTask) -> ProductTask:
    """``task`` with float64 atlases and outputs and no noise."""
    atlases = tuple(replace(a, dtype=_F64) for a in task.atlases)
    return replace(task, atlases=atlases, dtype=_F64, noise=0.0)


def _feature_spec(task: ProductTask, l: int, partition: PartitionNet, copies: int) -> LayerSpec:
    dims, E = task.block_dims, task.E
    width = l + sum(dims[l:])
    net = Net(width, width + E)
    net.carry(0, 0, l)  # y_0 .. y_{l-1}
    offset = l
    for k in range(l, task.L):
        radius = task.atlases[k].manifold.radius
        if k == l:  # x_l through, tau_l appended at the end
            partition.add_to(net, src=offset, dst=width)
        net.carry(offset, offset, dims[k], lower=-radius)
        offset += dims[k]
    return dense_spec(net, copies)


def _choice_spec(task: ProductTask, l: int, experts: tuple[ChartExpert, ...]) -> LayerSpec:
    dims, E = task.block_dims, task.E
    width = l + sum(dims[l:])
    rest = sum(dims[l + 1:])
    maps = []
    for expert in experts:
        net = Net(width + E, l + 1 + rest)
        net.carry(0, 0, l)
        expert.add_to(net, src=l, dst=l)
        if rest:
            net.carry(l + dims[l], l + 1, rest, lower=-max(a.manifold.radius for a in task.atlases))
        maps.append(net.affine_maps())
    return choice_spec(width, l + 1 + rest, tuple(maps))


def build_product_moe(
    task: ProductTask,
    m: int = 16,
    *,
    tau: str = "auto",
    tau_knots: int = 16,
    feature_experts: int = 1,
    n_eval: int = 4000,
    seed: int = 0,
    dtype: torch.dtype = _F64,
) -> tuple[DeepMoE, ConstructionSummary]:
    """The Thm 5.2 construction for an Eq. (5) target with vector output (see the module docstring).

    Args:
        task: a :class:`~moelab.tasks.ProductTask` with ``output="vector"``.
        m: expert width (interpolation units for 1-D blocks, ridge units otherwise).
        tau, tau_knots: the partition nets' build, per block (see
            :func:`~moelab.constructions.partition.partition_net`).
        feature_experts: experts of each feature layer (1, or E copies).
        n_eval, seed: evaluation points, ``task.sample(n_eval, seed=seed + 2)``.
        dtype: the model's dtype.

    Returns:
        (a :class:`~moelab.layers.DeepMoE` of depth 2L; its summary).
    """
    if task.output != "vector":
        raise ValueError(f"the construction computes the vector of Eq. (5); got output={task.output!r}")
    task = as_float64(task)
    m = positive_int("m", m)
    copies = positive_int("feature_experts", feature_experts)
    specs, all_experts, partitions = [], [], []
    for l, atlas in enumerate(task.atlases):
        partition = partition_net(atlas, method=tau, knots=tau_knots, seed=seed + l)
        experts = tuple(chart_expert(atlas, i, task.subfunctions[l][i], m) for i in range(task.E))
        specs += [_feature_spec(task, l, partition, copies), _choice_spec(task, l, experts)]
        all_experts += experts
        partitions.append(partition)
    model = build_stack(specs, dtype)
    x = eval_points(task, n_eval, seed)
    y, ids = route(model, x.to(dtype))
    choice = choice_layers(task.L)
    bound, note = chart_bound(tuple(all_experts))
    blocks = task.split(x)
    tau_error = max(p.error(a, b) for p, a, b in zip(partitions, task.atlases, blocks, strict=True))
    names = " x ".join(a.manifold.name for a in task.atlases)
    summary = summarize(
        model, theorem="Thm 5.2 (depth-2L MoE, Eq. (5) target)",
        target=f"Eq. (5) on {names} in R^{task.D}, E={task.E} charts per block, {task.E ** task.L} pieces",
        m=m, y_pred=y, y_true=task.components(x), ids=ids, routing_layers=choice,
        misrouted=misrouted_fraction(ids, choice, task.pieces(x)),
        routing_note="points whose layer-(2l+1) expert is not the chart argmax rho_l(x_l), for some l",
        bound=bound, bound_note=note.replace("max_i", "max_{l,i}"),
        tau_error=tau_error, tau_threshold=1 / (2 * task.E),
        extra={"tau builds": ", ".join(sorted({p.method for p in partitions}))},
    )
    return model, summary
