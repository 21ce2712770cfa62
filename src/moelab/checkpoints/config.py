"""``config.json``: how to rebuild a checkpoint's model and what its weights file must hold.

The JSON form (format version 3)::

    {
      "format": "moelab-checkpoint",
      "format_version": 3,
      "moelab_version": "0.1.0",
      "model": {"class": "DeepMoE",
                "config": {"widths": [3, 4, 2],
                           "moe": {"num_experts": 4, "router": {"top_k": 2, ...},
                                   "experts": {"hidden": 8, ...}, ...},
                           "residual": false, "moe_every": 1}},
      "weights": {"bytes": 2372, "sha256": "<64 hex digits of model.safetensors>",
                  "tensors": {"layers.0.router.scorer.weight": {"dtype": "float32",
                                                                "shape": [4, 3]}, ...}},
      "metadata": {... the caller's JSON ...},
      "source": {... where the model came from (optional) ...}
    }

A model class with a ``from_config`` classmethod (:class:`~moelab.layers.DeepMoE`,
:class:`~moelab.layers.DenseMLP`) is stored by its whole-model config (``model.config``, the type
that ``from_config`` takes) and rebuilt from it alone. :class:`~moelab.layers.MoELayer`, whose
config does not hold its widths, is stored by its constructor ``arguments``
(``{"d_in": 3, "d_out": 2, "config": {...}}``), read from the model by the names of its
constructor's parameters. Both are parsed back by their annotated types with
:mod:`moelab.typed_json`; anything unexpected is a :class:`CheckpointError` naming the file and the
dotted key.

``source`` is present only for a model that carries a provenance record in ``model.source`` (a
JSON object, e.g. a layer converted from a Hugging Face block by :mod:`moelab.interop.hf`: its
family, block class and HF config); loading puts it back on the model. Files without it are
unchanged.

Older files still load. Version 2 stored every class by its constructor arguments; for a class
now stored by its config, those are turned into the config by the class's own constructor (on the
meta device, allocating nothing). Version 1 (moelab 0.1) stored each
:class:`~moelab.layers.MoEConfig` with flat field names (``expert_hidden``, ``top_k``, ...) and the
expert tensors as ``experts.weights.k`` / ``experts.biases.k``; the names are mapped on reading.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moelab.layers import LEGACY_NAMES, DeepMoE, DenseMLP, MoELayer
from moelab.layers.experts import legacy_names
from moelab.typed_json import from_json, to_json

FORMAT = "moelab-checkpoint"
FORMAT_VERSION = 3

#: The model classes a checkpoint can rebuild, by the name stored in ``config.json``.
MODEL_CLASSES: dict[str, type[nn.Module]] = {"MoELayer": MoELayer, "DeepMoE": DeepMoE, "DenseMLP": DenseMLP}


def config_type(cls: type) -> type | None:
    """The whole-model config type ``cls.from_config`` takes, or None if ``cls`` has none."""
    from_config = getattr(cls, "from_config", None)
    return None if from_config is None else typing.get_type_hints(from_config)["config"]

#: Tensor dtypes a checkpoint may hold, by their name in ``config.json`` ("float32", ...).
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                 "uint8", "bool", "float8_e4m3fn", "float8_e5m2")
    if isinstance(getattr(torch, name, None), torch.dtype)
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorSpec:
    """The dtype and shape of one stored tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CheckpointConfig:
    """The parsed ``config.json`` of a checkpoint.

    ``model_config`` is the whole-model config of a class stored by its config (a
    :class:`~moelab.layers.DeepMoEConfig` or :class:`~moelab.layers.DenseMLPConfig`; ``arguments``
    is then empty); otherwise ``arguments`` are the keyword arguments of
    ``MODEL_CLASSES[model_class]`` (MoEConfigs as :class:`MoEConfig` objects) and ``model_config``
    is None. :meth:`build` gives a freshly initialised model of the saved shape; ``tensors`` lists
    every tensor of ``model.safetensors`` in the model's state-dict order.
    """

    model_class: str
    arguments: dict[str, Any]
    tensors: dict[str, TensorSpec]
    weights_sha256: str
    weights_bytes: int
    moelab_version: str
    format_version: int = FORMAT_VERSION
    metadata: dict[str, Any] = field(default_factory=dict)
    model_config: Any = None
    source: dict[str, Any] | None = None

    def build(self, *, device: torch.device | str | None = None) -> nn.Module:
        """A new model built from :attr:`model_config` or :attr:`arguments` (``device="meta"``
        allocates nothing)."""
        cls = MODEL_CLASSES[self.model_class]
        with torch.device(device) if device is not None else contextlib.nullcontext():
            if self.model_config is not None:
                return cls.from_config(self.model_config)
            return cls(**self.arguments)

    def description(self) -> dict[str, Any]:
        """The ``model`` entry of ``config.json`` but its class: ``{"config": ...}`` or
        ``{"arguments": ...}`` (Python values; :func:`to_json` gives the JSON)."""
        if self.model_config is not None:
            return {"config": self.model_config}
        return {"arguments": self.arguments}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``config.json``."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "moelab_version": self.moelab_version,
            "model": {"class": self.model_class, **to_json(self.description())},
            "weights": {
                "bytes": self.weights_bytes,
                "sha256": self.weights_sha256,
                "tensors": {name: {"dtype": dtype_name(spec.dtype), "shape": list(spec.shape)}
                            for name, spec in self.tensors.items()},
            },
            "metadata": self.metadata,
        } | ({} if self.source is None else {"source": self.source})


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- describing a model ---------------------------------------------------------------------------

