"""One parser from JSON-level values to typed Python objects: run configs and checkpoints use it.

:func:`from_json` converts a value (as ``json.loads`` gives it) to the type a hint names: nested
frozen dataclasses (built through their constructors, so they validate themselves), ``Literal``
choices, unions and ``Optional``, ``list``/``Sequence``/``tuple``, ``dict[str, ...]``, and the
scalars ``bool``, ``int``, ``float`` (ints accepted), ``str`` and ``None``. Missing dataclass fields
take their defaults. Every error names the dotted key of the bad value::

    TypeError: model.moe.router.capacity_factor must be float or None, got 'big' (str)
    ValueError: model.moe.router.weighting='softmax' is unknown; expected one of [...]

A dataclass that rejects its values in its own checks raises its own error; the dotted key and the
class are attached as ``error.config_key`` and ``error.config_class`` for callers that add context.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["ADDED_LATER", "NOT_IDENTITY", "build", "describe", "field_types", "from_json",
           "holds_default", "to_json"]


@functools.cache
def field_types(cls: type) -> Mapping[str, Any]:
    """The resolved type hints of a dataclass's fields (read-only). Resolving the string
    annotations is costly (each is compiled and evaluated), so it is done once per class."""
    return types.MappingProxyType(typing.get_type_hints(cls))


def from_json(value: Any, hint: Any, key: str = "") -> Any:
    """``value`` converted to ``hint``; a TypeError/ValueError naming ``key`` if it does not fit."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if _fits(value, option):
                return from_json(value, option, key)
        raise TypeError(f"{_label(key)} must be {describe(hint)}, got {value!r} "
                        f"({type(value).__name__})")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ValueError(f"{_label(key)}={value!r} is unknown; expected one of {list(allowed)}")
        return value
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{_label(key)} must be a list, got {value!r} ({type(value).__name__})")
        args = typing.get_args(hint)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ValueError(f"{_label(key)} must have {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(from_json(v, a, f"{key}[{i}]") for i, (v, a) in pairs)
        item = args[0] if args else Any
        items = [from_json(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{_label(key)} must be a mapping, got {value!r}")
        _, vtype = typing.get_args(hint) or (str, Any)
        return {str(k): from_json(v, vtype, f"{key}[{k!r}]") for k, v in value.items()}
    if hint is Any:
        return value
    if hint not in (bool, int, float, str, type(None)):
        raise TypeError(f"{_label(key)} has an unsupported type {hint}")
    if not _fits(value, hint):
        raise TypeError(f"{_label(key)} must be {describe(hint)}, got {value!r} "
                        f"({type(value).__name__})")
    return float(value) if hint is float else value


#: Field metadata of a field added after results were first stored under identities:
#: :func:`to_json` with ``identity=True`` leaves it out while it holds its default, so adding it
#: keeps every earlier identity (run ids of stored results).
ADDED_LATER = types.MappingProxyType({"identity": "when_set"})
#: Field metadata of a field that never changes a result (e.g. where logs are streamed): left out
#: of identities.
NOT_IDENTITY = types.MappingProxyType({"identity": "never"})


def to_json(value: Any, *, identity: bool = False) -> Any:
    """The JSON form of a (nested) dataclass value: dataclasses as dicts, tuples as lists.

    ``identity=True`` gives what determines a result: fields marked :data:`NOT_IDENTITY` are left
    out, and fields marked :data:`ADDED_LATER` while they hold their default.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name), identity=identity)
                for f in dataclasses.fields(value)
                if not (identity and _left_out(f, getattr(value, f.name)))}
    if isinstance(value, (list, tuple)):
        return [to_json(v, identity=identity) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v, identity=identity) for k, v in value.items()}
    return value


def _left_out(f: dataclasses.Field, value: Any) -> bool:
    """Whether field ``f`` holding ``value`` stays out of an identity."""
    rule = f.metadata.get("identity")
    if rule == "never":
        return True
    return rule == "when_set" and holds_default(f, value)


def holds_default(f: dataclasses.Field, value: Any) -> bool:
    """Whether ``value`` equals field ``f``'s default (False for a field without one)."""
    if f.default is not dataclasses.MISSING:
        return value == f.default
    return f.default_factory is not dataclasses.MISSING and value == f.default_factory()


def describe(hint: Any) -> str:
    """A short human name of a type hint: ``int``, ``float or None``, ``MoEConfig``, ..."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple, collections.abc.Sequence):
        return "a list"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def _label(key: str) -> str:
    return key or "value"


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the JSON kind of ``hint`` (used to pick a union's member)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) or origin is dict:
        return isinstance(value, dict)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is Any:
        return True
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
    return False


def _dataclass(cls: type, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"{key or 'config'} must be a mapping of {cls.__name__} fields, got "
                        f"{type(value).__name__}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        where = key or "the config"
        raise ValueError(f"unknown config key(s) {[_join(key, k) for k in unknown]}: unknown "
                         f"{cls.__name__} field(s) {unknown} in {where}; known: {sorted(names)}")
    kwargs = {name: from_json(v, hints[name], _join(key, name)) for name, v in value.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if not hasattr(exc, "config_key"):
            exc.config_key, exc.config_class = key, cls.__name__
        raise


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def build(cls: type, data: Any, key: str = "") -> Any:
    """The dataclass ``cls`` built from its JSON form ``data`` (see :func:`from_json`)."""
    return from_json(data, cls, key)
