"""Runs arranged on their experiment's grid, and the numbers its checks and report read off them.

One :class:`Cell` per distinct configuration, its seeds pooled, each metric summarised over seeds
as a :class:`Spread`. Runs whose configurations differ are never pooled: where two such runs share
their labels, each setting they differ in becomes an extra axis of the grid (e.g. ``train.steps``).
:func:`deviations` says how the runs differ from the registered experiment. Nothing here draws or
formats: the checks an experiment declares (:mod:`moelab.experiments.checks`) evaluate on a
:class:`Grid`, and :mod:`moelab.reporting.render` renders its displays
(:mod:`moelab.experiments.displays`) from one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from moelab.analysis.rates import RateFit, fit_slope
from moelab.experiments.config import ConstructionRun, RunConfig
from moelab.experiments.spec import Experiment
from moelab.experiments.store import StoredRun, flatten
from moelab.training.streams import STREAM_FIELDS
from moelab.typed_json import to_json

#: A key into a cell: an axis name, a dotted config path, or a function of the cell.
Key = str | Callable[["Cell"], Any]
#: A selection of cells: key -> wanted label or value, or a predicate on it.
Select = Mapping[str, Any]
_NOT_CONFIG = ("seed", "labels", "experiment")
_ABSENT = object()
#: Config paths that say where a run's rows were streamed, not how it ran: no setting of a run.
_NOT_SETTINGS = tuple(f"train.{name}" for name in STREAM_FIELDS)


class MissingData(LookupError):
    """A declaration asks for data the stored runs do not have (a config path of a database written
    before a key was renamed, another experiment's runs): the report skips that declaration and
    says so (``note``: the whole note, else one naming the declaration)."""

    def __init__(self, message: str, *, note: str | None = None) -> None:
        super().__init__(message)
        self.note = note


@dataclass(frozen=True)
class Spread:
    """Median and range of one quantity over a group of runs (usually the seeds of one cell).

    ``n`` counts the finite values summarised; ``missing`` the runs whose value was absent or not
    finite (e.g. a diverged run). With ``n == 0`` the median, low and high are NaN.
    """

    median: float
    low: float
    high: float
    n: int
    missing: int = 0

    @property
    def ok(self) -> bool:
        return self.n > 0


def spread(values: Iterable[float | None]) -> Spread:
    """The median, min and max of the finite values among ``values``."""
    v = np.array([math.nan if x is None else x for x in values], float)
    finite = v[np.isfinite(v)]
    if not finite.size:
        return Spread(math.nan, math.nan, math.nan, 0, v.size)
    return Spread(float(np.median(finite)), float(finite.min()), float(finite.max()), finite.size,
                  v.size - finite.size)


def metric(run: StoredRun, name: str) -> float | None:
    """A scalar result of ``run``: ``test_mse``, ``test_sup``, ``seconds`` or a key of its metrics."""
    value = getattr(run, name) if name in ("test_mse", "test_sup", "seconds") else run.metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def config_value(run: StoredRun, dotted: str, missing: Any = None) -> Any:
    """The value at a dotted path of the run's stored config (``"task.D"``), or ``missing`` if the
    config has no such path. The report reads every config value through here (and
    :func:`~moelab.experiments.store.flatten`), so a renamed key is a change in one place."""
    node: Any = run.config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


def as_number(label: str) -> float | None:
    """``"128"`` -> 128.0; None for a label that is not a number."""
    try:
        return float(label)
    except ValueError:
        return None


def natural_key(label: str) -> tuple[int, float, str]:
    """Sort numbers numerically (``"16" < "128"``) and before words."""
    number = as_number(label)
    return (0, number, label) if number is not None else (1, 0.0, label)


@dataclass(frozen=True)
class Cell:
    """The runs of one grid point (one configuration, every seed), with their axis labels and, for
    an axis whose variants set one config path, that path (where its numeric position is read)."""

    labels: Mapping[str, str]
    runs: tuple[StoredRun, ...]
    keys: Mapping[str, str] = field(default_factory=dict)

    def config(self, dotted: str) -> Any:
        value = config_value(self.runs[0], dotted, _ABSENT)
        if value is _ABSENT:
            raise MissingData(f"the runs of this cell have no config value {dotted!r}")
        return value

    def spread(self, name: str) -> Spread:
        return spread(metric(r, name) for r in self.runs)

    def median(self, name: str) -> float:
        return self.spread(name).median

    def get(self, key: Key) -> Any:
        """The cell's label (axis name), config value (dotted path) or ``key(cell)``."""
        if callable(key):
            return key(self)
        return self.labels[key] if key in self.labels else self.config(key)

    def label(self, key: Key) -> str:
        return str(self.get(key))

    def x(self, key: Key) -> float | None:
        """The numeric position of the cell along ``key`` (None if it has none)."""
        value = self.get(self.keys.get(key, key) if isinstance(key, str) else key)
        if isinstance(value, bool) or value is None:
            return None
        return float(value) if isinstance(value, (int, float)) else as_number(str(value))

    def matches(self, where: Select | None) -> bool:
        return all(want(v) if callable(want) else v == want or str(v) == str(want)
                   for k, want in (where or {}).items() for v in [self.get(k)])


@dataclass(frozen=True)
class Grid:
    """An experiment's cells, its axes in the registry's order and the labels of each axis in order."""

    experiment: str
    axes: tuple[str, ...]
    order: Mapping[str, Sequence[str]]
    cells: tuple[Cell, ...]
    extra: tuple[str, ...] = ()  # settings split off as axes (runs differing only in them)

    def select(self, where: Select | None = None) -> list[Cell]:
        return [c for c in self.cells if c.matches(where)]

    def groups(self, where: Select | None, per: Sequence[Key]) -> dict[tuple[str, ...], list[Cell]]:
        """The cells ``where`` selects, per combination of ``per`` and of the split-off settings."""
        return self.split(self.select(where), tuple(per) + self.extra)

    def split(self, cells: Sequence[Cell], keys: Sequence[Key]) -> dict[tuple[str, ...], list[Cell]]:
        """``cells`` grouped by their labels along ``keys``, in the registry's order."""
        groups: dict[tuple[str, ...], list[Cell]] = {}
        for c in cells:
            groups.setdefault(tuple(c.label(k) for k in keys), []).append(c)
        ranks = [list(self.order.get(k, ())) if isinstance(k, str) else [] for k in keys]
        return dict(sorted(groups.items(), key=lambda item: tuple(
            (r.index(v) if v in r else len(r), natural_key(v))
            for r, v in zip(ranks, item[0], strict=True))))


def loglog_slope(cells: Sequence[Cell], x: Key, name: str) -> RateFit | None:
    """The fitted log-log slope of metric ``name`` in ``x`` over every run of ``cells`` that has a
    position along ``x``."""
    pts = [(at, metric(r, name)) for c in cells if (at := c.x(x)) is not None for r in c.runs]
    return fit_slope([a for a, _ in pts], [b for _, b in pts])


def largest(cells: Sequence[Cell], x: Key | None) -> Cell:
    """The cell furthest along ``x`` (the last of ``cells`` if ``x`` is None)."""
    return max(cells, key=lambda c: c.x(x) or -math.inf) if x is not None else cells[-1]


def build_grid(name: str, runs: Sequence[StoredRun], exp: Experiment | None) -> Grid:
    """The grid of ``runs`` (all of experiment ``name``; ``exp`` its registration or None). A run
    without a label on an axis (the user overrode it for the whole sweep) is labelled by the value
    of the axis's config key, or ``"custom"``."""
    if exp is not None:
        axes = [a.name for a in exp.axes]
        order = {a.name: [label for label, _ in a.variants] for a in exp.axes}
        keys = {a.name: k for a in exp.axes if (k := _one_key(a.variants))}
    else:
        axes, order, keys = sorted({k for r in runs for k in r.labels}, key=natural_key), {}, {}
    labelled = [(r, {a: str(r.labels[a] if a in r.labels else config_value(r, keys[a])
                            if a in keys else "custom") for a in axes}) for r in runs]
    settings = [_flat_config(r.config) for r in runs]
    extras = _differing([(flat, lab) for flat, (_, lab) in zip(settings, labelled, strict=True)])
    cells: dict[str, list] = {}
    for (r, lab), flat in zip(labelled, settings, strict=True):
        lab.update((extra, str(config_value(r, extra))) for extra in extras)
        cells.setdefault(_identity(flat), [lab, []])[1].append(r)
    grid = Grid(name, tuple(axes + extras), order, (), tuple(extras))
    unsorted = [Cell(lab, tuple(sorted(rs, key=lambda r: (r.seed, r.run_id))), keys)
                for lab, rs in cells.values()]
    return replace(grid, cells=tuple(c for cs in grid.split(unsorted, grid.axes).values() for c in cs))


def _one_key(variants) -> str | None:
    keys = {k for _, sets in variants for k in sets}
    return next(iter(keys)) if len(keys) == 1 else None


def _identity(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def _differing(labelled: Sequence[tuple[dict[str, Any], dict[str, str]]]) -> list[str]:
    """The config paths in which runs with the same labels differ (never pooled together), from
    each run's settings (:func:`_flat_config`) and labels."""
    configs: dict[tuple, dict[str, dict]] = {}
    for flat, lab in labelled:
        configs.setdefault(tuple(sorted(lab.items())), {})[_identity(flat)] = flat
    differ: set[str] = set()
    for first, *others in (list(variants.values()) for variants in configs.values()):
        differ |= {k for f in others for k in f.keys() | first.keys() if f.get(k) != first.get(k)}
    return sorted(differ)


def deviations(runs: Sequence[StoredRun], exp: Experiment) -> list[str]:
    """Each setting of ``runs`` that differs from the registered experiment, as
    ``"train.steps = 200 (registered: 5000)"``."""
    registered = [({k: str(v) for k, v in r.labels.items()}, _flat_config(r.to_dict()))
                  for r in exp.runs(seeds=1)]
    used: dict[str, set] = {}
    allowed: dict[str, set] = {}
    for run in runs:
        peers = [flat for lab, flat in registered
                 if all(run.labels.get(a, v) == v for a, v in lab.items())] or \
            [flat for _, flat in registered]
        for key, value in _flat_config(run.config).items():
            options = {_text(p.get(key)) for p in peers}
            if _text(value) not in options:
                used.setdefault(key, set()).add(_text(value))
                allowed.setdefault(key, set()).update(options)
    return [f"{k} = {', '.join(sorted(used[k], key=natural_key))} (registered: "
            f"{', '.join(sorted(allowed[k], key=natural_key))})" for k in sorted(used)]


def _flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a stored config, flattened: what tells runs with the same labels apart.

    The config is read as the run config it was stored from and written back as its identity
    (what run ids hash), so a field added after the run was stored, which the stored config
    lacks, counts as holding its default, as it does in run ids. A config this version cannot
    read is compared as stored."""
    try:
        run_class = ConstructionRun if "construction" in config else RunConfig
        config = to_json(run_class.from_dict(dict(config)), identity=True)
    except (TypeError, ValueError, KeyError):
        pass
    return {k: v for k, v in flatten(config).items()
            if k.split(".")[0] not in _NOT_CONFIG and k not in _NOT_SETTINGS}


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value