def describe(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(class name, description) that rebuild ``model``'s architecture.

    The description is ``{"config": model.config}`` for a class with ``from_config``, else
    ``{"arguments": {...}}``, read from the model by the names of its class's constructor
    parameters (see :meth:`CheckpointConfig.description`). A subclass is described as its moelab
    base class: an expert-parallel layer (an ``MoELayer`` holding a slice of the experts) is saved
    as the single-process ``MoELayer`` it shards.
    """
    for name, cls in MODEL_CLASSES.items():
        if isinstance(model, cls):
            if config_type(cls) is not None:
                return name, {"config": model.config}
            return name, {"arguments": {p: getattr(model, p) for p in _parameters(cls)}}
    raise TypeError(f"model must be one of {sorted(MODEL_CLASSES)} (or a subclass), "
                    f"got {type(model).__name__}")


def _parameters(cls: type) -> dict[str, Any]:
    """The constructor parameters of ``cls`` and their annotated types."""
    hints = typing.get_type_hints(cls.__init__)
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    return {p: hints[p] for p in names}


def description_json(description: dict[str, Any]) -> dict[str, Any]:
    """A description (see :func:`describe`) in its JSON form, for comparing two of them."""
    return to_json(description)


# -- parsing config.json --------------------------------------------------------------------------

def parse_config(text: str, path: Path) -> CheckpointConfig:
    """Parse and check the text of ``config.json`` (at ``path``, named in every error)."""
    def fail(what: str) -> typing.NoReturn:
        raise CheckpointError(f"{path}: {what}")

    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (json.JSONDecodeError, ValueError) as exc:
        fail(f"not valid JSON ({exc})")
    if not isinstance(data, dict):
        fail(f"must hold a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        fail(f"not a moelab checkpoint config (format={data.get('format')!r}, expected {FORMAT!r})")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        fail(f"format_version must be an int >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        fail(f"format_version {version} is newer than this moelab reads ({FORMAT_VERSION}); "
             "upgrade moelab to load this checkpoint")
    keys = {"format", "format_version", "moelab_version", "model", "weights", "metadata"}
    _exact_keys(data, keys | ({"source"} & set(data)), "", fail)
    model, weights = data["model"], data["weights"]
    _exact_keys(weights, {"bytes", "sha256", "tensors"}, "weights", fail)
    if not isinstance(data["moelab_version"], str):
        fail(f"moelab_version must be a string, got {data['moelab_version']!r}")
    if not isinstance(data["metadata"], dict):
        fail(f"metadata must be a JSON object, got {data['metadata']!r}")
    if not isinstance(data.get("source", {}), dict):
        fail(f"source must be a JSON object, got {data['source']!r}")

    name, arguments, model_config = _parse_model(model, version, fail)

    size, digest = weights["bytes"], weights["sha256"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        fail(f"weights.bytes must be an int >= 0, got {size!r}")
    if not (isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)):
        fail(f"weights.sha256 must be 64 lowercase hex digits, got {digest!r}")
    if not isinstance(weights["tensors"], dict):
        fail(f"weights.tensors must be a JSON object, got {weights['tensors']!r}")
    tensors = {key: _tensor_spec(spec, f"weights.tensors[{key!r}]", fail)
               for key, spec in weights["tensors"].items()}
    return CheckpointConfig(model_class=name, arguments=arguments, tensors=tensors,
                            weights_sha256=digest, weights_bytes=size,
                            moelab_version=data["moelab_version"], format_version=version,
                            metadata=data["metadata"], model_config=model_config,
                            source=data.get("source"))


def _parse_model(model: Any, version: int, fail) -> tuple[str, dict[str, Any], Any]:
    """The ``model`` entry: (class name, constructor arguments, config). Classes with a config are
    stored by it from format 3 on; older files hold their constructor arguments, read into it."""
    if not isinstance(model, dict):
        fail(f"model must be a JSON object, got {model!r}")
    name = model.get("class")
    if name not in MODEL_CLASSES:
        fail(f"unknown model class {name!r}; this moelab rebuilds {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[name]
    kind = config_type(cls)
    arguments: dict[str, Any] = {}
    model_config = None
    if version >= 3 and kind is not None:
        _exact_keys(model, {"class", "config"}, "model", fail)
        model_config = _parse_value(model["config"], kind, "model.config", fail)
    else:
        _exact_keys(model, {"class", "arguments"}, "model", fail)
        hints = _parameters(cls)
        _exact_keys(model["arguments"], set(hints), "model.arguments", fail)
        for key, value in model["arguments"].items():
            if version == 1 and key == "config":
                value = _nest_v1(value)
            arguments[key] = _parse_value(value, hints[key], f"model.arguments.{key}", fail)
        if kind is not None:  # an older file of a class now stored by its config
            model_config = _config_from_arguments(cls, arguments, fail)
            arguments = {}
    return name, arguments, model_config


def _parse_value(value: Any, hint: Any, key: str, fail) -> Any:
    """``value`` parsed by its type ``hint``; a config that rejects it fails naming ``key``."""
    try:
        return from_json(value, hint, key)
    except (TypeError, ValueError) as exc:
        where = getattr(exc, "config_key", None)
        fail(f"{where} is not a valid {exc.config_class}: {exc}" if where else str(exc))


def _config_from_arguments(cls: type, arguments: dict[str, Any], fail) -> Any:
    """The config ``cls``'s constructor makes of ``arguments`` (a version-1 or 2 file); built on
    the meta device, so nothing is allocated or drawn from the random generator."""
    try:
        with torch.device("meta"):
            return cls(**arguments).config
    except (TypeError, ValueError) as exc:
        fail(f"{cls.__name__} rejects the saved arguments: {exc}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"duplicate key {dup!r}")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _exact_keys(obj: Any, expected: set[str], where: str, fail) -> None:
    label = where or "the top level"
    if not isinstance(obj, dict):
        fail(f"{label} must be a JSON object, got {obj!r}")
    unknown = sorted(set(obj) - expected)
    if unknown:
        fail(f"unknown key(s) {unknown} in {label}; expected {sorted(expected)}")
    missing = sorted(expected - set(obj))
    if missing:
        fail(f"missing key(s) {missing} in {label}")


def _tensor_spec(spec: Any, where: str, fail) -> TensorSpec:
    _exact_keys(spec, {"dtype", "shape"}, where, fail)
    dtype, shape = spec["dtype"], spec["shape"]
    if dtype not in DTYPES:
        fail(f"{where}.dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0
                                          for n in shape):
        fail(f"{where}.shape must be a list of ints >= 0, got {shape!r}")
    return TensorSpec(DTYPES[dtype], tuple(shape))


def _nest_v1(config: Any) -> Any:
    """A version-1 (flat) MoEConfig dict, or a list of them, in the nested form."""
    if isinstance(config, list):
        return [_nest_v1(c) for c in config]
    if not isinstance(config, dict):
        return config
    nested: dict[str, Any] = {}
    for key, value in config.items():
        if key in LEGACY_NAMES:
            part, field_name = LEGACY_NAMES[key]
            nested.setdefault(part, {})[field_name] = value
        else:
            nested[key] = value
    return nested


def rename_v1_tensors(config: CheckpointConfig, model: nn.Module) -> dict[str, str]:
    """{version-1 tensor name: today's name} for ``model`` (empty for newer formats)."""
    return legacy_names(model) if config.format_version == 1 else {}
