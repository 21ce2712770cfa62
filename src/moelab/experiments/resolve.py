"""Resolving what a command line asks for: an experiment's runs for a seed count or an explicit
list of seeds, and every key ``--set`` accepts, with its type and value."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moelab.experiments.config import RunConfig
from moelab.experiments.spec import Experiment
from moelab.typed_json import field_types


def resolve_runs(experiment: Experiment, seeds: int | Sequence[int] | None,
                 overrides: Mapping[str, Any]) -> list[RunConfig]:
    """The experiment's runs for ``seeds``: None (its own count), a count (seeds 0 .. n - 1) or a
    sequence of distinct seeds (e.g. [5, 7, 9]); ``overrides`` applied last; each run once."""
    if seeds is None or isinstance(seeds, int):
        return experiment.runs(seeds=seeds, overrides=overrides)
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    if "seed" in overrides:
        raise ValueError("a list of seeds and an override of 'seed' both set the seed; give one")
    runs, seen = [], set()
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"each seed must be an int >= 0, got {seed!r}")
        for run in experiment.runs(seeds=1, overrides={**overrides, "seed": seed}):
            if run.run_id() not in seen:
                seen.add(run.run_id())
                runs.append(run)
    return runs


@dataclass(frozen=True)
class SettableKey:
    """One key of ``--set``: its dotted path, its type in words and its value in a config."""

    key: str
    type: str
    value: Any


def settable_keys(config: Any, prefix: str = "") -> Iterator[SettableKey]:
    """Every leaf field of the dataclass ``config`` (nested dataclasses walked), with its value in
    ``config``; read from the dataclass fields, so new fields appear without edits here."""
    hints = field_types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from settable_keys(value, f"{key}.")
        else:
            yield SettableKey(key, type_name(hints[f.name]), value)


def type_name(hint: Any) -> str:
    """A type hint in words: ``int``, ``int | None``, ``one of 'a', 'b'``, ``dict[str, float]``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(map(type_name, args))}]"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))
