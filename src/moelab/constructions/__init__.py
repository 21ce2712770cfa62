"""Hand-built weights realising the paper's theorems, as ordinary moelab models (no training).

Each builder returns ``(model, summary)``: a :class:`~moelab.layers.DeepMoE` or
:class:`~moelab.layers.MoELayer` with top-1 routing and the paper's weighting, and a
:class:`ConstructionSummary` (shape, parameters, paths, the theorem's bound, measured errors).

* :func:`build_piecewise_moe` — Thm 5.3, Eq. (4) targets on [0, E]^L, depth 2L.

Building blocks: :func:`interpolant` (1-D interpolants as ReLU units), and :class:`Net`,
:class:`LayerSpec`, :func:`build_layer`, :func:`build_stack` for writing hand-set weights into moelab
layers.
"""

from moelab.constructions.assembly import LayerSpec, Net, build_layer, build_stack
from moelab.constructions.interpolation import Interpolant, interpolant, interpolation_error
from moelab.constructions.piecewise import build_piecewise_moe
from moelab.constructions.summary import ConstructionSummary

__all__ = [
    "ConstructionSummary",
    "Interpolant",
    "LayerSpec",
    "Net",
    "build_layer",
    "build_piecewise_moe",
    "build_stack",
    "interpolant",
    "interpolation_error",
]
