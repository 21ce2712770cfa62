"""MoE layers: experts, routers, dispatch, the MoE layer, deep stacks and the dense baseline."""

from moelab.layers.activations import ACTIVATIONS, get_activation
from moelab.layers.dispatch import DISPATCH_MODES, dispatch_and_combine
from moelab.layers.experts import ExpertResult, Experts, LowDimExperts, grouped_linear
from moelab.layers.mlp import MLP, DenseMLP
from moelab.layers.moe import MoEConfig, MoELayer, collect_aux_losses
from moelab.layers.outputs import ModelOutput, MoEOutput, Routing
from moelab.layers.routers import (
    CAPACITY_PRIORITIES,
    NOISES,
    ROUTINGS,
    SCORERS,
    WEIGHTINGS,
    Router,
)
from moelab.layers.stack import DeepMoE

__all__ = [
    "ACTIVATIONS",
    "CAPACITY_PRIORITIES",
    "DISPATCH_MODES",
    "NOISES",
    "ROUTINGS",
    "SCORERS",
    "WEIGHTINGS",
    "DeepMoE",
    "DenseMLP",
    "ExpertResult",
    "Experts",
    "LowDimExperts",
    "MLP",
    "ModelOutput",
    "MoEConfig",
    "MoELayer",
    "MoEOutput",
    "Router",
    "Routing",
    "collect_aux_losses",
    "dispatch_and_combine",
    "get_activation",
    "grouped_linear",
]
