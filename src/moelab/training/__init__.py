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

__all__ = [
    "AUX_LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "Metrics",
    "Sampler",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "train",
]
