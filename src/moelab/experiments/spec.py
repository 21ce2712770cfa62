"""An experiment: a base run configuration, the axes of its grid, how many seeds, and what its
report checks and shows.

Each axis is a list of labelled variants, each a set of dotted overrides of the base configuration
(e.g. axis "D" with variants {"16": {"task.D": 16}, ...}). The runs are the product of all axes
times the seeds. User overrides (``--set``) are applied last, to every run, and runs that become
identical are run once.

The report part is declared with the experiment (see docs/extending.md): ``checks`` (each gives
verdicts, e.g. :class:`moelab.experiments.checks.Flat`), ``tables`` and ``figures``
(:mod:`moelab.experiments.displays`); the generic report section renders them from the
experiment's axes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from moelab._validation import positive_int
from moelab.experiments.config import AnyRun, apply_overrides


@dataclass(frozen=True)
class Axis:
    """One grid axis: ``name`` and its labelled variants (label -> dotted overrides)."""

    name: str
    variants: tuple[tuple[str, Mapping[str, Any]], ...]

    @classmethod
    def of(cls, name: str, key: str, values) -> Axis:
        """An axis that sets one key: label str(value) -> {key: value}."""
        return cls(name, tuple((str(v), {key: v}) for v in values))


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """A named experiment (see the module docstring). ``claim`` is the paper's claim it tests;
    ``checks``, ``tables`` and ``figures`` are declarations of :mod:`moelab.experiments.checks` and
    :mod:`moelab.experiments.displays`.

    The name is stamped on the base configuration (``base.experiment``), so it is written once:
    the registry's ``register`` decorator gives it, and the base may leave its ``experiment``
    empty."""

    name: str = ""
    title: str
    claim: str
    base: AnyRun
    axes: tuple[Axis, ...] = ()
    seeds: int = 3
    notes: tuple[str, ...] = field(default=())
    checks: tuple[Any, ...] = ()
    tables: tuple[Any, ...] = ()
    figures: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.base.experiment != self.name:
            object.__setattr__(self, "base", replace(self.base, experiment=self.name))

    def runs(self, *, seeds: int | None = None, overrides: Mapping[str, Any] | None = None
             ) -> list[AnyRun]:
        """Every run of the grid, for seeds 0 .. seeds - 1, with ``overrides`` applied last."""
        if not self.name:
            raise ValueError(f"experiment {self.title!r} has no name; register it with "
                             "@register(name) or pass name=")
        seeds = positive_int("seeds", self.seeds if seeds is None else seeds)
        overrides = dict(overrides or {})
        # Check the user's overrides once against the base, so a bad key fails before any run.
        apply_overrides(self.base, overrides)
        # An axis whose every key the user overrides collapses to the user's value.
        axes = [a for a in self.axes
                if not all(set(sets) <= set(overrides) for _, sets in a.variants)]
        runs, seen = [], set()
        for combo in itertools.product(*(axis.variants for axis in axes)):
            changes: dict[str, Any] = {}
            labels: dict[str, str] = {}
            for axis, (label, sets) in zip(axes, combo, strict=True):
                changes.update(sets)
                labels[axis.name] = label
            for seed in range(seeds):
                run = apply_overrides(self.base, {**changes, "seed": seed, **overrides,
                                                  "labels": labels})
                if run.run_id() not in seen:
                    seen.add(run.run_id())
                    runs.append(run)
        return runs
