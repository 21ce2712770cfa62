"""moelab and Hugging Face transformers: capture the routing of a whole HF MoE model and analyse it
with moelab (``moelab analyze-hf``). transformers is optional (``pip install 'moelab[hf]'``); it is
imported only when a function here needs it."""

from moelab.interop.hf_capture import (
    FAMILIES,
    HFUnavailableError,
    LayerCapture,
    ModelCapture,
    capture_routing,
)
from moelab.interop.hf_models import ARCHITECTURES, byte_token_ids, load_model, random_model
from moelab.interop.routing_analysis import (
    CoOccurrence,
    ExpertDimension,
    LayerStats,
    ModelAnalysis,
    analyze_capture,
    analyze_routings,
    cooccurrence,
    expert_dimensions,
    layer_stats,
    most_common_paths,
    normalized_mutual_information,
    top1_paths,
)

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "CoOccurrence",
    "ExpertDimension",
    "HFUnavailableError",
    "LayerCapture",
    "LayerStats",
    "ModelAnalysis",
    "ModelCapture",
    "analyze_capture",
    "analyze_routings",
    "byte_token_ids",
    "capture_routing",
    "cooccurrence",
    "expert_dimensions",
    "layer_stats",
    "load_model",
    "most_common_paths",
    "normalized_mutual_information",
    "random_model",
    "top1_paths",
]
