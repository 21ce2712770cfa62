"""Run configurations: what to learn (task), with what (model), how (training), which seed.

A run is fully described by a :class:`RunConfig`; its JSON form is stored with its results and its
hash is the run's identity (re-running skips runs already stored). ``--set key=value`` overrides
reach any field by its dotted path (``train.steps=100``, ``model.moe.expert_hidden=32``,
``task.D=64``), checked against the dataclass fields and converted to the field's type; unknown keys
and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field, is_dataclass
from typing import Any

from moelab._validation import one_of, positive_int
from moelab.layers.moe import MoEConfig
from moelab.training.loop import TrainConfig
from moelab.typed_json import build as _build

TASK_KINDS = ("manifold", "piecewise")
MODEL_KINDS = ("moe", "dense", "construction")
INITS = ("default", "data")


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """The task. ``kind="manifold"``: :func:`moelab.tasks.make_manifold_task` fields (``manifold``,
    ``D``, ``d``, ``n_charts``, ``embedding``, ``target``, ``smoothness``, ``noise``).
    ``kind="piecewise"``: Eq. (4) on [0, E]^L (``E``, ``L``, ``output``). ``task_seed`` seeds the
    task's own randomness (random isometry, ridge targets), separately from the run's seed."""

    kind: str = "manifold"
    manifold: str = "circle"
    D: int = 16
    d: int | None = None
    n_charts: int | None = None
    embedding: str = "pad"
    target: str = "paper"
    smoothness: int | None = None
    noise: float = 0.0
    E: int = 3
    L: int = 2
    output: str = "vector"
    task_seed: int = 0

    def __post_init__(self) -> None:
        one_of("task.kind", self.kind, TASK_KINDS)
        positive_int("task.D", self.D)
        positive_int("task.E", self.E)
        positive_int("task.L", self.L)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The model. ``kind="moe"``: ``layers`` MoE layers (a :class:`~moelab.layers.DeepMoE`, plain
    composition unless ``residual``), inner width ``width`` (None: the input width), each layer
    configured by ``moe``. ``kind="dense"``: a :class:`~moelab.layers.DenseMLP` of ``dense_depth``
    affine maps and hidden width ``dense_hidden``. ``init="data"`` applies
    :func:`moelab.training.init.data_init` (Voronoi routers, experts with kinks on their data)
    before training; ``"default"`` keeps PyTorch's initialisation. ``kind="construction"``: no
    training; the hand-built network ``moelab.constructions.CONSTRUCTIONS[construction]`` called
    with ``construction_args`` (and the run's seed), measured as built."""

    kind: str = "moe"
    layers: int = 1
    width: int | None = None
    moe: MoEConfig = field(default_factory=MoEConfig)
    residual: bool = False
    moe_every: int = 1
    dense_hidden: int = 40
    dense_depth: int = 2
    init: str = "default"
    construction: str = "thm5.3"
    construction_args: dict[str, int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        one_of("model.kind", self.kind, MODEL_KINDS)
        one_of("model.init", self.init, INITS)
        positive_int("model.layers", self.layers)
        if self.width is not None:
            positive_int("model.width", self.width)
        positive_int("model.dense_hidden", self.dense_hidden)
        positive_int("model.dense_depth", self.dense_depth)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run. ``labels`` name the run's place in its experiment's grid (e.g.
    {"D": "16", "recipe": "paper"}); they are descriptive and not part of the run's identity."""

    experiment: str
    task: TaskSpec = field(default_factory=TaskSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """A stable hash of everything that determines the run's result (labels excluded)."""
        d = self.to_dict()
        d.pop("labels")
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild a run config from :meth:`to_dict` output, checking every key."""
        return _build(cls, data, "")


# -- dotted-path overrides ---------------------------------------------------------------------------

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def parse_value(text: str) -> Any:
    """The value of a ``key=value`` override: JSON if it parses (numbers, true/false, null,
    quoted strings, objects), else the raw string. ``none``/``None`` also mean None."""
    if text in ("none", "None"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"key=value"``; a missing ``=`` or an empty key is a ValueError."""
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"override {item!r} must have the form key=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ValueError(f"override {item!r} has an invalid key {key!r}")
    return key, parse_value(text.strip())


def apply_overrides(run: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy of ``run`` with each dotted key set to its value, type-checked; unknown keys raise."""
    data = run.to_dict()
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        cls: Any = RunConfig
        for depth, part in enumerate(parts):
            hints = _hints(cls)
            if part not in hints:
                prefix = ".".join(parts[:depth])
                raise ValueError(
                    f"unknown config key {key!r}: {part!r} is not a field of "
                    f"{prefix or 'the run config'}; known: {sorted(hints)}"
                )
            if depth == len(parts) - 1:
                node[part] = value
            else:
                cls = hints[part]
                if not is_dataclass(cls):
                    raise ValueError(f"unknown config key {key!r}: {'.'.join(parts[:depth + 1])} "
                                     "has no sub-fields")
                node = node[part]
    try:
        return RunConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"bad override: {exc}") from None
