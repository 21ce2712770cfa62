"""Router health of one training step, per MoE layer, from the routing the step recorded.

The training loop adds these to every logged history row (every ``log_every`` steps), under keys
``layer{i}/{name}`` with ``i`` the MoE call's position in the forward pass (0 first):

* ``max_share``: the largest fraction of the step's kept (token, slot) assignments one expert got,
  ``max_e load_e``; ``1/E`` when balanced, 1 when one expert takes everything.
* ``max_vio``: MaxVio, ``max_e load_e / mean_e load_e - 1 = E * max_share - 1`` (Wang et al.
  2024, "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts", Sec. 4.1); 0 when
  balanced, ``E - 1`` when one expert takes everything.
* ``entropy``: the mean over tokens of the entropy of the router's probabilities over all E
  experts, divided by ``log E`` (:func:`moelab.analysis.token_entropy`); 0 for hard, confident
  routing, 1 when the router cannot tell the experts apart (0 when E = 1).
* ``dead_fraction``: the fraction of experts that got no kept assignment in the step's batch.
* ``router_z``: the ST-MoE router z-loss of the layer, ``mean_t logsumexp(logits_t)^2``
  (:func:`moelab.losses.router_z_loss`; Zoph et al. 2022, Eq. 5), on the logits the router
  scored with (noise included when the router is noisy and training).

The load counts the assignments the layer kept (``Routing.tokens_per_expert``): assignments
dropped by a capacity limit count for no expert. A step whose layer kept no assignment at all has
no load: its ``max_share`` and ``max_vio`` are NaN and every expert counts as dead.

Nothing here draws random numbers or touches the autograd graph: the metrics read detached
copies of the routing, so logging them leaves training bit for bit as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from moelab.layers.outputs import Routing

#: The names of the per-layer metrics, in the order :func:`router_metrics` writes them.
ROUTER_METRICS = ("max_share", "max_vio", "entropy", "dead_fraction", "router_z")


def max_violation(load_E: torch.Tensor | Sequence[float]) -> float:
    """MaxVio of a load vector (E,) of counts or fractions: ``max(load) / mean(load) - 1``.

    Wang et al. 2024 (auxiliary-loss-free balancing), Sec. 4.1. 0 when balanced; ``E - 1`` when
    one expert takes every assignment; NaN for an all-zero load (nothing to balance).
    """
    load = load_E.tolist() if isinstance(load_E, torch.Tensor) else [float(v) for v in load_E]
    total = sum(load)
    return max(load) * len(load) / total - 1 if total > 0 else math.nan


@torch.no_grad()
def _metric_columns(counts_NE: torch.Tensor, probs_NTE: torch.Tensor, logits_NTE: torch.Tensor
                    ) -> dict[str, list[float]]:
    """The metrics of N routings at once, each a list of N floats: loads ``counts_NE``, the router's
    probabilities and logits over T tokens. The one place the formulas are written; they are
    :func:`max_violation`, :func:`~moelab.analysis.token_entropy` and
    :func:`~moelab.losses.router_z_loss` with a leading axis (computed in float64, the logits in at
    least float32, as those functions compute them)."""
    counts = counts_NE.double()
    E = counts.shape[-1]
    total, top = counts.sum(-1), counts.amax(-1)
    p = probs_NTE.double()
    logits = logits_NTE.to(torch.promote_types(logits_NTE.dtype, torch.float32))
    columns = {
        "max_share": top / total,  # 0 / 0 = NaN when nothing was kept
        "max_vio": top * E / total - 1,
        "entropy": (-torch.special.xlogy(p, p).sum(-1).mean(-1) / math.log(E) if E > 1
                    else torch.zeros_like(total)),
        "dead_fraction": (counts == 0).sum(-1).double() / E,
        "router_z": torch.logsumexp(logits, -1).square().mean(-1).double(),
    }
    return {name: columns[name].tolist() for name in ROUTER_METRICS}


@torch.no_grad()
def layer_metrics(routing: Routing) -> dict[str, float]:
    """The metrics of one MoE layer's routing (see the module docstring), keyed by name."""
    if routing.logits.shape[0] == 0:
        raise ValueError("routing has no tokens")
    columns = _metric_columns(routing.tokens_per_expert[None], routing.probs[None],
                              routing.logits[None])
    return {name: values[0] for name, values in columns.items()}


def router_metrics(routings: Sequence[Routing]) -> dict[str, float]:
    """Every recorded MoE call's metrics under ``layer{i}/{name}`` keys, i counting the calls of a
    forward pass in order (e.g. ``layer0/max_vio``); empty for a model without MoE layers."""
    out: dict[str, float] = {}
    for i, routing in enumerate(routings):
        if routing.logits.shape[0] == 0:  # no tokens: nothing to measure
            continue
        out.update({f"layer{i}/{name}": value for name, value in layer_metrics(routing).items()})
    return out


@torch.no_grad()
def stacked_router_metrics(routes: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                           ) -> list[dict[str, float]]:
    """:func:`router_metrics` for each member of a batched model (:mod:`moelab.training.batched`),
    from each MoE layer's (logits (N, B, E), probs (N, B, E), top-1 ids (N, B, 1)): the formulas
    of :func:`layer_metrics`, for all N members at once."""
    members: list[dict[str, float]] = [{} for _ in range(routes[0][0].shape[0])] if routes else []
    for i, (logits, probs, ids) in enumerate(routes):
        counts_NE = F.one_hot(ids[..., 0], logits.shape[-1]).sum(1)
        columns = _metric_columns(counts_NE, probs.detach(), logits.detach())
        for n, row in enumerate(members):
            row.update({f"layer{i}/{name}": values[n] for name, values in columns.items()})
    return members
