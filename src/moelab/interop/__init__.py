"""moelab and Hugging Face transformers: capture the routing of a whole HF MoE model and analyse it
with moelab (``moelab analyze-hf``); convert MoE blocks to moelab layers and back
(:mod:`moelab.interop.hf`). transformers is optional (``pip install 'moelab[hf]'``); it is
imported only when a function here needs it.

The names below are loaded on first access, so that ``moelab.cli`` can add the ``analyze-hf``
command (:mod:`moelab.interop.hf_cli`) without importing torch for ``moelab --help``.
"""

from __future__ import annotations

import importlib

_SOURCES = {
    "moelab.interop.hf_capture": (
        "FAMILIES", "HFUnavailableError", "LayerCapture", "ModelCapture", "capture_routing",
    ),
    "moelab.interop.hf": ("LAYOUTS", "from_hf", "moe_config", "to_hf"),
    "moelab.interop.hf_checkpoint": ("from_hf_checkpoint",),
    "moelab.interop.hf_models": ("ARCHITECTURES", "byte_token_ids", "load_model", "random_model"),
    "moelab.interop.routing_analysis": (
        "CoOccurrence", "ExpertDimension", "LayerStats", "ModelAnalysis", "analyze_capture",
        "analyze_routings", "cooccurrence", "expert_dimensions", "layer_stats", "most_common_paths",
        "normalized_mutual_information", "top1_paths",
    ),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

