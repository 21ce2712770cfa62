"""What a construction reports: the model's shape and size, the theorem's bound, what was measured.

Every builder in :mod:`moelab.constructions` returns ``(model, ConstructionSummary)``. The summary
holds the model's shape (depth, experts per layer, expert depth and hidden width), its parameters
(total and activated per token, :func:`moelab.analysis.count_parameters`), the expert paths seen on the
evaluation points against the number possible, the theorem's bound evaluated from its ingredients,
the measured sup error and MSE, the fraction of points routed wrongly, and, for the manifold
constructions, ||tau - rho||_inf against the threshold 1/(2E).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from moelab._validation import positive_int
from moelab.analysis.params import count_parameters
from moelab.layers import DeepMoE, MoELayer
from moelab.tasks import Atlas


@dataclass(frozen=True)
class ConstructionSummary:
    """The record of one hand-built construction (see the module docstring).

    Attributes:
        theorem: which result it realises, e.g. ``"Thm 5.3"``.
        target: the target, in words.
        model: the model class and layer widths, in words.
        depth: number of MoE layers.
        experts: experts per MoE layer.
        expert_depth: affine maps per expert (the paper's l), the largest over the layers.
        expert_widths: the expert hidden width of every MoE layer.
        m: the approximation width the bound is stated in (units per interpolant or chart fit).
        paths_seen, paths_possible: distinct expert paths through the routing layers on the
            evaluation points, and E^(routing layers).
        params_total, params_active: parameters, total and activated per token.
        bound: the theorem's bound evaluated for this construction; ``bound_note`` says how.
        sup_error, mse: max |error| and mean squared error over the evaluation points (all outputs).
        n_eval: number of evaluation points.
        misrouted: fraction of evaluation points routed to a wrong expert; ``routing_note`` says
            what counts as right.
        tau_error, tau_threshold: ||tau - rho||_inf on the evaluation points and 1/(2E) (manifold
            constructions), else None.
        extra: further named numbers (e.g. a linear router's misroute fraction).
    """

    theorem: str
    target: str
    model: str
    depth: int
    experts: tuple[int, ...]
    expert_depth: int
    expert_widths: tuple[int, ...]
    m: int
    paths_seen: int
    paths_possible: int
    params_total: int
    params_active: float
    bound: float
    bound_note: str
    sup_error: float
    mse: float
    n_eval: int
    misrouted: float
    routing_note: str
    tau_error: float | None = None
    tau_threshold: float | None = None
    extra: Mapping[str, float | int | str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """A plain dict of the fields (for JSON)."""
        out = dataclasses.asdict(self)
        out["experts"] = list(self.experts)
        out["expert_widths"] = list(self.expert_widths)
        out["extra"] = dict(self.extra)
        return out

    def __str__(self) -> str:
        lines = [
            f"{self.theorem}: {self.target}",
            f"  model          {self.model}",
            f"  shape          depth {self.depth}, experts per layer {list(self.experts)}, "
            f"experts {self.expert_depth}-layer,",
            f"                 hidden widths {list(self.expert_widths)} (m = {self.m})",
            f"  expert paths   {self.paths_seen} seen / {self.paths_possible} possible",
            f"  parameters     {self.params_total} total, {self.params_active:.0f} active per token",
            f"  bound          {self.bound:.4g}  ({self.bound_note})",
            f"  measured       sup error {self.sup_error:.4g}, MSE {self.mse:.4g} "
            f"on {self.n_eval} points",
            f"  misrouted      {self.misrouted:.4g}  ({self.routing_note})",
        ]
        if self.tau_error is not None:
            ok = "below" if self.tau_error < (self.tau_threshold or 0) else "NOT below"
            lines.append(
                f"  ||tau - rho||  {self.tau_error:.4g}, {ok} the threshold 1/(2E) = {self.tau_threshold:.4g}"
            )
        for key, value in self.extra.items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"  {key:14s} {text}")
        return "\n".join(lines)


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The MoE layers of ``model`` in forward order."""
    if isinstance(model, MoELayer):
        return [model]
    if isinstance(model, DeepMoE):
        return model.moe_layers
    raise TypeError(f"expected a MoELayer or DeepMoE, got {type(model).__name__}")


@torch.no_grad()
def route(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward ``x`` (n, d_in) through ``model``: (output (n, d_out), top-1 expert ids (n, layers))."""
    out = model.run(x)
    routings = (out.routing,) if isinstance(model, MoELayer) else out.routings
    return out.y, torch.stack([r.top1() for r in routings], dim=1)


def eval_points(task, n_eval: int, seed: int) -> Tensor:
    """(n_eval, D) evaluation points of a manifold or product construction: the x of
    ``task.sample(n_eval, seed=seed + 2)``."""
    return task.sample(positive_int("n_eval", n_eval), seed=seed + 2).x


def misrouted_fraction(ids: Tensor, layers: Sequence[int], truth: Tensor) -> float:
    """The fraction of points whose top-1 expert in some layer ``layers[l]`` is not ``truth[:, l]``;
    ``ids`` (n, MoE layers) from :func:`route`, ``truth`` (n, len(layers)) long."""
    return float((ids[:, list(layers)] != truth).any(dim=1).double().mean())


def routed_outside(atlas: Atlas, x: Tensor, chosen: Tensor) -> float:
    """The fraction of points x (n, D) routed to a chart whose domain does not contain them, given
    each point's chosen chart ``chosen`` (n,) long: the misroute fraction of whatever routes on the
    charts of ``atlas`` (a construction's router, a linear baseline), since chart experts are accurate
    on their own domain only."""
    inside = atlas.in_domain(x)[torch.arange(x.shape[0]), chosen]
    return float((~inside).double().mean())


def describe(model: nn.Module) -> str:
    """e.g. ``"DeepMoE 2 -> 5 -> 2 -> 5 -> 2"`` or ``"MoELayer 16 -> 1"``."""
    if isinstance(model, MoELayer):
        return f"MoELayer {model.d_in} -> {model.d_out}"
    return "DeepMoE " + " -> ".join(str(w) for w in model.widths)


def summarize(
    model: nn.Module,
    *,
    theorem: str,
    target: str,
    m: int,
    y_pred: Tensor,
    y_true: Tensor,
    ids: Tensor,
    routing_layers: Sequence[int],
    misrouted: float,
    routing_note: str,
    bound: float,
    bound_note: str,
    tau_error: float | None = None,
    tau_threshold: float | None = None,
    extra: Mapping[str, float | int | str] | None = None,
) -> ConstructionSummary:
    """Assemble a :class:`ConstructionSummary` from a model and its measured outputs.

    ``ids`` (n, layers) are the top-1 experts of every MoE layer; paths are counted over the
    ``routing_layers`` (the layers whose choice matters), each of E experts.
    """
    layers = moe_layers(model)
    params = count_parameters(model)
    err = (y_pred.double() - y_true.double()).abs()
    chosen = ids[:, list(routing_layers)]
    paths = int(torch.unique(chosen, dim=0).shape[0]) if chosen.numel() else 1
    possible = 1
    for i in routing_layers:
        possible *= layers[i].num_experts
    return ConstructionSummary(
        theorem=theorem,
        target=target,
        model=describe(model),
        depth=len(layers),
        experts=tuple(layer.num_experts for layer in layers),
        expert_depth=max(layer.config.experts.depth for layer in layers),
        expert_widths=tuple(layer.config.experts.hidden for layer in layers),
        m=m,
        paths_seen=paths,
        paths_possible=possible,
        params_total=params.total,
        params_active=params.active,
        bound=float(bound),
        bound_note=bound_note,
        sup_error=float(err.max()),
        mse=float(err.pow(2).mean()),
        n_eval=int(y_pred.shape[0]),
        misrouted=float(misrouted),
        routing_note=routing_note,
        tau_error=tau_error,
        tau_threshold=tau_threshold,
        extra=dict(extra or {}),
    )
