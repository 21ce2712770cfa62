"""Regression tasks on a manifold embedded in R^D, with ground truth (Sec. 4, Experiment I).

:func:`make_manifold_task` builds a :class:`ManifoldTask` (manifold, embedding, atlas, target) and
draws a :class:`ManifoldSample` from it. Draw further sets (a test set) from the *same* task with
``sample.task.sample(n, seed=...)``: a new ``make_manifold_task`` call with another seed draws
another random isometry and ridge target.

Shape legend: n samples, D embedding dim, k native ambient dim, m latent dim.
"""

from __future__ import annotations

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
    checked_values,
    resolve_generator,
    with_n,
)
from moelab.tasks.atlas import Atlas, make_atlas
from moelab.tasks.base import Sampling
from moelab.tasks.manifolds import EMBEDDINGS, Manifold, embedding_matrix, embedding_width, make_manifold
from moelab.tasks.targets import Target, make_target


@dataclass(frozen=True, eq=False)
class ManifoldSample:
    """n labelled points of a :class:`ManifoldTask`.

    Attributes:
        x: (n, D) points on the embedded manifold.
        y: (n, 1) targets, y_clean plus N(0, noise^2) noise.
        y_clean: (n, 1) noise-free targets f(x).
        latent: (n, m) intrinsic coordinates (see :mod:`moelab.tasks.manifolds`).
        chart: (n,) long, the chart each point belongs to, argmax_i rho_i(x).
        task: the task, to evaluate ground truth on new points or draw more samples.
    """

    x: Tensor
    y: Tensor
    y_clean: Tensor
    latent: Tensor
    chart: Tensor
    task: ManifoldTask

    @property
    def region(self) -> Tensor:
        """(n,) long, the ground-truth region: :attr:`chart`."""
        return self.chart


