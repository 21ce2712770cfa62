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

import torch
from torch import Tensor

from moelab._validation import one_of, positive_float, positive_int
from moelab.tasks._common import as_float64, check_dtype, resolve_generator
from moelab.tasks.atlas import Atlas, make_atlas
from moelab.tasks.manifolds import EMBEDDINGS, Manifold, embedding_matrix, make_manifold
from moelab.tasks.piecewise import OUTPUTS, check_subfunctions, combine, flat_piece_id
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
class ProductSample:
    """n labelled points of a :class:`ProductTask`.

    Attributes:
        x: (n, sum_l D_l) concatenated block points x_l in M_l.
        y: (n, L) for output "vector", else (n, 1); y_clean plus N(0, noise^2) noise.
        y_clean: noise-free target, same shape as y.
        latent: (n, sum_l m_l) concatenated intrinsic coordinates of the blocks.
        piece: (n, L) long, the chart i_l of each block (0-based).
        piece_id: (n,) long, row-major flat id sum_l i_l E^(L - 1 - l).
        task: the task.
    """

    x: Tensor
    y: Tensor
    y_clean: Tensor
    latent: Tensor
    piece: Tensor
    piece_id: Tensor
    task: ProductTask


@dataclass(frozen=True, eq=False)
class ProductTask:
    """The Eq. (5) target on M_1 x ... x M_L, one atlas of E charts per block."""

    atlases: tuple[Atlas, ...]
    subfunctions: tuple[tuple[BlockFunction, ...], ...]
    output: str
    noise: float
    dtype: torch.dtype

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

    @property
    def out_dim(self) -> int:
        return self.L if self.output == "vector" else 1

    def split(self, x: Tensor) -> tuple[Tensor, ...]:
        """(n, D) -> the L blocks x_l (n, D_l)."""
        return tuple(as_float64(x, self.D).split(self.block_dims, dim=1))

    def pieces(self, x: Tensor) -> Tensor:
        """(n, D) -> (n, L) long, chart of each block."""
        blocks = self.split(x)
        return torch.stack([a.chart_of(b) for a, b in zip(self.atlases, blocks, strict=True)], dim=1)

    def piece_id(self, x: Tensor) -> Tensor:
        """(n, D) -> (n,) long row-major flat piece id."""
        return flat_piece_id(self.pieces(x), self.E)

    def components(self, x: Tensor) -> Tensor:
        """(n, D) -> (n, L) the values f_{l,i_l}(x_l)."""
        piece = self.pieces(x)
        blocks = self.split(x)
        out = torch.zeros(piece.shape, dtype=torch.float64)
        for l, row in enumerate(self.subfunctions):
            for i, f in enumerate(row):
                hit = piece[:, l] == i
                if hit.any():
                    out[hit, l] = f(blocks[l][hit]).to(torch.float64)
        return out.to(self.dtype)

    def target(self, x: Tensor) -> Tensor:
        """(n, D) -> (n, out_dim) noise-free target."""
        return combine(self.components(x).to(torch.float64), self.output).to(self.dtype)

    def sample(
        self, n: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> ProductSample:
        """n points, each block drawn independently and uniformly on its manifold."""
        n = positive_int("n", n)
        rng = resolve_generator(seed, generator)
        latents, blocks = [], []
        for atlas in self.atlases:
            latent = atlas.manifold.sample_latent(n, rng)
            latents.append(latent)
            blocks.append(atlas.manifold.to_ambient(latent) @ atlas.embedding.T)
        x = torch.cat(blocks, dim=1).to(self.dtype)
        y_clean = self.target(x)
        y = y_clean.to(torch.float64)
        if self.noise > 0:
            y = y + self.noise * torch.randn(y.shape, generator=rng, dtype=torch.float64)
        piece = self.pieces(x)
        return ProductSample(
            x=x,
            y=y.to(self.dtype),
            y_clean=y_clean,
            latent=torch.cat(latents, dim=1).to(self.dtype),
            piece=piece,
            piece_id=flat_piece_id(piece, self.E),
            task=self,
        )


def _per_block(name: str, value: object, L: int) -> list:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != L:
            raise ValueError(f"{name} must have one entry per block (L={L}), got {len(value)}")
        return list(value)
    return [value] * L


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
    """The task of :func:`make_product_task` (same arguments) without drawing samples."""
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
    atlases = []
    for l in range(L):
        M = make_manifold(names[l], ds[l])
        D_l = positive_int("D", dims[l])
        if M.d >= D_l or M.ambient_dim > D_l:
            raise ValueError(
                f"D={D_l} (block {l}) is too small for the {M.name} with d={M.d}: "
                f"need D > d and D >= {M.ambient_dim}"
            )
        P = embedding_matrix(kind, M.ambient_dim, D_l, rng)
        atlases.append(make_atlas(M, E, embedding=P, chart_overlap=chart_overlap, dtype=dtype))

    if isinstance(subfunctions, str):
        one_of("subfunctions", subfunctions, PRODUCT_SUBFUNCTIONS)
        if subfunctions == "sinusoid" and smoothness is not None:
            raise ValueError(f"smoothness={smoothness!r} applies to subfunctions='ridge' only")
        rows = []
        for l, atlas in enumerate(atlases):
            if subfunctions == "sinusoid":
                fns = [Sinusoid(2 * math.pi * i / E, 2 * math.pi * l / L) for i in range(E)]
            else:
                kappa = 1 if smoothness is None else smoothness
                fns = [
                    make_ridge_target(atlas.manifold, smoothness=kappa, n_ridges=n_ridges, generator=rng)
                    for _ in range(E)
                ]
            rows.append(tuple(OnBlock(f, atlas.embedding) for f in fns))
        rows = tuple(rows)
    else:
        rows = check_subfunctions(subfunctions, E, L)
    return ProductTask(
        atlases=tuple(atlases),
        subfunctions=rows,
        output=one_of("output", output, OUTPUTS),
        noise=positive_float("noise", noise, allow_zero=True),
        dtype=dtype,
    )


def make_product_task(
    n: int,
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
) -> ProductSample:
    """n samples of the Eq. (5) task on M_1 x ... x M_L with ground-truth charts (Thm 5.2).

    Args:
        n: number of samples.
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
            ridge subfunctions, the samples block by block, the noise.
        dtype: floating dtype of x and y.

    Returns:
        :class:`ProductSample`; draw test sets with ``sample.task.sample(n, seed=...)``.
    """
    n = positive_int("n", n)
    rng = resolve_generator(seed, generator)
    task = build_product_task(
        E=E,
        D=D,
        manifolds=manifolds,
        L=L,
        d=d,
        embedding=embedding,
        subfunctions=subfunctions,
        smoothness=smoothness,
        n_ridges=n_ridges,
        output=output,
        noise=noise,
        chart_overlap=chart_overlap,
        generator=rng,
        dtype=dtype,
    )
    return task.sample(n, generator=rng)
