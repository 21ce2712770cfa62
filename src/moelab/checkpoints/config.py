"""``config.json``: how to rebuild a checkpoint's model and what its weights file must hold.

The JSON form (format version 1)::

    {
      "format": "moelab-checkpoint",
      "format_version": 1,
      "moelab_version": "0.1.0",
      "model": {"class": "MoELayer",
                "arguments": {"d_in": 3, "d_out": 2, "config": {"num_experts": 4, ...}}},
      "weights": {"bytes": 2372, "sha256": "<64 hex digits of model.safetensors>",
                  "tensors": {"router.scorer.weight": {"dtype": "float32", "shape": [4, 3]}, ...}},
      "metadata": {... the caller's JSON ...}
    }

``arguments`` are the model's constructor keyword arguments (:class:`~moelab.layers.MoEConfig` as a
dict of its fields; a :class:`~moelab.layers.DeepMoE` has ``widths``, ``config`` (one dict, or one
per layer), ``residual`` and ``moe_every``; a :class:`~moelab.layers.DenseMLP` has ``d_in``,
``d_out``, ``hidden``, ``depth``, ``activation``, ``bias`` and ``check_finite``). Parsing checks every
key and type; anything unexpected is a :class:`CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moelab.layers import DeepMoE, DenseMLP, MoEConfig, MoELayer

FORMAT = "moelab-checkpoint"
FORMAT_VERSION = 1

#: The model classes a checkpoint can rebuild, by the name stored in ``config.json``.
MODEL_CLASSES: dict[str, type[nn.Module]] = {"MoELayer": MoELayer, "DeepMoE": DeepMoE, "DenseMLP": DenseMLP}

# Constructor arguments of each class and their JSON-level types (all are required in the file).
_ARGUMENTS: dict[str, dict[str, Any]] = {
    "MoELayer": {"d_in": int, "d_out": int, "config": MoEConfig},
    "DeepMoE": {"widths": list[int], "config": MoEConfig | list[MoEConfig], "residual": bool,
                "moe_every": int},
    "DenseMLP": {"d_in": int, "d_out": int, "hidden": int, "depth": int, "activation": str,
                 "bias": bool, "check_finite": bool},
}

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

    ``arguments`` are the keyword arguments of ``MODEL_CLASSES[model_class]`` (MoEConfigs as
    :class:`MoEConfig` objects), so :meth:`build` gives a freshly initialised model of the saved
    shape; ``tensors`` lists every tensor of ``model.safetensors`` in the model's state-dict order.
    """

    model_class: str
    arguments: dict[str, Any]
    tensors: dict[str, TensorSpec]
    weights_sha256: str
    weights_bytes: int
    moelab_version: str
    format_version: int = FORMAT_VERSION
    metadata: dict[str, Any] = field(default_factory=dict)

    def build(self, *, device: torch.device | str | None = None) -> nn.Module:
        """A new model built from :attr:`arguments` (``device="meta"`` allocates nothing)."""
        cls = MODEL_CLASSES[self.model_class]
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return cls(**self.arguments)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``config.json``."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "moelab_version": self.moelab_version,
            "model": {"class": self.model_class, "arguments": _to_json(self.arguments)},
            "weights": {
                "bytes": self.weights_bytes,
                "sha256": self.weights_sha256,
                "tensors": {name: {"dtype": dtype_name(spec.dtype), "shape": list(spec.shape)}
                            for name, spec in self.tensors.items()},
            },
            "metadata": self.metadata,
        }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- describing a model ---------------------------------------------------------------------------

