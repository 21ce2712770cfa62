"""Eq. (5) targets on a product of manifolds M_1 x ... x M_L, with ground-truth charts (Thm 5.2).

Block l is a manifold M_l embedded in R^{D_l} with an E-chart atlas (:mod:`moelab.tasks.atlas`);
x = (x_1, ..., x_L) in R^{D_1 + ... + D_L} and

    f(x) = f_out(f_{1,i_1}(x_1), ..., f_{L,i_L}(x_L)),   i_l = argmax_i rho_{l,i}(x_l),

the chart of x_l (0-based). f_out is the identity (``output="vector"``, the paper's) or the sum or
product. Where chart domains overlap the paper only asks x_l in U_{l,i_l}; moelab resolves the choice
by the partition of unity, so the target is discontinuous across chart boundaries unless the
subfunctions agree there.

Subfunctions ``subfunctions[l][i]`` map block points x_l, an (m, D_l) float64 tensor, to (m,) values.
Built-in sets, read on block l's pre-embedding coordinates p (both C^infinity / C^kappa on M_l):

* ``"sinusoid"``: f_{l,i}(p) = sin(5 p_1 + 2 pi i / E) + cos(3 p_2 + 2 pi l / L) (0-based l, i; the
  paper's Experiment I target for l = i = 0);
* ``"ridge"``: independent random :class:`~moelab.tasks.targets.RidgeTarget` of smoothness
  ``smoothness`` per (l, i).

Shape legend: n samples, L blocks, E charts per block, D_l block widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from moelab._validation import one_of, positive_float, positive_int
from moelab.tasks._common import (
    add_noise,
    as_float64,
    build_and_sample,
    check_dtype,
    resolve_generator,
    with_n,
)
from moelab.tasks.atlas import Atlas, make_atlas
from moelab.tasks.manifolds import EMBEDDINGS, Manifold, embedding_matrix, embedding_width, make_manifold
from moelab.tasks.piecewise import (
    OUTPUTS,
    PieceIds,
    PieceTask,
    check_subfunctions,
)
from moelab.tasks.targets import Target, make_ridge_target

PRODUCT_SUBFUNCTIONS = ("sinusoid", "ridge")
#: (m, D_l) float64 block points -> (m,) values
BlockFunction = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Sinusoid:
    """f(p) = sin(5 p_1 + phase_1) + cos(3 p_2 + phase_2) on pre-embedding coordinates p."""

    phase_1: float
    phase_2: float

    def __call__(self, p: Tensor) -> Tensor:
        return torch.sin(5 * p[:, 0] + self.phase_1) + torch.cos(3 * p[:, 1] + self.phase_2)


@dataclass(frozen=True, eq=False)
class OnBlock:
    """A target on pre-embedding coordinates read on embedded block points: x_l -> fn(x_l P)."""

    fn: Target
    embedding: Tensor  # P (D_l, k_l)

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x.to(torch.float64) @ self.embedding)


@dataclass(frozen=True, eq=False)
class ProductSample(PieceIds):
    """n labelled points of a :class:`ProductTask`.

    Attributes:
        x: (n, sum_l D_l) concatenated block points x_l in M_l.
        y: (n, L) for output "vector", else (n, 1); y_clean plus N(0, noise^2) noise.
        y_clean: noise-free target, same shape as y.
        latent: (n, sum_l m_l) concatenated intrinsic coordinates of the blocks.
        piece: (n, L) long, the chart i_l of each block (0-based).
        task: the task.
        piece_id: (n,) long, row-major flat id sum_l i_l E^(L - 1 - l) (a property).
    """

    x: Tensor
    y: Tensor
    y_clean: Tensor
    latent: Tensor
    piece: Tensor
    task: ProductTask


@dataclass(frozen=True, eq=False)
class ProductTask(PieceTask):
    """The Eq. (5) target on M_1 x ... x M_L, one atlas of E charts per block.
    A :class:`~moelab.tasks.base.Task`: its regions are the E^L chart combinations. Fields: the
    atlases, and :class:`~moelab.tasks.piecewise.PieceTask`'s subfunctions, output, noise and dtype
    (keyword-only)."""

    atlases: tuple[Atlas, ...]

    @property
    def L(self) -> int:
        return len(self.atlases)

    @property
    def E(self) -> int:
        return self.atlases[0].n_charts

    @property
    def block_dims(self) -> tuple[int, ...]:
        return tuple(atlas.D for atlas in self.atlases)

    @property
    def D(self) -> int:
        return sum(self.block_dims)

    d_in = D

    def split(self, x: Tensor) -> tuple[Tensor, ...]:
        """(n, D) -> the L blocks x_l (n, D_l)."""
        return tuple(as_float64(x, self.D).split(self.block_dims, dim=1))

    def pieces(self, x: Tensor) -> Tensor:
        """(n, D) -> (n, L) long, chart of each block."""
        blocks = self.split(x)
        return torch.stack([a.chart_of(b) for a, b in zip(self.atlases, blocks, strict=True)], dim=1)

    _inputs = split

    def _sample(self, n: int, rng: torch.Generator) -> ProductSample:
        """n points, each block drawn independently and uniformly on its manifold, block by block;
        then the noise."""
        latents, blocks = [], []
        for atlas in self.atlases:
            latent = atlas.manifold.sample_latent(n, rng)
            latents.append(latent)
            blocks.append(atlas.manifold.to_ambient(latent) @ atlas.embedding.T)
        x = torch.cat(blocks, dim=1).to(self.dtype)
        y_clean = self.target(x)
        return ProductSample(
            x=x,
            y=add_noise(y_clean, self.noise, rng).to(self.dtype),
            y_clean=y_clean,
            latent=torch.cat(latents, dim=1).to(self.dtype),
            piece=self.pieces(x),
            task=self,
        )


def _per_block(name: str, value: object, L: int) -> list:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != L:
            raise ValueError(f"{name} must have one entry per block (L={L}), got {len(value)}")
        return list(value)
    return [value] * L


def _block_atlases(
    manifolds: list, dims: list, ds: list, E: int, embedding: str, chart_overlap: float,
    rng: torch.Generator, dtype: torch.dtype,
) -> tuple[Atlas, ...]:
    """One E-chart atlas per block, drawing each block's isometry from ``rng`` in turn."""
    atlases = []
    for l, (name, D_l, d_l) in enumerate(zip(manifolds, dims, ds, strict=True)):
        M = make_manifold(name, d_l)
        D_l = embedding_width(M, D_l, f" (block {l})")
        P = embedding_matrix(embedding, M.ambient_dim, D_l, rng)
        atlases.append(make_atlas(M, E, embedding=P, chart_overlap=chart_overlap, dtype=dtype))
    return tuple(atlases)


