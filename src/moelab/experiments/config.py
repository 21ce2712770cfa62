"""Run configurations: what to learn (task), with what (model), how (training), which seed.

A training run is fully described by a :class:`RunConfig`, a hand-built construction by a
:class:`ConstructionRun`; the JSON form is stored with the results, and the hash of what
determines the result is the run's identity (re-running skips runs already stored): task and
model fields their kind does not read (:data:`TASK_FIELDS`, :data:`MODEL_FIELDS`) are left out.
``--set key=value`` overrides reach any field by its dotted path (``train.steps=100``,
``model.moe.experts.hidden=32``, ``task.D=64``), checked against the dataclass fields and converted
to the field's type; unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, is_dataclass
from typing import Any

from moelab._validation import one_of, positive_int
from moelab.layers.moe import MoEConfig
from moelab.tasks.real_data import DATASETS
from moelab.training.loop import TrainConfig
from moelab.typed_json import build as _build
from moelab.typed_json import field_types, to_json

TASK_KINDS = ("manifold", "piecewise", "real")
MODEL_KINDS = ("moe", "dense")
INITS = ("default", "data")

#: The TaskSpec fields each task kind reads; only these (and ``kind``) enter the run id.
TASK_FIELDS = {
    "manifold": ("manifold", "D", "d", "n_charts", "embedding", "target", "smoothness", "noise",
                 "task_seed"),
    "piecewise": ("E", "L", "output", "noise"),
    "real": ("dataset", "D", "embedding", "split_seed", "task_seed"),
}
#: The ModelSpec fields each model kind reads; only these (and ``kind``) enter the run id.
MODEL_FIELDS = {
    "moe": ("layers", "width", "moe", "residual", "moe_every", "init"),
    "dense": ("dense_hidden", "dense_depth", "init"),
}


class _KindSpec:
    """A flat spec whose ``kind`` selects the fields that matter: the subclass's ``_FIELDS[kind]``
    (a plain class attribute, not a field)."""

    def used_fields(self) -> tuple[str, ...]:
        """``kind`` and the fields this spec's kind reads."""
        return ("kind", *self._FIELDS[self.kind])  # type: ignore[attr-defined]

    def identity(self) -> dict[str, Any]:
        """The used fields as a JSON-ready dict: what the run id hashes. Fields the kind ignores
        are left out, so changing them does not make a new run."""
        data = to_json(self, identity=True)
        return {name: data[name] for name in self.used_fields() if name in data}


@dataclass(frozen=True, kw_only=True)
class TaskSpec(_KindSpec):
    """The task. ``kind="manifold"``: :func:`moelab.tasks.make_manifold_task` fields (``manifold``,
    ``D``, ``d``, ``n_charts``, ``embedding``, ``target``, ``smoothness``, ``noise``).
    ``kind="piecewise"``: Eq. (4) on [0, E]^L (``E``, ``L``, ``output``, ``noise``).
    ``kind="real"``: :func:`moelab.tasks.build_real_data_task` (``dataset``, ``D`` at least its
    native width, ``embedding``, ``split_seed`` for the fixed train/test split). ``task_seed``
    seeds a manifold or real-data task's own randomness (random isometry, ridge targets),
    separately from the run's seed. :data:`TASK_FIELDS` lists what each kind reads; the others do
    not change the run."""

    _FIELDS = TASK_FIELDS

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
    dataset: str = "digits"
    split_seed: int = 0
    task_seed: int = 0

    def __post_init__(self) -> None:
        one_of("task.kind", self.kind, TASK_KINDS)
        one_of("task.dataset", self.dataset, DATASETS)
        positive_int("task.D", self.D)
        positive_int("task.E", self.E)
        positive_int("task.L", self.L)


@dataclass(frozen=True, kw_only=True)
class ModelSpec(_KindSpec):
    """The model. ``kind="moe"``: ``layers`` MoE layers (a :class:`~moelab.layers.DeepMoE`, plain
    composition unless ``residual``), inner width ``width`` (None: the input width), each layer
    configured by ``moe``. ``kind="dense"``: a :class:`~moelab.layers.DenseMLP` of ``dense_depth``
    affine maps and hidden width ``dense_hidden``. ``init="data"`` applies
    :func:`moelab.training.init.data_init` (Voronoi routers, experts with kinks on their data)
    before training; ``"default"`` keeps PyTorch's initialisation. :data:`MODEL_FIELDS` lists what
    each kind reads. Hand-built constructions are not models to train: see
    :class:`ConstructionRun`."""

    _FIELDS = MODEL_FIELDS

    kind: str = "moe"
    layers: int = 1
    width: int | None = None
    moe: MoEConfig = field(default_factory=MoEConfig)
    residual: bool = False
    moe_every: int = 1
    dense_hidden: int = 40
    dense_depth: int = 2
    init: str = "default"

    def __post_init__(self) -> None:
        one_of("model.kind", self.kind, MODEL_KINDS)
        one_of("model.init", self.init, INITS)
        positive_int("model.layers", self.layers)
        if self.width is not None:
            positive_int("model.width", self.width)
        positive_int("model.dense_hidden", self.dense_hidden)
        positive_int("model.dense_depth", self.dense_depth)


