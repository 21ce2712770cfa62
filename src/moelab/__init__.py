"""moelab: mixture-of-experts layers and the theory of Wang & E (NeurIPS 2025), runnable."""

__version__ = "0.1.0"
