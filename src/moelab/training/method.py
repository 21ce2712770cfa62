"""Which training method a run uses, and its settings: ``TrainConfig.method``.

The methods themselves live in :mod:`moelab.training.recipes`; this module holds only their
configuration, so that :class:`~moelab.training.loop.TrainConfig` can carry it without importing
the methods. None of the methods reads the target's pieces, regions or breakpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moelab._validation import one_of, positive_float, positive_int

#: ``plain``: the model's own forward pass throughout. ``anneal``: soft-to-hard routing.
#: ``em``: hard-assignment alternation (hierarchical mixtures of experts, Jordan & Jacobs 1994).
#: ``straight-through``: hard top-1 forward, softmax gradient to the router (Bengio et al. 2013).
METHODS = ("plain", "anneal", "em", "straight-through")


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """A training method (:data:`METHODS`), run for the first ``fraction`` of the steps; the rest
    train the model through its own forward pass (hard top-1 routing), so every method ends as the
    model it evaluates.

    * ``anneal``: the temperature falls geometrically from ``t_start`` to ``t_end`` over the
      method's steps; each MoE layer outputs sum_e softmax(logits / T)_e f_e(x).
    * ``em``: each batch is assigned to the expert paths that fit it best (every one of the
      prod_l E_l forced paths is evaluated), scored by -err / (2 sigma^2) + log prior(path) when
      ``em_prior`` (the MAP E-step, the prior being the routers' path probability and sigma^2 the
      batch's mean best error) or by -err alone; the experts are trained along the assigned paths
      and every router, as a classifier, on its layer's assigned expert (cross-entropy weighted by
      ``router_weight``).
    * ``straight-through``: the forward pass is exactly hard top-1; the chosen expert's output is
      multiplied by 1 + p - stop_gradient(p), so the router gets the gradient of the softmax.
    * ``restarts`` > 1 (any method): that many candidates, each built from its own seed and trained
      for ``restart_fraction`` of the steps, are scored on ``validation_size`` samples drawn from
      their own seed (never the test set); the best continues with the full budget.
    """

    name: str = "plain"
    fraction: float = 0.6
    t_start: float = 1.0
    t_end: float = 0.01
    em_prior: bool = True
    router_weight: float = 1.0
    restarts: int = 1
    restart_fraction: float = 0.2
    validation_size: int = 4096

    def __post_init__(self) -> None:
        one_of("method.name", self.name, METHODS)
        for name in ("fraction", "restart_fraction"):
            value = positive_float(f"method.{name}", getattr(self, name))
            if value > 1:
                raise ValueError(f"method.{name} must be in (0, 1], got {value!r}")
        positive_float("method.t_start", self.t_start)
        positive_float("method.t_end", self.t_end)
        if self.t_end > self.t_start:
            raise ValueError(f"method.t_end={self.t_end!r} must be <= method.t_start="
                             f"{self.t_start!r}: the temperature anneals downwards")
        positive_float("method.router_weight", self.router_weight, allow_zero=True)
        positive_int("method.restarts", self.restarts)
        positive_int("method.validation_size", self.validation_size)

    @property
    def is_plain(self) -> bool:
        """True for the plain method without restarts: training is the loop's alone."""
        return self.name == "plain" and self.restarts == 1

    def replace(self, **changes) -> MethodConfig:
        return dataclasses.replace(self, **changes)
