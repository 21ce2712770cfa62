"""MoE layers: experts, routers, dispatch, the MoE layer, deep stacks and the dense baseline.

Shape legend, for the whole project: tensor names carry their shape as a suffix (``x_TI``,
``ids_TK``), one letter per dimension:

* T tokens (every leading dimension of the input flattened), D or I input width, O output width,
  H hidden width of an expert, F = E * H flattened hidden units of all experts;
* E experts, K experts per token (token choice), S routing slots per token (S = K under token
  choice, S = E under expert choice), C capacity (assignments one expert takes);
* N kept (token, slot) assignments, sorted by expert;
* expert parallelism: W ranks, L = E / W experts per rank, M rows a rank receives.
"""

from moelab.layers.activations import ACTIVATIONS, get_activation
from moelab.layers.config import (
    LEGACY_NAMES,
    DeepMoEConfig,
    DenseMLPConfig,
    ExpertConfig,
    MoEConfig,
    RouterConfig,
)
from moelab.layers.dispatch import (
    DISPATCH_MODES,
    Dispatched,
    Dispatcher,
    LocalDispatcher,
    dispatch_and_combine,
)
from moelab.layers.experts import (
    ExpertBank,
    ExpertResult,
    Experts,
    LowDimExperts,
    build_experts,
    gated_unit,
    grouped_linear,
)
from moelab.layers.mlp import MLP, DenseMLP, GatedMLP
from moelab.layers.moe import MoELayer, aux_losses, collect_aux_losses
from moelab.layers.outputs import ModelOutput, MoEOutput, Routing
from moelab.layers.recording import RoutingRecord, record_routing
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
    "LEGACY_NAMES",
    "NOISES",
    "ROUTINGS",
    "SCORERS",
    "WEIGHTINGS",
    "DeepMoE",
    "DeepMoEConfig",
    "DenseMLP",
    "DenseMLPConfig",
    "Dispatched",
    "Dispatcher",
    "ExpertBank",
    "ExpertConfig",
    "ExpertResult",
    "Experts",
    "GatedMLP",
    "LocalDispatcher",
    "LowDimExperts",
    "MLP",
    "ModelOutput",
    "MoEConfig",
    "MoELayer",
    "MoEOutput",
    "Router",
    "RouterConfig",
    "Routing",
    "RoutingRecord",
    "aux_losses",
    "build_experts",
    "collect_aux_losses",
    "dispatch_and_combine",
    "gated_unit",
    "get_activation",
    "grouped_linear",
    "record_routing",
]
