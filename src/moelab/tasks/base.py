"""What every moelab task offers: the :class:`Task` protocol, and sampling shared by the task classes.

A task is a target function on R^(d_in) with values in R^(d_out) and a ground-truth partition of its
domain into ``n_regions`` regions: the charts of a manifold atlas (:class:`~moelab.tasks.ManifoldTask`,
Sec. 4) or the pieces of Eq. (4) and Eq. (5) (:class:`~moelab.tasks.PiecewiseTask`,
:class:`~moelab.tasks.ProductTask`, Sec. 5), which a well-routed MoE's experts should match. Code
that trains on, evaluates or analyses a task needs only this protocol::

    model = DeepMoE(task.d_in, task.d_out, ...)
    train(model, task, config)           # a task is a sampler: task(n, generator) -> (x, y)
    truth = task.region(x)               # (n,) long, in [0, task.n_regions)

Shape legend: n samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from moelab._validation import positive_int
from moelab.tasks._common import resolve_generator


@runtime_checkable
class Sample(Protocol):
    """n labelled points of a task: inputs x (n, d_in), targets y (n, d_out), regions (n,) long."""

    @property
    def x(self) -> Tensor: ...

    @property
    def y(self) -> Tensor: ...

    @property
    def region(self) -> Tensor: ...


@runtime_checkable
class Task(Protocol):
    """A regression task with a ground-truth partition into regions (charts or pieces)."""

    @property
    def d_in(self) -> int:
        """Input width."""
        ...

    @property
    def d_out(self) -> int:
        """Output width."""
        ...

    @property
    def n_regions(self) -> int:
        """Number of ground-truth regions (charts or pieces)."""
        ...

    def region(self, x: Tensor) -> Tensor:
        """(n, d_in) -> (n,) long, the ground-truth region of each point."""
        ...

    def sample(
        self, n: int, *, generator: torch.Generator | None = None, seed: int | None = None
    ) -> Sample:
        """n labelled points drawn from the task's distribution."""
        ...

    def __call__(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x, y) of :meth:`sample`: the task as a training sampler."""
        ...


class Sampling(ABC):
    """:meth:`sample` and the sampler call shared by the task classes, which implement ``_sample``."""

    @abstractmethod
    def _sample(self, n: int, rng: torch.Generator) -> Sample:
        """n labelled points drawn with ``rng``; ``n`` is already checked."""

    def sample(
        self, n: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Sample:
        """n points drawn from the task's distribution, with targets and ground truth; the random
        state is ``seed`` or ``generator`` (at most one; neither: a fresh nondeterministic one)."""
        return self._sample(positive_int("n", n), resolve_generator(seed, generator))

    def __call__(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x, y) of ``sample(n, generator=generator)``: the training loop's sampler."""
        s = self.sample(n, generator=generator)
        return s.x, s.y
