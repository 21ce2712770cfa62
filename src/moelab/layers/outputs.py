"""The small frozen records that layers and models return. Shapes: see :mod:`moelab.layers`."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


class LazyLosses(Mapping[str, Tensor]):
    """A read-only mapping of auxiliary-loss names to scalars, each computed on first access.

    Layers offer every loss that applies, but a training step usually needs few of them (often
    none); computing only what is read keeps the forward pass as cheap as the layer itself.
    """

    def __init__(self, thunks: Mapping[str, Callable[[], Tensor]]) -> None:
        self._thunks = dict(thunks)
        self._values: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._values:
            self._values[name] = self._thunks[name]()
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._thunks)

    def __len__(self) -> int:
        return len(self._thunks)

    def __repr__(self) -> str:
        return f"LazyLosses({sorted(self._thunks)})"

    @classmethod
    def sum(cls, parts: list[Mapping[str, Tensor]]) -> LazyLosses:
        """Per name, the sum over ``parts`` of the losses of that name (computed lazily)."""
        names: list[str] = []
        for part in parts:
            names.extend(n for n in part if n not in names)

        def total(name: str) -> Callable[[], Tensor]:
            return lambda: functools.reduce(operator.add, (p[name] for p in parts if name in p))

        return cls({name: total(name) for name in names})


@dataclass(frozen=True, kw_only=True)
class Routing:
    """Which experts each token uses, and with what weight.

    Attributes:
        expert_ids: (T, S) long, the expert of each slot. Token choice: the K selected experts,
            best first. Expert choice: slot e is expert e.
        weights: (T, S), the combine weight of each slot; 0 where the slot is not kept.
        kept: (T, S) bool, whether the slot's assignment is computed (False: dropped by the
            capacity limit, or not chosen by that expert under expert choice).
        logits: (T, E), the router's scores (with noise, when noise is on and training).
        probs: (T, E), softmax over all E experts of ``logits`` (what balancing losses use).
        tokens_per_expert: (E,) long, kept assignments per expert.
        dropped_fraction: () float. Token choice: the fraction of the T*K assignments dropped by
            the capacity limit. Expert choice: the fraction of tokens that no expert took.
        clean_logits, noise_std: (T, E), for the noisy top-k load loss; None without that noise.
        expert_choice: whether the slots are expert-choice slots (S = E, slot e is expert e).
        all_kept: True when the router guarantees that every slot is kept (no capacity limit),
            so dispatch need not read ``kept`` (no host sync); False means "look at ``kept``".
    """

    expert_ids: Tensor
    weights: Tensor
    kept: Tensor
    logits: Tensor
    probs: Tensor
    tokens_per_expert: Tensor
    dropped_fraction: Tensor
    clean_logits: Tensor | None = None
    noise_std: Tensor | None = None
    expert_choice: bool = False
    all_kept: bool = False

    def detach(self) -> Routing:
        """The same routing with every tensor detached from the autograd graph."""
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)})

    @property
    def num_experts(self) -> int:
        return self.logits.shape[-1]

    def combine_weights(self) -> Tensor:
        """The (T, E) matrix of combine weights: row t holds token t's weight for each expert."""
        w_TE = torch.zeros_like(self.logits, dtype=self.weights.dtype)
        return w_TE.scatter(1, self.expert_ids, self.weights)  # weights are 0 where not kept

    def top1(self) -> Tensor:
        """(T,) the first-choice expert of every token (expert choice: the highest-weight one)."""
        if self.expert_choice:
            return self.combine_weights().argmax(-1)
        return self.expert_ids[:, 0]


@dataclass(frozen=True)
class MoEOutput:
    """One MoE layer's forward pass: output, routing, and the unweighted auxiliary losses.

    ``y`` has the input's leading shape and the layer's output width. ``aux_losses`` maps a name
    (``load_balance``, ``z_loss``, ``importance``, ``load``, ``reconstruction``) to a scalar,
    computed when first read (a :class:`LazyLosses`).
    """

    y: Tensor
    routing: Routing
    aux_losses: Mapping[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelOutput:
    """A whole model's forward pass.

    ``aux_losses`` sums each named auxiliary loss over the model's MoE layers (unweighted: the
    training loop weights them). ``layers`` holds every MoE layer's :class:`MoEOutput`, in order.
    """

    y: Tensor
    aux_losses: Mapping[str, Tensor]
    layers: tuple[MoEOutput, ...]

    @property
    def routings(self) -> tuple[Routing, ...]:
        return tuple(layer.routing for layer in self.layers)