def _named_subfunctions(
    name: str, atlases: tuple[Atlas, ...], smoothness: int | None, n_ridges: int, rng: torch.Generator
) -> tuple[tuple[BlockFunction, ...], ...]:
    """The built-in set ``name`` (see the module docstring); ridges are drawn block by block."""
    one_of("subfunctions", name, PRODUCT_SUBFUNCTIONS)
    if name == "sinusoid" and smoothness is not None:
        raise ValueError(f"smoothness={smoothness!r} applies to subfunctions='ridge' only")
    E, L = atlases[0].n_charts, len(atlases)
    rows = []
    for l, atlas in enumerate(atlases):
        if name == "sinusoid":
            fns = [Sinusoid(2 * math.pi * i / E, 2 * math.pi * l / L) for i in range(E)]
        else:
            kappa = 1 if smoothness is None else smoothness
            fns = [
                make_ridge_target(atlas.manifold, smoothness=kappa, n_ridges=n_ridges, generator=rng)
                for _ in range(E)
            ]
        rows.append(tuple(OnBlock(f, atlas.embedding) for f in fns))
    return tuple(rows)


def build_product_task(
    *,
    E: int,
    D: int | Sequence[int],
    manifolds: str | Manifold | Sequence[str | Manifold] = "circle",
    L: int | None = None,
    d: int | Sequence[int | None] | None = None,
    embedding: str = "pad",
    subfunctions: str | Sequence[Sequence[BlockFunction]] = "sinusoid",
    smoothness: int | None = None,
    n_ridges: int = 8,
    output: str = "vector",
    noise: float = 0.0,
    chart_overlap: float = 0.25,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> ProductTask:
    """The Eq. (5) task on M_1 x ... x M_L with ground-truth charts (Thm 5.2).

    Args:
        E: charts per block (experts per layer).
        D: embedding width of each block (an int for all, or one per block).
        manifolds: a manifold name or :class:`Manifold` for all blocks, or one per block.
        L: number of blocks; default len(manifolds) for a sequence, else 2.
        d: intrinsic dimension per block (an int or None for all, or one per block).
        embedding: ``"pad"`` or ``"isometry"``, for every block.
        subfunctions: ``"sinusoid"``, ``"ridge"`` (with ``smoothness``, ``n_ridges``), or L
            sequences of E callables (m, D_l) float64 -> (m,); see the module docstring.
        output: ``"vector"`` (n, L), ``"sum"`` or ``"product"`` (n, 1).
        noise: standard deviation of the Gaussian noise added to y.
        chart_overlap: relative overlap of chart domains (:mod:`moelab.tasks.atlas`).
        seed, generator: the random state (at most one). Drawn, in order: the blocks' isometries,
            ridge subfunctions (then, by :func:`make_product_task`, the samples block by block and
            the noise).
        dtype: floating dtype of x and y.

    Draw samples with ``task.sample(n, seed=...)``, or use the task as a training sampler,
    ``task(n, generator) -> (x, y)``.
    """
    E = positive_int("E", E)
    if isinstance(manifolds, Sequence) and not isinstance(manifolds, str):
        L = len(manifolds) if L is None else positive_int("L", L)
    else:
        L = 2 if L is None else positive_int("L", L)
    names = _per_block("manifolds", manifolds, L)
    dims, ds = _per_block("D", D, L), _per_block("d", d, L)
    kind = one_of("embedding", embedding, EMBEDDINGS)
    dtype = check_dtype(dtype)
    rng = resolve_generator(seed, generator)
    atlases = _block_atlases(names, dims, ds, E, kind, chart_overlap, rng, dtype)
    if isinstance(subfunctions, str):
        rows = _named_subfunctions(subfunctions, atlases, smoothness, n_ridges, rng)
    else:
        rows = check_subfunctions(subfunctions, E, L)
    return ProductTask(
        atlases=atlases,
        subfunctions=rows,
        output=one_of("output", output, OUTPUTS),
        noise=positive_float("noise", noise, allow_zero=True),
        dtype=dtype,
    )


def make_product_task(
    n: int, *, seed: int | None = None, generator: torch.Generator | None = None, **params: Any
) -> ProductSample:
    """n samples of the Eq. (5) task: :func:`build_product_task` with ``params`` and the random state,
    then ``task.sample(n)`` continuing from the same random state.

    Returns:
        :class:`ProductSample`; draw test sets with ``sample.task.sample(n, seed=...)``.
    """
    return build_and_sample(build_product_task, n, seed=seed, generator=generator, **params)


make_product_task.__signature__ = with_n(build_product_task, make_product_task)
