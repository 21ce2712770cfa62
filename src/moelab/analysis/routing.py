"""Routing statistics: expert paths through a deep MoE, agreement with ground-truth pieces, load.

A depth-L MoE can send inputs along up to E^L expert paths, one per composed subtask (docs/paper.md
Sec. 3, Thm 5.2/5.3); :func:`expert_paths` counts the paths a model actually uses on data. Experts
carry no labels, so agreement of the routing with a task's ground-truth chart or piece labels is
measured up to relabelling: :func:`match_experts` finds the one-to-one matching of expert ids to labels
that agrees with the most samples (the Hungarian method, ``scipy.optimize.linear_sum_assignment``).

Shape legend: n samples, L MoE layers, E experts, C ground-truth labels, T tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moelab.layers.moe import MoELayer
from moelab.layers.outputs import ModelOutput, Routing
from moelab.layers.recording import record_routing


@dataclass(frozen=True)
class ExpertPaths:
    """Result of :func:`expert_paths`.

    Attributes:
        paths: (n, L) long, the top-1 expert of every MoE layer for each sample.
        distinct: (P, L) long, the distinct paths, in lexicographic order.
        counts: (P,) long, how many samples took each distinct path (sums to n).
    """

    paths: Tensor
    distinct: Tensor
    counts: Tensor

    @property
    def num_paths(self) -> int:
        return int(self.distinct.shape[0])


@dataclass(frozen=True)
class ExpertMatching:
    """Result of :func:`match_experts`.

    Attributes:
        accuracy: fraction of samples whose expert is matched to their label.
        confusion: (E, C) long, ``confusion[e, c]`` samples routed to expert e with label c.
        pairs: the matched (expert, label) pairs, min(E, C) of them, sorted by expert.
    """

    accuracy: float
    confusion: Tensor
    pairs: tuple[tuple[int, int], ...]


def _routings(model: nn.Module, x: Tensor) -> tuple[Routing, ...]:
    """Every MoE layer's routing for the batch ``x``, in the order the layers run."""
    if isinstance(model, MoELayer):
        return (model.run(x).routing,)
    run = getattr(model, "run", None)
    if callable(run):
        out = run(x)
        if isinstance(out, ModelOutput):
            return out.routings
    with record_routing(model) as record:
        model(x)
    return record.routings