def describe(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(class name, constructor keyword arguments) that rebuild ``model``'s architecture.

    A subclass is described as its moelab base class: an expert-parallel layer (an ``MoELayer``
    holding a slice of the experts) is saved as the single-process ``MoELayer`` it shards.
    """
    if isinstance(model, MoELayer):
        return "MoELayer", {"d_in": model.d_in, "d_out": model.d_out, "config": model.config}
    if isinstance(model, DeepMoE):
        configs = _deep_configs(model)
        single = all(c == configs[0] for c in configs)
        return "DeepMoE", {"widths": list(model.widths), "config": configs[0] if single else configs,
                           "residual": bool(model.residual), "moe_every": model.moe_every}
    if isinstance(model, DenseMLP):
        return "DenseMLP", {"d_in": model.d_in, "d_out": model.d_out, "hidden": model.hidden,
                            "depth": model.depth, "activation": model.activation,
                            "bias": model.linears[0].bias is not None,
                            "check_finite": bool(model.check_finite)}
    raise TypeError(f"model must be one of {sorted(MODEL_CLASSES)} (or a subclass), "
                    f"got {type(model).__name__}")


def _deep_configs(model: DeepMoE) -> list[MoEConfig]:
    """One MoEConfig per layer. A dense layer keeps only its shape, so its config is the first MoE
    layer's with that shape (any config with the same shape rebuilds the same layer)."""
    moe = [layer.config for layer in model.layers if isinstance(layer, MoELayer)]
    base = moe[0] if moe else MoEConfig()
    configs = []
    for layer in model.layers:
        if isinstance(layer, MoELayer):
            configs.append(layer.config)
        else:
            configs.append(base.replace(expert_hidden=layer.hidden, expert_depth=layer.depth,
                                        activation=layer.activation,
                                        expert_bias=layer.linears[0].bias is not None))
    configs[0] = configs[0].replace(check_finite=bool(model.check_finite))  # DeepMoE reads layer 0's
    return configs


def _to_json(value: Any) -> Any:
    if isinstance(value, MoEConfig):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def arguments_json(arguments: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments in their JSON form (for comparing two descriptions)."""
    return _to_json(arguments)


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
    _exact_keys(data, {"format", "format_version", "moelab_version", "model", "weights", "metadata"},
                "", fail)
    model, weights = data["model"], data["weights"]
    _exact_keys(model, {"class", "arguments"}, "model", fail)
    _exact_keys(weights, {"bytes", "sha256", "tensors"}, "weights", fail)
    if not isinstance(data["moelab_version"], str):
        fail(f"moelab_version must be a string, got {data['moelab_version']!r}")
    if not isinstance(data["metadata"], dict):
        fail(f"metadata must be a JSON object, got {data['metadata']!r}")

    name = model["class"]
    if name not in MODEL_CLASSES:
        fail(f"unknown model class {name!r}; this moelab rebuilds {sorted(MODEL_CLASSES)}")
    _exact_keys(model["arguments"], set(_ARGUMENTS[name]), "model.arguments", fail)
    arguments = {key: _from_json(value, _ARGUMENTS[name][key], f"model.arguments.{key}", fail)
                 for key, value in model["arguments"].items()}

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
                            metadata=data["metadata"])


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


def _from_json(value: Any, hint: Any, key: str, fail) -> Any:
    """``value`` converted to ``hint`` (int, float, bool, str, None, list[...], MoEConfig or a union
    of these), or a CheckpointError naming ``key``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if _json_kind_matches(value, option):
                return _from_json(value, option, key, fail)
        fail(f"{key} must be {_describe(hint)}, got {value!r}")
    if hint is MoEConfig:
        if not isinstance(value, dict):
            fail(f"{key} must be a JSON object of MoEConfig fields, got {value!r}")
        hints = typing.get_type_hints(MoEConfig)
        known = {f.name for f in dataclasses.fields(MoEConfig)}
        unknown = sorted(set(value) - known)
        if unknown:
            fail(f"unknown MoEConfig field(s) {unknown} in {key}")
        # Fields missing from the file (added to MoEConfig after it was written) take their defaults.
        kwargs = {k: _from_json(v, hints[k], f"{key}.{k}", fail) for k, v in value.items()}
        try:
            return MoEConfig(**kwargs)
        except (TypeError, ValueError) as exc:
            fail(f"{key} is not a valid MoEConfig: {exc}")
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            fail(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_from_json(v, item, f"{key}[{i}]", fail) for i, v in enumerate(value)]
    if not _json_kind_matches(value, hint):
        fail(f"{key} must be {_describe(hint)}, got {value!r}")
    return float(value) if hint is float else value


def _json_kind_matches(value: Any, hint: Any) -> bool:
    if hint is MoEConfig:
        return isinstance(value, dict)
    if typing.get_origin(hint) is list:
        return isinstance(value, list)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is int:
        return isinstance(value, int)
    if hint is float:
        return isinstance(value, (int, float))
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"unsupported argument type {hint}")  # a bug in _ARGUMENTS, not in the file


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return {MoEConfig: "a MoEConfig object", int: "an int", float: "a number", bool: "a boolean",
            str: "a string"}.get(hint, str(hint))
