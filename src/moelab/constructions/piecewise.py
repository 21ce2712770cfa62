"""Thm 5.3: a depth-2L MoE with E experts per layer that realises an Eq. (4) target on [0, E]^L.

The state is a vector of L slots: slot l holds x_l until layer pair l has run, and y_l afterwards.
For each coordinate l (0-based) two MoE layers, all plain ReLU two-layer experts:

* layer 2l (features; dense): passes the L slots through and appends E routing scores of x_l,
  r_j(x_l) = c_j x_l - c_j^2 / 2 with c_j = j + 1/2 the piece centres. argmax_j r_j is the nearest
  centre, i.e. the piece j with x_l in (j, j + 1): the scores are exact (affine) routing features.
  They must come from a layer, not the router, because the paper's router g(x) = W_R x has no bias;
  a router with a bias could score x_l directly (with depth L). Its experts are ``feature_experts``
  copies of one net (1 by default: a dense layer written as a one-expert MoE layer; E copies give
  the paper's class H^{2L,E} literally, at E times the parameters and the same activated ones).
* layer 2l + 1 (choice): the router reads only the score block (W_R = [0 | I], no bias), so top-1
  picks expert i = the piece of x_l. Expert i writes the m-unit piecewise-linear interpolant of
  f_{l,i} on [i, i + 1] (:mod:`moelab.constructions.interpolation`) into slot l and carries the
  other slots.

Carrying: inputs lie in [0, E], so an x slot passes through one unit, x = relu(x); a y slot, of
either sign, through two, y = relu(y) - relu(-y) (:class:`~moelab.constructions.assembly.Net`). All
E^L expert paths occur, one per piece, from 2L layers of E experts.

Ties. At an integer x_l = k two scores are exactly equal (r_{k-1}(k) = r_k(k) in floating point).
torch.topk does *not* promise the lowest index on ties: on CPU it was seen picking either (e.g. of 4
tied logits, experts 0 and 3, it returned 3). Routing is therefore exact at every point strictly
inside a piece and implementation-defined at the integers; there both candidate experts output
their interpolant at the shared knot, f_{l,k-1}(k) or f_{l,k}(k), which agree for the paper's
subfunctions (all vanish at the integers), so the output is right there too.

Error: per output, that of the interpolant of the piece's subfunction: the sup error of the model is
max_{l,i} ||s_{l,i} - f_{l,i}||, <= max_{l,i} ||f_{l,i}''|| / (8 m^2) for C^2 pieces (the theorem's
bound is max O(m^{-(kappa min 1/2)}), the worst case over C^kappa).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from moelab._validation import positive_int
from moelab.constructions.assembly import (
    LayerSpec,
    Net,
    build_stack,
    choice_layers,
    choice_spec,
    dense_spec,
)
from moelab.constructions.interpolation import cell_grid, interpolant, interpolation_bound
from moelab.constructions.summary import ConstructionSummary, misrouted_fraction, route, summarize
from moelab.layers import DeepMoE
from moelab.tasks import PiecewiseTask, build_piecewise_task

_F64 = torch.float64


def resolve_piecewise_task(
    task_or_E: PiecewiseTask | int, L: int | None, subfunctions: object
) -> PiecewiseTask:
    """A float64 vector-output :class:`PiecewiseTask` from a task or from (E, L, subfunctions)."""
    if isinstance(task_or_E, PiecewiseTask):
        if L is not None or subfunctions is not None:
            raise ValueError("pass either a PiecewiseTask or E, L and subfunctions, not both")
        task = task_or_E
    else:
        if L is None:
            raise ValueError(f"L is required with E={task_or_E!r}")
        task = build_piecewise_task(E=positive_int("E", task_or_E), L=positive_int("L", L),
                                    subfunctions=subfunctions)
    if task.output != "vector":
        raise ValueError(f"the construction computes the vector of Eq. (4); got output={task.output!r}")
    return replace(task, dtype=_F64, noise=0.0)


def _carry_other_slots(net: Net, L: int, l: int) -> Net:
    """Add to ``net`` the pass-through of every slot but l: y slots (before l, any sign) with two
    units each, x slots (after l, >= 0) with one."""
    for slot in range(L):
        if slot < l:
            net.carry(slot, slot)
        elif slot > l:
            net.carry(slot, slot, lower=0.0)
    return net


def _feature_spec(E: int, L: int, l: int, copies: int) -> LayerSpec:
    """Layer 2l: slots through, plus the scores r_j(x_l) = c_j x_l - c_j^2 / 2 in outputs L..L+E-1."""
    net = _carry_other_slots(Net(L, L + E), L, l)
    centres = torch.arange(E, dtype=_F64) + 0.5
    w = torch.zeros(1, L, dtype=_F64)
    w[0, l] = 1.0
    v = torch.zeros(1, L + E, dtype=_F64)
    v[0, l] = 1.0
    v[0, L:] = centres
    net.units(w, torch.zeros(1, dtype=_F64), v)  # the one unit relu(x_l) = x_l feeds slot l and scores
    net.bias[L:] = -centres.pow(2) / 2
    return dense_spec(net, copies)


def interpolant_experts(task: PiecewiseTask, l: int, m: int, d_in: int) -> tuple[list, ...]:
    """The E experts' affine maps for coordinate l, on a state of width ``d_in`` >= L whose first L
    entries are the slots: expert i writes the m-unit interpolant of f_{l,i} on [i, i + 1] into
    slot l and carries the other slots (y slots with two units, x slots with one)."""
    L = task.L
    experts = []
    for i in range(task.E):
        net = _carry_other_slots(Net(d_in, L), L, l)
        s = interpolant(task.subfunctions[l][i], float(i), float(i + 1), m)
        w = torch.zeros(m, d_in, dtype=_F64)
        w[:, l] = 1.0
        net.read(w, -s.breakpoints, s.coefficients, l, s.offset)
        experts.append(net.affine_maps())
    return tuple(experts)


def _choice_spec(task: PiecewiseTask, l: int, m: int) -> LayerSpec:
    """Layer 2l + 1: route on the scores (W_R = [0 | I]); expert i interpolates f_{l,i}."""
    return choice_spec(task.L, task.L, interpolant_experts(task, l, m, task.L + task.E))


def piecewise_specs(task: PiecewiseTask, m: int, *, feature_experts: int = 1) -> list[LayerSpec]:
    """The 2L layer specs of the Thm 5.3 construction for ``task``."""
    specs = []
    for l in range(task.L):
        specs.append(_feature_spec(task.E, task.L, l, feature_experts))
        specs.append(_choice_spec(task, l, m))
    return specs


def piecewise_eval_points(task: PiecewiseTask, *, per_piece: int, n_random: int, seed: int) -> Tensor:
    """Evaluation points strictly inside pieces: (1) a grid design, coordinate l running through
    every point of the 1-D grid ``cell_grid(0, E, E * per_piece)`` in an independent random order;
    (2) the E^L piece centres; (3) ``n_random`` uniform points (from ``seed``). Points closer than
    1e-12 to an integer are dropped (the routing tie set)."""
    E, L = task.E, task.L
    rng = torch.Generator().manual_seed(seed)
    grid = cell_grid(0.0, float(E), E * per_piece)
    design = torch.stack([grid[torch.randperm(grid.shape[0], generator=rng)] for _ in range(L)], dim=1)
    centres = torch.cartesian_prod(*[torch.arange(E, dtype=_F64) + 0.5] * L).reshape(-1, L)
    x = torch.cat([design, centres, E * torch.rand(n_random, L, generator=rng, dtype=_F64)])
    frac = x - x.round()
    return x[(frac.abs() > 1e-12).all(dim=1)]


def piecewise_target(task: PiecewiseTask) -> str:
    """The Eq. (4) target of ``task``, in words."""
    return f"Eq. (4) on [0, {task.E}]^{task.L}, {task.E ** task.L} pieces, vector output"


def piecewise_bound(task: PiecewiseTask, m: int) -> tuple[float, str]:
    """max_{l,i} ||f_{l,i}''|| / (8 m^2), the C^2 interpolation bound on every expert's error, and
    that description."""
    bound = max(
        interpolation_bound(f, float(i), float(i + 1), m)
        for row in task.subfunctions for i, f in enumerate(row)
    )
    return bound, "max_{l,i} ||f_{l,i}''|| / (8 m^2), the C^2 interpolation bound"


def summarize_pieces(
    model: nn.Module,
    task: PiecewiseTask,
    m: int,
    x: Tensor,
    y: Tensor,
    ids: Tensor,
    *,
    layers: Sequence[int],
    theorem: str,
    routing_note: str,
    extra: Mapping[str, float | int | str] | None = None,
) -> ConstructionSummary:
    """The summary of a construction for ``task`` whose MoE layer ``layers[l]`` picks the piece of
    x_l, measured on points x (n, L) with outputs y and top-1 ids (:func:`route`): the error against
    the components of Eq. (4), the fraction of points with some piece missed (``routing_note`` says
    which layers) and the interpolation bound (:func:`piecewise_bound`)."""
    bound, note = piecewise_bound(task, m)
    return summarize(
        model, theorem=theorem, target=piecewise_target(task),
        m=m, y_pred=y, y_true=task.components(x), ids=ids, routing_layers=layers,
        misrouted=misrouted_fraction(ids, layers, task.pieces(x)), routing_note=routing_note,
        bound=bound, bound_note=note, extra=extra,
    )


def build_piecewise_moe(
    task_or_E: PiecewiseTask | int,
    L: int | None = None,
    subfunctions: str | Sequence[Sequence[Callable[[Tensor], Tensor]]] | None = None,
    m: int = 16,
    *,
    feature_experts: int = 1,
    per_piece: int = 1000,
    n_random: int = 2000,
    seed: int = 0,
    dtype: torch.dtype = _F64,
) -> tuple[DeepMoE, ConstructionSummary]:
    """The Thm 5.3 construction for an Eq. (4) target (see the module docstring), and its summary.

    Args:
        task_or_E: a :class:`~moelab.tasks.PiecewiseTask` (vector output), or E.
        L, subfunctions: with an int E, the task's L and subfunctions (None/"paper": the paper's).
        m: interpolation units per expert (the paper's m).
        feature_experts: experts of each feature layer (1, or E for H^{2L,E} literally).
        per_piece, n_random, seed: the evaluation points (:func:`piecewise_eval_points`).
        dtype: the model's dtype (float64 by default, so the measured error is the interpolation
            error, not float32 rounding).

    Returns:
        (a :class:`~moelab.layers.DeepMoE` of depth 2L, widths L, L+E, L, ..., L; its summary).
    """
    task = resolve_piecewise_task(task_or_E, L, subfunctions)
    m = positive_int("m", m)
    model = build_stack(piecewise_specs(task, m, feature_experts=positive_int(
        "feature_experts", feature_experts)), dtype)
    x = piecewise_eval_points(task, per_piece=positive_int("per_piece", per_piece),
                              n_random=n_random, seed=seed)
    y, ids = route(model, x.to(dtype))
    summary = summarize_pieces(
        model, task, m, x, y, ids, layers=choice_layers(task.L),
        theorem="Thm 5.3 (depth-2L MoE, Eq. (4) target)",
        routing_note="points whose layer-(2l+1) expert is not the piece of x_l, for some l",
    )
    return model, summary
