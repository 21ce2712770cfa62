"""Hand-built weights realising the paper's theorems, as ordinary moelab models (no training).

Each builder returns ``(model, summary)``: a :class:`~moelab.layers.DeepMoE` or
:class:`~moelab.layers.MoELayer` with top-1 routing and the paper's weighting, and a
:class:`ConstructionSummary` (shape, parameters, paths, the theorem's bound, measured errors).

* :func:`build_piecewise_moe` — Thm 5.3, Eq. (4) targets on [0, E]^L, depth 2L.
* :func:`build_manifold_moe` — Cor 4.9 (two-layer experts) and Thm 4.8 (three-layer), depth 2.
* :func:`build_product_moe` — Thm 5.2, Eq. (5) targets on products of manifolds, depth 2L.
* :func:`build_nonlinear_manifold_moe`, :func:`build_nonlinear_piecewise_moe` — MLP routers
  (suggestion 1): depth 1 and depth L.
* :data:`CONSTRUCTIONS` — the named constructions of ``moelab construct``.

Building blocks: :func:`interpolant` (1-D interpolants as ReLU units), :func:`partition_net`
(tau ~ rho), :func:`chart_expert` (g_i o phi_i), :func:`linear_router_misroute` (the one-layer
baseline), :func:`width_sweep` (measured rate in m beside the theorem's exponent), and
:class:`Net`, :class:`LayerSpec`, :func:`build_layer`, :func:`build_stack` for writing hand-set
weights into moelab layers.
"""

from moelab.constructions.assembly import LayerSpec, Net, build_layer, build_stack
from moelab.constructions.baseline import LinearRouterBaseline, linear_router_misroute
from moelab.constructions.charts import ChartExpert, chart_expert
from moelab.constructions.interpolation import Interpolant, interpolant, interpolation_error
from moelab.constructions.manifold import build_manifold_moe
from moelab.constructions.nonlinear import build_nonlinear_manifold_moe, build_nonlinear_piecewise_moe
from moelab.constructions.partition import PartitionNet, partition_net
from moelab.constructions.piecewise import build_piecewise_moe
from moelab.constructions.product import build_product_moe
from moelab.constructions.rates import WidthSweep, theorem_exponent, width_sweep
from moelab.constructions.registry import CONSTRUCTIONS
from moelab.constructions.summary import ConstructionSummary

__all__ = [
    "CONSTRUCTIONS",
    "ChartExpert",
    "ConstructionSummary",
    "Interpolant",
    "LayerSpec",
    "LinearRouterBaseline",
    "Net",
    "PartitionNet",
    "WidthSweep",
    "build_layer",
    "build_manifold_moe",
    "build_nonlinear_manifold_moe",
    "build_nonlinear_piecewise_moe",
    "build_piecewise_moe",
    "build_product_moe",
    "build_stack",
    "chart_expert",
    "interpolant",
    "interpolation_error",
    "linear_router_misroute",
    "partition_net",
    "theorem_exponent",
    "width_sweep",
]
