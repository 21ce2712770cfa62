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

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "HFUnavailableError",
    "LayerCapture",
    "ModelCapture",
    "byte_token_ids",
    "capture_routing",
    "load_model",
    "random_model",
]
