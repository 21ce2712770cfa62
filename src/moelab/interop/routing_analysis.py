"""moelab's routing analysis on the captured layers of a whole model (any sequence of
:class:`~moelab.layers.Routing` records, e.g. from :func:`~moelab.interop.capture_routing`).

Per layer: the load (fraction of the T*K assignments each expert receives, via
:func:`moelab.analysis.expert_load`), the normalised token entropy (the mean entropy of the router's
probabilities over E experts, :func:`moelab.analysis.token_entropy`, divided by log E: 0 for hard
routing, 1 when the router cannot tell experts apart), the dead experts (selected by no token), and
the intrinsic dimension of the hidden states each expert receives
(:func:`moelab.analysis.intrinsic_dimension`, Levina-Bickel MLE).

Across layers: the expert path of each token (its top-1 expert in every MoE layer; the paper's paths,
docs/paper.md Sec. 3) and, for each pair of consecutive MoE layers, the co-occurrence counts of top-1
experts C[i, j] = #{tokens with top-1 i in the first layer and j in the second}, with their
normalised mutual information NMI = I(A; B) / ((H(A) + H(B)) / 2) (the arithmetic normalisation,
scikit-learn's default; 1 when both layers give every token the same single expert).

Shape legend: T tokens, L MoE layers, E experts, H hidden size, P distinct paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab.analysis import ExpertPaths, expert_load, intrinsic_dimension, load_entropy, token_entropy
from moelab.interop.hf_capture import ModelCapture
from moelab.layers.outputs import Routing

#: Neighbours of the intrinsic-dimension estimate, and the fewest distinct tokens it is made from.
DIMENSION_K = 10
MIN_DIMENSION_TOKENS = 50


@dataclass(frozen=True)
class ExpertDimension:
    """Intrinsic dimension of the hidden states one expert receives.

    ``dimension`` is None when the expert received fewer than ``min_tokens`` distinct hidden states;
    ``note`` then says so.
    """

    expert: int
    num_tokens: int
    dimension: float | None
    note: str = ""


@dataclass(frozen=True)
class LayerStats:
    """One MoE layer's routing statistics.

    Attributes:
        layer: the layer's label (for a captured model, the decoder layer index).
        num_tokens: T.
        load: (E,) float64, fraction of the T*K assignments each expert receives (sums to 1).
        token_entropy: mean normalised entropy of the router probabilities, in [0, 1].
        load_entropy: normalised entropy of ``load``, in [0, 1] (1: perfectly balanced).
        dead_experts: the experts no token selected.
        dimensions: per expert, the intrinsic dimension of its tokens' hidden states; empty when
            no hidden states were given.
    """

    layer: int
    num_tokens: int
    load: Tensor
    token_entropy: float
    load_entropy: float
    dead_experts: tuple[int, ...]
    dimensions: tuple[ExpertDimension, ...] = ()


@dataclass(frozen=True)
class CoOccurrence:
    """Top-1 experts of the same tokens in two consecutive MoE layers.

    ``counts[i, j]``: tokens whose top-1 expert is i in layer ``layers[0]`` and j in ``layers[1]``.
    """

    layers: tuple[int, int]
    counts: Tensor
    nmi: float


@dataclass(frozen=True)
class ModelAnalysis:
    """Everything :func:`analyze_routings` measures."""

    layers: tuple[LayerStats, ...]
    paths: ExpertPaths
    cooccurrence: tuple[CoOccurrence, ...]


def dead_experts(routing: Routing) -> tuple[int, ...]:
    """The experts with no kept assignment in ``routing``."""
    return tuple(int(e) for e in torch.nonzero(routing.tokens_per_expert == 0).flatten())


def normalized_token_entropy(routing: Routing) -> float:
    """:func:`moelab.analysis.token_entropy` divided by log E (0 when E = 1)."""
    E = routing.num_experts
    return token_entropy(routing) / math.log(E) if E > 1 else 0.0


def expert_dimensions(
    routing: Routing,
    hidden: Tensor,
    *,
    k: int = DIMENSION_K,
    min_tokens: int = MIN_DIMENSION_TOKENS,
) -> tuple[ExpertDimension, ...]:
    """Per expert, the intrinsic dimension (Levina-Bickel MLE with ``k`` neighbours) of the rows of
    ``hidden`` (T, H) whose token the expert received (in any of its K kept slots).

    Experts that received fewer than ``min_tokens`` distinct hidden states get ``dimension=None``.
    """
    if not isinstance(hidden, Tensor) or hidden.dim() != 2 or hidden.shape[0] != routing.expert_ids.shape[0]:
        raise ValueError(f"hidden must be a (T, H) tensor with T={routing.expert_ids.shape[0]} rows, got "
                         f"{getattr(hidden, 'shape', type(hidden).__name__)}")
    if min_tokens < k + 1:
        raise ValueError(f"min_tokens must be >= k + 1 = {k + 1}, got {min_tokens}")
    chosen_TE = torch.zeros(routing.expert_ids.shape[0], routing.num_experts, dtype=torch.bool)
    chosen_TE.scatter_(1, routing.expert_ids.cpu(), routing.kept.cpu())
    out = []
    for e in range(routing.num_experts):
        x = hidden[chosen_TE[:, e]]
        n = int(torch.unique(x, dim=0).shape[0]) if x.shape[0] else 0
        if n < min_tokens:
            out.append(ExpertDimension(e, int(x.shape[0]), None,
                                       f"{n} distinct tokens, fewer than {min_tokens}"))
        else:
            out.append(ExpertDimension(e, int(x.shape[0]), intrinsic_dimension(x, "mle", k=k)))
    return tuple(out)


def layer_stats(
    routing: Routing,
    hidden: Tensor | None = None,
    *,
    layer: int = 0,
    k: int = DIMENSION_K,
    min_tokens: int = MIN_DIMENSION_TOKENS,
) -> LayerStats:
    """The statistics of one layer's ``routing`` (and of ``hidden`` (T, H), when given)."""
    load = expert_load(routing)
    return LayerStats(
        layer=layer,
        num_tokens=int(routing.expert_ids.shape[0]),
        load=load,
        token_entropy=normalized_token_entropy(routing),
        load_entropy=load_entropy(load, normalized=True),
        dead_experts=dead_experts(routing),
        dimensions=() if hidden is None else expert_dimensions(routing, hidden, k=k, min_tokens=min_tokens),
    )


