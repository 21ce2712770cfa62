"""The experts' elementwise functions, selectable by name: activations (:data:`ACTIVATIONS`) and
the gated units of gated experts (:data:`GATED_UNITS`). The configs' choice types
(:data:`~moelab.layers.config.Activation`, :data:`~moelab.layers.config.GatedForm`) are built from
these tables, so a new one is added here alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from moelab.layers.config import ExpertConfig


def _identity(x: Tensor) -> Tensor:
    return x


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": _identity,  # a named function, so modules using it pickle
}


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation called ``name`` (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation={name!r} is unknown; expected one of {sorted(ACTIVATIONS)}"
        ) from None


def _swiglu(gate: Tensor, value: Tensor, config: ExpertConfig) -> Tensor:
    return get_activation(config.activation)(gate) * value


def _clamped(gate: Tensor, value: Tensor, config: ExpertConfig) -> Tensor:
    limit = config.clamp_limit
    gate = gate.clamp(max=limit)
    value = value.clamp(min=-limit, max=limit)
    return (value + 1) * (gate * torch.sigmoid(gate * config.glu_alpha))


#: The gated unit of gated experts, from the gate's and the value's pre-activations g and v (same
#: shape) and the experts' config: ``"swiglu"`` act(g) * v (Mixtral, Qwen, OLMoE, DeepSeek-V3 with
#: ``activation="silu"``); ``"clamped"`` (GPT-OSS, limit L = ``clamp_limit``, alpha =
#: ``glu_alpha``) g' = min(g, L), v' = clip(v, -L, L), (v' + 1) * g' * sigmoid(alpha * g').
GATED_UNITS: dict[str, Callable[[Tensor, Tensor, ExpertConfig], Tensor]] = {
    "swiglu": _swiglu,
    "clamped": _clamped,
}
