"""Argument handling shared by the task generators: random state, dtypes, manifold names."""

from __future__ import annotations

import torch


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
