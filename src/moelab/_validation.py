"""Argument checks shared by the public constructors; each error names the argument and value."""

from __future__ import annotations

import math
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


def check_features(x: object, width: int, *, name: str = "x", finite: bool = True,
                   like: Tensor | None = None, owner: str = "the layer") -> Tensor:
    """Check that ``x`` is a floating tensor of shape (..., width), of the dtype and device of
    ``like`` (a parameter of ``owner``) if given, and finite if asked.

    The finite check reads one flag on the host (a device sync, once per call); under
    ``torch.compile`` it runs on the device instead (``torch._assert_async``: no sync, no graph
    break; a failure surfaces as a device-side assertion at the next sync)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != width:
        raise ValueError(
            f"{name} must have shape (..., {width}), got {tuple(x.shape)} "
            f"(trailing dimension {x.shape[-1] if x.dim() else 'missing'})"
        )
    if like is not None:
        check_like(x, like, name=name, owner=owner)
    if finite:
        check_finite_values(x, name=name)
    return x


def check_finite_values(x: Tensor, y: Tensor | None = None, *, name: str = "x",
                        owner: str = "the layer") -> None:
    """NaN/Inf in ``x`` is a ValueError; with ``y`` (the output computed from ``x``), a non-finite
    output of a finite input is a FloatingPointError (the arithmetic overflowed the dtype, e.g.
    |x| ~ 3e38 in float32). One host sync reads the sum of both (finite sum: all finite); under
    ``torch.compile`` the checks run on the device instead (``torch._assert_async``: no sync,
    no graph break)."""
    checked = [t for t in (x, y) if t is not None and t.numel()]
    if not checked:
        return
    if torch.compiler.is_compiling():
        for t in checked:
            torch._assert_async(torch.isfinite(t).all(),
                                f"{name} or {owner}'s output contains non-finite values")
        return
    # One reduction and one read in the common case: NaN and Inf survive every addition, so a
    # finite sum proves every element finite. A non-finite sum (a non-finite element, or finite
    # values whose sum overflows) falls through to the exact check per tensor.
    total = checked[0].detach().sum()
    if len(checked) > 1:
        total = total + checked[1].detach().sum()
    if math.isfinite(total.item()):
        return
    ok = [bool(torch.isfinite(x).all()) if x.numel() else True]
    if y is not None:
        ok.append(bool(torch.isfinite(y).all()) if y.numel() else True)
    if not ok[0]:
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or Inf); "
            "pass check_finite=False to skip this check"
        )
    if len(ok) > 1 and not ok[1]:
        raise FloatingPointError(
            f"{owner}'s output is not finite although the input is: the arithmetic overflowed "
            f"{str(x.dtype).removeprefix('torch.')} (largest |{name}| = "
            f"{float(x.abs().max()):.3g}, the dtype's largest value "
            f"{torch.finfo(x.dtype).max:.3g}); rescale the input, or pass check_finite=False "
            "to skip this check"
        )


def check_like(x: Tensor, reference: Tensor, *, name: str = "x", owner: str = "the layer") -> Tensor:
    """Check that ``x`` has the dtype and device of ``reference`` (a parameter of ``owner``)."""
    if x.dtype != reference.dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but {owner}'s parameters are {reference.dtype}; convert "
            f"the input (x.to({reference.dtype})) or the model (model.to({x.dtype}))"
        )
    if x.device != reference.device:
        raise ValueError(
            f"{name} is on device {x.device} but {owner}'s parameters are on {reference.device}; "
            f"move one of them (x.to({str(reference.device)!r}) or model.to({str(x.device)!r}))"
        )
    return x


def integer(name: str, value: object) -> int:
    """``value`` as an int (bools refused: True as a count is almost always a bug)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return value


def floating_tensor(name: str, x: object) -> Tensor:
    """``x`` if it is a tensor of a floating dtype, else a TypeError naming ``name``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


def token_matrix(name: str, x: object) -> Tensor:
    """``x`` if it is a floating [T, E] matrix with at least one token and one expert."""
    floating_tensor(name, x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [T, E], got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least one token and one expert, got shape "
                         f"{tuple(x.shape)}")
    return x