@dataclass(frozen=True, eq=False)
class ManifoldTask(Sampling):
    """A target f on a manifold M in R^D with an E-chart atlas (Sec. 4).

    ``target_fn`` reads pre-embedding coordinates p = P^T x; :meth:`target` takes x in R^D.
    A :class:`~moelab.tasks.base.Task`: its regions are the charts.
    """

    manifold: Manifold
    atlas: Atlas
    target_fn: Target
    noise: float
    dtype: torch.dtype

    #: P (D, k) float64, orthonormal columns: x = P p
    embedding = property(lambda self: self.atlas.embedding)
    D = property(lambda self: self.atlas.D)
    d = property(lambda self: self.manifold.d)
    n_charts = property(lambda self: self.atlas.n_charts)
    # the Task protocol's names
    d_in, d_out, n_regions = D, property(lambda self: 1), n_charts

    def embed(self, p: Tensor) -> Tensor:
        """(n, k) pre-embedding coordinates -> (n, D)."""
        return (as_float64(p, self.manifold.ambient_dim, "p") @ self.embedding.T).to(self.dtype)

    def pre_embed(self, x: Tensor) -> Tensor:
        """(n, D) -> (n, k) float64, P^T x (the orthogonal projection's coordinates)."""
        return self.atlas.pre_embed(x)

    def from_latent(self, latent: Tensor) -> Tensor:
        """(n, m) intrinsic coordinates -> (n, D) points."""
        latent = as_float64(latent, self.manifold.latent_dim, "latent")
        return self.embed(self.manifold.to_ambient(latent))

    def to_latent(self, x: Tensor) -> Tensor:
        """(n, D) points on M -> (n, m) intrinsic coordinates."""
        return self.manifold.to_latent(self.pre_embed(x)).to(self.dtype)

    def distance(self, x: Tensor) -> Tensor:
        """(n, D) -> (n,) float64 distance to M: the off-subspace part and
        :meth:`Manifold.distance` of the in-subspace part, combined in quadrature."""
        x = as_float64(x, self.D)
        p = x @ self.embedding
        off = (x - p @ self.embedding.T).norm(dim=1)
        return torch.sqrt(off.pow(2) + self.manifold.distance(p).pow(2))

    def target(self, x: Tensor) -> Tensor:
        """(n, D) points on M -> (n, 1) noise-free target f(x)."""
        return self._target(self.pre_embed(x)).to(self.dtype)

    def _target(self, p: Tensor) -> Tensor:
        """(n, k) float64 pre-embedding coordinates -> (n, 1) float64 f."""
        return checked_values(self.target_fn, p, "target")[:, None]

    def chart_of(self, x: Tensor) -> Tensor:
        """(n, D) -> (n,) long chart index argmax_i rho_i(x)."""
        return self.atlas.chart_of(x)

    region = chart_of

    def _draw(self, n: int, rng: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(latent, p, x, y clean in float64) of n points, drawing exactly what :meth:`_sample`
        draws before the noise."""
        latent = self.manifold.sample_latent(n, rng)
        p = self.manifold.to_ambient(latent)
        return latent, p, (p @ self.embedding.T).to(self.dtype), self._target(p)

    def __call__(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x, y) of ``sample(n, generator=generator)``, the same draws and values, without the
        ground truth (charts, latent coordinates) a training step does not read."""
        rng = resolve_generator(None, generator)
        _, _, x, y_clean = self._draw(positive_int("n", n), rng)
        return x, add_noise(y_clean, self.noise, rng).to(self.dtype)

    def _sample(self, n: int, rng: torch.Generator) -> ManifoldSample:
        """n points drawn uniformly on M (see :mod:`moelab.tasks.manifolds`), with targets: draws
        the points, then the noise."""
        latent, _, x, y_clean = self._draw(n, rng)
        y = add_noise(y_clean, self.noise, rng)
        return ManifoldSample(
            x=x,
            y=y.to(self.dtype),
            y_clean=y_clean.to(self.dtype),
            latent=latent.to(self.dtype),
            chart=self.atlas.chart_of(x),
            task=self,
        )


def build_manifold_task(
    manifold: str | Manifold,
    *,
    D: int,
    d: int | None = None,
    n_charts: int | None = None,
    embedding: str = "pad",
    target: str | Target = "paper",
    smoothness: int | None = None,
    n_ridges: int = 8,
    noise: float = 0.0,
    chart_overlap: float = 0.25,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> ManifoldTask:
    """A regression task on a manifold in R^D, with ground truth (Sec. 4).

    Args:
        manifold: one of ``"circle"`` (Experiment I), ``"sphere"``, ``"torus"``, ``"spiral"``,
            ``"swiss_roll"``, or a :class:`Manifold` instance.
        D: embedding dimension; must be >= the native ambient dimension k and > d.
        d: intrinsic dimension (sphere and torus; default 2; fixed for the others).
        n_charts: E, the number of charts (= experts); default per manifold
            (circle 4, sphere 2(d+1), torus 4^d, spiral 10, swiss_roll 6).
        embedding: ``"pad"`` (zero padding, the paper's) or ``"isometry"`` (random orthonormal map).
        target: ``"paper"`` (sin(5 p_1) + cos(3 p_2)), ``"ridge"`` (smoothness ``smoothness``,
            default 1, with ``n_ridges`` ridges) or a callable (n, k) float64 -> (n,) on the
            pre-embedding coordinates; see :mod:`moelab.tasks.targets`.
        noise: standard deviation of the Gaussian noise added to y.
        chart_overlap: relative overlap of neighbouring chart domains; see
            :mod:`moelab.tasks.atlas`.
        seed, generator: the random state (at most one). Drawn from it, in order: the isometry,
            the ridge target (then, by :func:`make_manifold_task`, the samples and the noise).
        dtype: floating dtype of the returned tensors (geometry is computed in float64).

    Draw samples with ``task.sample(n, seed=...)``, or use the task as a training sampler,
    ``task(n, generator) -> (x, y)``.
    """
    M = make_manifold(manifold, d)
    D = embedding_width(M, D)
    kind = one_of("embedding", embedding, EMBEDDINGS)
    noise = positive_float("noise", noise, allow_zero=True)
    dtype = check_dtype(dtype)
    rng = resolve_generator(seed, generator)
    P = embedding_matrix(kind, M.ambient_dim, D, rng)
    atlas = make_atlas(M, n_charts, embedding=P, chart_overlap=chart_overlap, dtype=dtype)
    f = make_target(target, M, smoothness=smoothness, n_ridges=n_ridges, generator=rng)
    return ManifoldTask(manifold=M, atlas=atlas, target_fn=f, noise=noise, dtype=dtype)


def make_manifold_task(
    manifold: str | Manifold,
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> ManifoldSample:
    """n samples of a regression task on a manifold in R^D, with ground truth (Sec. 4):
    :func:`build_manifold_task` with ``params`` and the random state, then ``task.sample(n)``
    continuing from the same random state.

    Returns:
        :class:`ManifoldSample` with x (n, D), y and y_clean (n, 1), latent (n, m), chart (n,) and
        the task (for test sets: ``sample.task.sample(n, seed=...)``).
    """
    return build_and_sample(build_manifold_task, n, manifold, seed=seed, generator=generator, **params)


make_manifold_task.__signature__ = with_n(build_manifold_task, make_manifold_task)
