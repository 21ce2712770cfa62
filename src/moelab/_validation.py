"""Argument checks shared by the public constructors; each error names the argument and value."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def positive_int(name: str, value: object) -> int:
    """``value`` as an int, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def positive_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return float(value)


def one_of(name: str, value: object, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown; expected one of {list(choices)}")
    return value  # type: ignore[return-value]


def check_features(x: object, width: int, *, name: str = "x", finite: bool = True) -> Tensor:
    """Check that ``x`` is a floating tensor of shape (..., width), finite if asked."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != width:
        raise ValueError(
            f"{name} must have shape (..., {width}), got {tuple(x.shape)} "
            f"(trailing dimension {x.shape[-1] if x.dim() else 'missing'})"
        )
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or Inf); "
            "pass check_finite=False to skip this check"
        )
    return x
