"""Recording the routing of MoE layers inside any model, explicitly and for one block of code.

MoE layers keep nothing between calls. To see what the layers inside a model did (a ``DeepMoE``, an
``nn.Sequential``, any module), record them::

    with record_routing(model) as rec:
        y = model(x)
    rec.routings        # every MoE layer's Routing, in call order
    rec.aux_losses      # each auxiliary loss summed over the layers (lazy)

``detach=True`` (default) keeps detached copies: nothing holds the autograd graph, so the record
can be kept for analysis. ``detach=False`` keeps the outputs as computed, for a training step that
backpropagates through ``rec.aux_losses``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from moelab.layers.moe import MoELayer, detached
from moelab.layers.outputs import LazyLosses, MoEOutput, Routing


@dataclass
class RoutingRecord:
    """What :func:`record_routing` saw: each call of an MoE layer, in call order."""

    layers: list[MoELayer] = field(default_factory=list)
    outputs: list[MoEOutput] = field(default_factory=list)

    @property
    def routings(self) -> tuple[Routing, ...]:
        return tuple(out.routing for out in self.outputs)

    @property
    def aux_losses(self) -> LazyLosses:
        """Each named auxiliary loss summed over the recorded calls (unweighted, lazy)."""
        return LazyLosses.sum([out.aux_losses for out in self.outputs])


@contextmanager
def record_routing(model: nn.Module, *, detach: bool = True) -> Iterator[RoutingRecord]:
    """Record the :class:`~moelab.layers.outputs.MoEOutput` of every MoE layer inside ``model``
    (``model`` itself included) while the block runs; see the module docstring."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    record = RoutingRecord()

    def capture(layer: MoELayer, out: MoEOutput) -> None:
        record.layers.append(layer)
        record.outputs.append(detached(layer, out) if detach else out)

    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    for layer in layers:
        layer._recorders.append(capture)
    try:
        yield record
    finally:
        for layer in layers:
            layer._recorders.remove(capture)
