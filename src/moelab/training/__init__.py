"""Training loop and evaluation (model- and task-agnostic)."""

from moelab.training.loop import (
    AUX_LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    Metrics,
    Sampler,
    TrainConfig,
    TrainResult,
    evaluate,
    train,
)
from moelab.training.method import METHODS, MethodConfig
from moelab.training.recipes import Fitted, fit

__all__ = [
    "AUX_LOSSES",
    "METHODS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Fitted",
    "MethodConfig",
    "Metrics",
    "Sampler",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "fit",
    "train",
]