class _Run:
    """What every run config shares: a JSON form, a run id hashed from what determines the result
    (labels excluded), and a checked inverse of :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def identity(self) -> dict[str, Any]:
        """Everything that determines the run's result: what :meth:`run_id` hashes."""
        data = to_json(self, identity=True)
        data.pop("labels")
        return data

    def run_id(self) -> str:
        """A stable hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Rebuild a run config from :meth:`to_dict` output, checking every key."""
        return _build(cls, data, "")


@dataclass(frozen=True, kw_only=True)
class RunConfig(_Run):
    """One training run. ``labels`` name the run's place in its experiment's grid (e.g.
    {"D": "16", "recipe": "paper"}); they are descriptive and not part of the run's identity, nor
    are task and model fields their kind does not read."""

    experiment: str
    task: TaskSpec = field(default_factory=TaskSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        data = super().identity()
        data["task"] = self.task.identity()
        data["model"] = self.model.identity()
        return data


@dataclass(frozen=True, kw_only=True)
class ConstructionSpec:
    """A theorem's hand-built network, ``moelab.constructions.CONSTRUCTIONS[name]``, called with
    expert width ``m`` (None: the construction's own default), the keyword arguments ``args`` and
    the run's seed."""

    name: str = "thm5.3"
    m: int | None = None
    args: dict[str, int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.m is not None:
            positive_int("construction.m", self.m)
        if "m" in self.args or "seed" in self.args:
            raise ValueError(f"construction.args must not hold 'm' or 'seed', got {self.args}; "
                             "set construction.m and the run's seed instead")


@dataclass(frozen=True, kw_only=True)
class ConstructionRun(_Run):
    """One construction built and measured as built: no training, no task or model spec (the
    construction builds both). Its own execution path is
    :func:`moelab.experiments.execute.execute`'s construction branch."""

    experiment: str
    construction: ConstructionSpec = field(default_factory=ConstructionSpec)
    seed: int = 0
    labels: dict[str, str] = field(default_factory=dict)


#: Any run an experiment can hold.
AnyRun = RunConfig | ConstructionRun


# -- dotted-path overrides ---------------------------------------------------------------------------

def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def parse_value(text: str) -> Any:
    """The value of a ``key=value`` override: JSON if it parses (numbers, true/false, null,
    quoted strings, objects), else the raw string. ``none``/``None`` also mean None. NaN and
    infinities (``nan``, ``inf``, ``1e999``) are refused with a ValueError saying why."""
    if text in ("none", "None"):
        return None
    if text.strip().lstrip("+-").lower() in _NON_FINITE:
        raise ValueError(f"{text!r} is not a finite number: {_WHY_FINITE}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number: {_WHY_FINITE}")
    return value


_NON_FINITE = ("nan", "inf", "infinity")
_WHY_FINITE = ("settings must be finite numbers (a NaN or infinite setting trains nothing "
               "meaningful, and the run's JSON record cannot hold it)")


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"key=value"``; a missing ``=`` or an empty key is a ValueError."""
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"override {item!r} must have the form key=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ValueError(f"override {item!r} has an invalid key {key!r}")
    try:
        return key, parse_value(text.strip())
    except ValueError as exc:
        raise ValueError(f"{key}={text.strip()} is refused: {exc}") from None


def apply_overrides(run: AnyRun, overrides: dict[str, Any]) -> AnyRun:
    """A copy of ``run`` with each dotted key set to its value, type-checked; unknown keys raise."""
    data = run.to_dict()
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        cls: Any = type(run)
        for depth, part in enumerate(parts):
            hints = field_types(cls)
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
                if typing.get_origin(cls) is dict and depth == len(parts) - 2:
                    node[part][parts[-1]] = value  # one key of a mapping field
                    break
                if not is_dataclass(cls):
                    raise ValueError(f"unknown config key {key!r}: {'.'.join(parts[:depth + 1])} "
                                     "has no sub-fields")
                node = node[part]
    try:
        return type(run).from_dict(data)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"bad override: {exc}") from None


def unused_keys(run: AnyRun, keys: Sequence[str]) -> list[str]:
    """The dotted ``keys`` that ``run`` does not read: task or model fields its kind ignores."""
    unused = []
    for key in keys:
        section, _, rest = key.partition(".")
        spec = getattr(run, section, None) if section in ("task", "model") else None
        if isinstance(spec, _KindSpec) and rest.split(".")[0] not in spec.used_fields():
            unused.append(key)
    return unused