def expert_paths(model: nn.Module, x: Tensor) -> ExpertPaths:
    """The top-1 expert path of each sample of ``x`` (n, d_in) through the MoE layers of ``model``.

    Works for :class:`~moelab.layers.stack.DeepMoE`, a single :class:`~moelab.layers.moe.MoELayer`,
    dense models (zero layers: every sample has the empty path) and any module whose MoE layers are
    called through ``forward``. The model is run as it is (call ``model.eval()`` to switch routing
    noise off). Under expert choice the top-1 expert is the one with the largest combine weight.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a (n, d_in) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    with torch.no_grad():
        routings = _routings(model, x)
    n = x.shape[0]
    paths_nL = torch.stack([r.top1().cpu() for r in routings], 1) if routings else torch.zeros(
        n, 0, dtype=torch.long
    )
    if paths_nL.shape[0] != n:
        raise ValueError(f"the model routed {paths_nL.shape[0]} tokens for {n} samples; x must be (n, d_in)")
    if n == 0:
        return ExpertPaths(paths_nL, paths_nL, torch.zeros(0, dtype=torch.long))
    if paths_nL.shape[1] == 0:  # no MoE layers: one (empty) path
        return ExpertPaths(paths_nL, paths_nL[:1], torch.tensor([n]))
    radices = [r.logits.shape[-1] for r in routings]
    if math.prod(radices) >= 2**62:  # codes would overflow int64: unique rows directly
        distinct, counts = torch.unique(paths_nL, dim=0, return_counts=True)
        return ExpertPaths(paths_nL, distinct, counts)
    # Distinct rows as distinct mixed-radix codes (first layer most significant): the same sorted
    # order as torch.unique(dim=0), from a 1-D unique that costs far less.
    codes, counts = torch.unique(path_codes(paths_nL, radices), return_counts=True)
    digits = []
    for radix in reversed(radices):
        digits.append(codes % radix)
        codes = codes // radix
    return ExpertPaths(paths_nL, torch.stack(digits[::-1], 1), counts)


def path_codes(paths_nL: Tensor, radices: list[int]) -> Tensor:
    """(n,) each path (one expert per layer) as one integer, mixed radix over the layers' E
    (``radices``), the first layer most significant."""
    code = torch.zeros(paths_nL.shape[0], dtype=torch.long)
    for col, radix in enumerate(radices):
        code = code * radix + paths_nL[:, col]
    return code


def _labels(name: str, value: object) -> Tensor:
    v = torch.as_tensor(value).detach().cpu()
    if v.dtype.is_floating_point or v.dtype == torch.bool or v.is_complex():
        raise TypeError(f"{name} must hold integer ids, got dtype {v.dtype}")
    if v.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one id per sample), got shape {tuple(v.shape)}")
    if v.numel() and int(v.min()) < 0:
        raise ValueError(f"{name} must hold ids >= 0, got min {int(v.min())}")
    return v.long()


def routing_confusion(
    assigned: Tensor, truth: Tensor, *, num_experts: int | None = None, num_labels: int | None = None
) -> Tensor:
    """(E, C) counts: ``[e, c]`` samples assigned to expert e whose ground-truth label is c.

    ``assigned`` and ``truth`` are (n,) integer ids; E and C default to 1 + the largest id seen.
    """
    a, t = _labels("assigned", assigned), _labels("truth", truth)
    if a.shape != t.shape:
        raise ValueError(f"assigned and truth must have the same length, got {a.numel()} and {t.numel()}")
    E = num_experts if num_experts is not None else int(a.max()) + 1 if a.numel() else 0
    C = num_labels if num_labels is not None else int(t.max()) + 1 if t.numel() else 0
    if a.numel() and int(a.max()) >= E:
        raise ValueError(f"num_experts={E} but assigned holds id {int(a.max())}")
    if t.numel() and int(t.max()) >= C:
        raise ValueError(f"num_labels={C} but truth holds id {int(t.max())}")
    return torch.bincount(a * C + t, minlength=E * C).view(E, C)


def match_experts(
    assigned: Tensor, truth: Tensor, *, num_experts: int | None = None, num_labels: int | None = None
) -> ExpertMatching:
    """Best one-to-one matching of expert ids to ground-truth labels (experts are unlabeled).

    Maximises the number of samples whose expert is matched to their label over all one-to-one
    matchings (Hungarian method on the confusion matrix). With E != C only min(E, C) pairs exist:
    samples of an unmatched expert (E > C) or label (C > E) count as misrouted, so one label split
    over two experts scores below 1.
    """
    confusion = routing_confusion(assigned, truth, num_experts=num_experts, num_labels=num_labels)
    n = int(confusion.sum())
    if n == 0:
        raise ValueError("assigned and truth must hold at least one sample")
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize is slow to import

    rows, cols = linear_sum_assignment(confusion.numpy(), maximize=True)
    matched = int(confusion[rows, cols].sum())
    pairs = tuple((int(r), int(c)) for r, c in zip(rows, cols, strict=True))
    return ExpertMatching(accuracy=matched / n, confusion=confusion, pairs=pairs)


def routing_accuracy(assigned: Tensor, truth: Tensor) -> float:
    """Fraction of samples routed consistently with ``truth`` under the best relabelling of experts.

    See :func:`match_experts`; 1.0 exactly when the routing equals the ground truth up to a
    permutation of expert ids.
    """
    return match_experts(assigned, truth).accuracy


def expert_load(assigned: Tensor | Routing, num_experts: int | None = None) -> Tensor:
    """(E,) fraction of assignments each expert receives.

    From a :class:`~moelab.layers.outputs.Routing` (kept assignments, all K slots), or from (n,)
    expert ids (``num_experts`` defaults to 1 + the largest id).
    """
    if isinstance(assigned, Routing):
        counts = assigned.tokens_per_expert.cpu().double()
    else:
        a = _labels("assigned", assigned)
        E = num_experts if num_experts is not None else int(a.max()) + 1 if a.numel() else 0
        if a.numel() and int(a.max()) >= E:
            raise ValueError(f"num_experts={E} but assigned holds id {int(a.max())}")
        counts = torch.bincount(a, minlength=E).double()
    total = counts.sum()
    if total == 0:
        raise ValueError("no assignments to measure the load of")
    return counts / total


def load_entropy(load: Tensor, *, normalized: bool = False) -> float:
    """Shannon entropy (nats) of a load distribution (E,); log E when perfectly balanced.

    ``normalized=True`` divides by log E (1: balanced, 0: every token on one expert).
    """
    p = torch.as_tensor(load, dtype=torch.float64)
    if p.dim() != 1 or p.numel() == 0 or bool((p < 0).any()) or not math.isclose(float(p.sum()), 1.0,
                                                                                   abs_tol=1e-6):
        raise ValueError(f"load must be a 1-D probability vector, got {p.tolist()}")
    h = float(-(p[p > 0] * p[p > 0].log()).sum())
    if normalized:
        return h / math.log(p.numel()) if p.numel() > 1 else 0.0
    return h


def token_entropy(routing: Routing) -> float:
    """Mean over tokens of the entropy (nats) of the router's probabilities over all E experts.

    Near 0: confident, nearly hard routing; log E: the router cannot tell the experts apart.
    """
    probs_TE = routing.probs.detach().double()
    if probs_TE.shape[0] == 0:
        raise ValueError("routing has no tokens")
    return float(-torch.special.xlogy(probs_TE, probs_TE).sum(-1).mean())