def top1_paths(routings: Sequence[Routing]) -> ExpertPaths:
    """The top-1 expert path (T, L) of every token through the layers ``routings`` (all over the
    same T tokens), with the distinct paths and how many tokens took each."""
    if not routings:
        raise ValueError("routings must hold at least one layer")
    sizes = {int(r.expert_ids.shape[0]) for r in routings}
    if len(sizes) != 1:
        raise ValueError(f"every layer must route the same tokens, got token counts {sorted(sizes)}")
    paths_TL = torch.stack([r.top1().cpu().long() for r in routings], 1)
    if paths_TL.shape[0] == 0:
        return ExpertPaths(paths_TL, paths_TL, torch.zeros(0, dtype=torch.long))
    distinct, counts = torch.unique(paths_TL, dim=0, return_counts=True)
    return ExpertPaths(paths_TL, distinct, counts)


def most_common_paths(paths: ExpertPaths, n: int = 10) -> tuple[tuple[tuple[int, ...], int], ...]:
    """The ``n`` most frequent paths as (path, count), most frequent first (ties: lexicographic)."""
    order = sorted(range(paths.num_paths), key=lambda p: -int(paths.counts[p]))[:n]
    return tuple((tuple(int(e) for e in paths.distinct[p]), int(paths.counts[p])) for p in order)


def normalized_mutual_information(counts: Tensor) -> float:
    """NMI of the joint counts (A, B): I(A; B) / ((H(A) + H(B)) / 2), in [0, 1].

    Both marginals constant (H(A) = H(B) = 0): 1.0, the labelings agree; one of them constant: 0.0.
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    total = float(c.sum())
    if c.dim() != 2 or total <= 0 or bool((c < 0).any()):
        raise ValueError(f"counts must be a non-negative 2-D table with a positive total, got {c.tolist()}")
    p_ab = c / total
    p_a, p_b = p_ab.sum(1), p_ab.sum(0)
    h_a = float(-torch.special.xlogy(p_a, p_a).sum())
    h_b = float(-torch.special.xlogy(p_b, p_b).sum())
    if h_a == 0 and h_b == 0:
        return 1.0
    nz = p_ab > 0
    mi = float((p_ab[nz] * (p_ab[nz] / (p_a[:, None] * p_b[None])[nz]).log()).sum())
    return max(0.0, min(1.0, mi / ((h_a + h_b) / 2)))


def cooccurrence(first: Routing, second: Routing, *, layers: tuple[int, int] = (0, 1)) -> CoOccurrence:
    """Co-occurrence counts (E1, E2) of the top-1 experts of the same tokens in two layers."""
    a, b = first.top1().cpu().long(), second.top1().cpu().long()
    if a.shape != b.shape:
        raise ValueError(f"both layers must route the same tokens, got {a.numel()} and {b.numel()}")
    E1, E2 = first.num_experts, second.num_experts
    counts = torch.bincount(a * E2 + b, minlength=E1 * E2).view(E1, E2)
    return CoOccurrence(layers, counts, normalized_mutual_information(counts) if a.numel() else float("nan"))


def analyze_routings(
    routings: Sequence[Routing],
    hidden: Sequence[Tensor | None] | None = None,
    *,
    layers: Sequence[int] | None = None,
    k: int = DIMENSION_K,
    min_tokens: int = MIN_DIMENSION_TOKENS,
) -> ModelAnalysis:
    """Every statistic of this module for the MoE layers ``routings`` (in the order they run).

    ``hidden``: per layer, the (T, H) hidden states it received (or None: no dimensions).
    ``layers``: the layers' labels (default 0..L-1), used in the results.
    """
    L = len(routings)
    labels = tuple(range(L)) if layers is None else tuple(int(i) for i in layers)
    hidden = (None,) * L if hidden is None else tuple(hidden)
    if len(labels) != L or len(hidden) != L:
        raise ValueError(f"layers and hidden must have one entry per routing ({L}), got "
                         f"{len(labels)} and {len(hidden)}")
    stats = tuple(layer_stats(r, h, layer=i, k=k, min_tokens=min_tokens)
                  for r, h, i in zip(routings, hidden, labels, strict=True))
    pairs = tuple(cooccurrence(routings[j], routings[j + 1], layers=(labels[j], labels[j + 1]))
                  for j in range(L - 1))
    return ModelAnalysis(stats, top1_paths(routings), pairs)


def analyze_capture(
    capture: ModelCapture, *, k: int = DIMENSION_K, min_tokens: int = MIN_DIMENSION_TOKENS
) -> ModelAnalysis:
    """:func:`analyze_routings` of a :class:`~moelab.interop.ModelCapture`, layers labelled by their
    decoder layer index."""
    return analyze_routings(capture.routings, [c.hidden for c in capture.layers],
                            layers=[c.layer for c in capture.layers], k=k, min_tokens=min_tokens)
