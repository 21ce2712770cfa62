"""Argument handling shared by the task generators: random state, dtypes, checked callables."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from moelab._validation import positive_int


def resolve_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The generator to draw from: ``generator`` itself, a new one seeded with ``seed``, or, when
    both are None, a new one with a nondeterministic seed. Passing both is an error."""
    if seed is not None and generator is not None:
        raise ValueError("pass at most one of seed and generator, got both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    fresh = torch.Generator()
    if seed is None:
        fresh.seed()
        return fresh
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r} ({type(seed).__name__})")
    fresh.manual_seed(seed)
    return fresh


def check_dtype(dtype: object) -> torch.dtype:
    """``dtype`` if it is a floating torch dtype, else a TypeError naming it."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def as_float64(x: torch.Tensor, width: int, name: str = "x") -> torch.Tensor:
    """``x`` (n, width) as float64, or a TypeError/ValueError naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != width:
        raise ValueError(f"{name} must have shape (n, {width}), got {tuple(x.shape)}")
    return x.to(torch.float64)


def checked_values(fn: Callable[[Tensor], Tensor], arg: Tensor, name: str) -> Tensor:
    """fn(arg) as float64 (m,), m = len(arg), or an error naming ``name``: a user's subfunction or
    target that returns another shape would otherwise be broadcast into wrong targets silently."""
    values = fn(arg)
    shown = getattr(fn, "__qualname__", None) or repr(fn)
    if not isinstance(values, Tensor):
        raise TypeError(f"{name}={shown} must return a torch.Tensor, got {type(values).__name__}")
    m = arg.shape[0]
    if values.shape != (m,):
        raise ValueError(
            f"{name}={shown} must return one value per point, shape ({m},) for {m} points, "
            f"got shape {tuple(values.shape)}"
        )
    return values.to(torch.float64)


def add_noise(y: Tensor, noise: float, rng: torch.Generator) -> Tensor:
    """y as float64 plus N(0, noise^2) noise drawn from ``rng`` in y's shape (nothing drawn at 0)."""
    y = y.to(torch.float64)
    if noise > 0:
        y = y + noise * torch.randn(y.shape, generator=rng, dtype=torch.float64)
    return y


def build_and_sample(
    build: Callable[..., Any],
    n: int,
    *args: Any,
    seed: int | None,
    generator: torch.Generator | None,
    **params: Any,
) -> Any:
    """``build(*args, generator=rng, **params).sample(n, generator=rng)`` with ``rng`` the random
    state of ``seed`` or ``generator``: the ``make_*`` of a task whose build draws at random. The
    task draws first (an isometry, a random target), then the samples continue from the same state."""
    n = positive_int("n", n)
    rng = resolve_generator(seed, generator)
    return build(*args, generator=rng, **params).sample(n, generator=rng)


def with_n(build: Callable, make: Callable) -> inspect.Signature:
    """The full signature of ``make(..., n, *, seed, generator, **params)``, which passes ``params``
    on to ``build``: ``build``'s parameters with ``n`` after the positional ones, plus ``make``'s own
    keywords. The keyword list is written once, on ``build``; this shows it on ``make`` too."""
    own = inspect.signature(make).parameters
    params = list(inspect.signature(build).parameters.values())
    lead = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    names = {p.name for p in params}
    extra = [p for p in own.values() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names]
    return inspect.signature(make).replace(parameters=[*lead, own["n"], *params[len(lead):], *extra])
