"""Named constructions for the command line: ``moelab construct NAME --set k=v``.

Each entry takes simple keyword arguments (ints and strings), builds its task and its model, and
returns ``(model, summary)``; the defaults run in a few seconds on a CPU.

=================== ================================================================================
name                keyword arguments (defaults)
=================== ================================================================================
``thm5.3``          E=3, L=2, m=16, seed=0: Eq. (4) with the paper's subfunctions, depth 2L
``cor4.9``          manifold="circle", D=16, E=None (the manifold's default: circle 4, sphere 6,
                    spiral 10), m=None (16 for d = 1, 64 for d = 2), embedding="pad", seed=0: depth 2,
                    two-layer experts; also reports a linear router's misroute fraction
``thm4.8``          as ``cor4.9``, with three-layer experts (a chart layer first)
``thm5.2``          manifold="circle", L=2, E=4, D=2, m=None, embedding="pad", seed=0: Eq. (5) on a
                    product of L copies of the manifold, sinusoid subfunctions, depth 2L
``nonlinear-router`` target="manifold" (or "piecewise"), manifold="circle", D=16, E=None, L=2,
                    m=None, embedding="pad", seed=0: MLP routers, depth 1 (manifold) or L (piecewise)
=================== ================================================================================
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
from torch import nn

from moelab._validation import one_of
from moelab.analysis import count_pieces
from moelab.constructions.baseline import MISROUTE_ENTRY, linear_router_misroute
from moelab.constructions.manifold import build_manifold_moe
from moelab.constructions.nonlinear import build_nonlinear_manifold_moe, build_nonlinear_piecewise_moe
from moelab.constructions.piecewise import build_piecewise_moe
from moelab.constructions.product import build_product_moe
from moelab.constructions.summary import ConstructionSummary
from moelab.tasks import build_manifold_task, build_product_task, make_manifold

Built = tuple[nn.Module, ConstructionSummary]


def _width(m: int | None, manifold: str) -> int:
    return m if m is not None else (16 if make_manifold(manifold).d == 1 else 64)


def _with_diagonal_pieces(built: Built, E: int, L: int) -> Built:
    """Add the exact count of linear pieces and expert paths along the diagonal 0 -> (E, ..., E)."""
    model, summary = built
    dtype = next(model.parameters()).dtype
    pieces = count_pieces(model, torch.zeros(L, dtype=dtype), torch.full((L,), float(E), dtype=dtype))
    extra = {**summary.extra, "linear pieces on the diagonal": pieces.num_pieces,
             "expert paths on the diagonal": pieces.num_paths}
    return model, dataclasses.replace(summary, extra=extra)


def thm53(*, E: int = 3, L: int = 2, m: int = 16, seed: int = 0) -> Built:
    """Thm 5.3 on the paper's Eq. (4) target (Experiment II's for E=3, L=2)."""
    return _with_diagonal_pieces(build_piecewise_moe(E, L, m=m, seed=seed), E, L)


def _manifold_task(manifold: str, D: int, E: int | None, embedding: str, seed: int):
    return build_manifold_task(manifold, D=D, n_charts=E, embedding=embedding, seed=seed,
                               dtype=torch.float64)


@functools.lru_cache(maxsize=32)
def _linear_misroute(manifold: str, D: int, E: int | None, embedding: str, seed: int) -> float:
    """The linear routers' misroute fraction on the task of these arguments: it does not depend on
    the width m, so a sweep over m fits the routers once per task (per process)."""
    task = _manifold_task(manifold, D, E, embedding, seed)
    return linear_router_misroute(task, seed=seed).best


def cor49(*, manifold: str = "circle", D: int = 16, E: int | None = None, m: int | None = None,
          embedding: str = "pad", seed: int = 0) -> Built:
    """Cor 4.9 on Experiment I's target sin(5 x_1) + cos(3 x_2) on ``manifold`` in R^D, with the
    misroute fraction of linear routers on raw x (``build_manifold_moe``'s ``linear_baseline``)."""
    task = _manifold_task(manifold, D, E, embedding, seed)
    model, summary = build_manifold_moe(task, _width(m, manifold), seed=seed)
    misrouted = _linear_misroute(manifold, D, E, embedding, seed)
    extra = {**summary.extra, MISROUTE_ENTRY: misrouted}
    return model, dataclasses.replace(summary, extra=extra)


def thm48(*, manifold: str = "circle", D: int = 16, E: int | None = None, m: int | None = None,
          embedding: str = "pad", seed: int = 0) -> Built:
    """Thm 4.8's shape (three-layer experts) on the same target as :func:`cor49`."""
    task = _manifold_task(manifold, D, E, embedding, seed)
    return build_manifold_moe(task, _width(m, manifold), expert_depth=3, seed=seed)


def thm52(*, manifold: str = "circle", L: int = 2, E: int = 4, D: int = 2, m: int | None = None,
          embedding: str = "pad", seed: int = 0) -> Built:
    """Thm 5.2 on an Eq. (5) target over L copies of ``manifold``."""
    task = build_product_task(E=E, D=D, manifolds=manifold, L=L, embedding=embedding, seed=seed,
                              dtype=torch.float64)
    return build_product_moe(task, _width(m, manifold), seed=seed)


def nonlinear_router(*, target: str = "manifold", manifold: str = "circle", D: int = 16,
                     E: int | None = None, L: int = 2, m: int | None = None, embedding: str = "pad",
                     seed: int = 0) -> Built:
    """MLP routers: depth 1 for a manifold target, depth L for Eq. (4)."""
    one_of("target", target, ("manifold", "piecewise"))
    if target == "piecewise":
        E = 3 if E is None else E
        built = build_nonlinear_piecewise_moe(E, L, m=16 if m is None else m, seed=seed)
        return _with_diagonal_pieces(built, E, L)
    task = _manifold_task(manifold, D, E, embedding, seed)
    return build_nonlinear_manifold_moe(task, _width(m, manifold), seed=seed)


#: name -> function of keyword arguments returning (model, summary); see the module docstring.
CONSTRUCTIONS: dict[str, Callable[..., Built]] = {
    "thm5.3": thm53,
    "cor4.9": cor49,
    "thm4.8": thm48,
    "thm5.2": thm52,
    "nonlinear-router": nonlinear_router,
}
