"""Piecewise targets of Eq. (4) on [0, E]^L, with ground-truth pieces (Sec. 5, Experiment II).

The cube [0, E]^L is cut into E^L unit cubes and

    f(x) = (f_{1,i_1}(x_1), ..., f_{L,i_L}(x_L)),   i_l the j with x_l in [j - 1, j] (paper, 1-based).

moelab indexes pieces from 0: ``piece[:, l] = min(floor(x_l), E - 1)``, so piece j is [j, j + 1)
(the last one closed, [E - 1, E]), and points outside [0, E] get the nearest piece. The flat piece id
is row-major, sum_l piece[:, l] * E^(L - 1 - l), in [0, E^L).

Subfunctions: ``subfunctions[l][j]`` (0-based) maps the raw coordinate z = x_l of points in piece j,
an (m,) float64 tensor, to (m,) values. The built-in ``"paper"`` set (PAPER.md Sec. 5, 6) alternates
the two Experiment II families over the coordinates, with the paper's 1-based i = j + 1:

* l = 1, 3, 5, ... (1-based): ``ParabolaPiece``, f_{l,i}(z) = (-1)^i i (z - i + 1)(z - i);
* l = 2, 4, 6, ...: ``QuarticPiece``, f_{l,i}(z) = i (i - 1 - z)^2 (z - i)^2.

Both vanish at the integers, so f is continuous on [0, E]^L; the parabolas' slopes jump there, so
f is C^0 only, as the paper states. L = 2, E = 3 is Experiment II.

Outputs: ``"vector"`` (Eq. 4, (n, L)), ``"sum"`` (sum_l f_l, (n, 1)), ``"product"`` (prod_l f_l,
(n, 1)); PAPER.md Sec. 6 explains why all three are offered.

Shape legend: n samples, L coordinates (levels), E pieces per coordinate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab._validation import one_of, positive_float, positive_int
from moelab.tasks._common import as_float64, check_dtype, resolve_generator

OUTPUTS = ("vector", "sum", "product")
#: (m,) float64 coordinate values -> (m,) values
Subfunction = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ParabolaPiece:
    """f_i(z) = (-1)^i i (z - i + 1)(z - i) on [i - 1, i], paper's 1-based ``i``."""

    i: int

    def __call__(self, z: Tensor) -> Tensor:
        return (-1) ** self.i * self.i * (z - self.i + 1) * (z - self.i)


@dataclass(frozen=True)
class QuarticPiece:
    """f_i(z) = i (i - 1 - z)^2 (z - i)^2 on [i - 1, i], paper's 1-based ``i`` (Experiment II)."""

    i: int

    def __call__(self, z: Tensor) -> Tensor:
        return self.i * (self.i - 1 - z).pow(2) * (z - self.i).pow(2)


def paper_subfunctions(E: int, L: int) -> tuple[tuple[Subfunction, ...], ...]:
    """The built-in Eq. (4) subfunctions f[l][j] (0-based): parabolas for even l, quartics for odd
    l (the paper's l = 1 and l = 2 of Experiment II), each with the paper's i = j + 1."""
    E, L = positive_int("E", E), positive_int("L", L)
    family = (ParabolaPiece, QuarticPiece)
    return tuple(tuple(family[l % 2](j + 1) for j in range(E)) for l in range(L))


def check_subfunctions(subfunctions: object, E: int, L: int) -> tuple[tuple[Callable, ...], ...]:
    """``subfunctions`` as an L-tuple of E-tuples of callables, or a ValueError/TypeError."""
    if isinstance(subfunctions, (str, bytes)) or not isinstance(subfunctions, Sequence):
        raise TypeError(
            f"subfunctions must be a name or a sequence of L={L} sequences of E={E} callables, "
            f"got {type(subfunctions).__name__}"
        )
    rows = [tuple(row) if isinstance(row, Sequence) else None for row in subfunctions]
    if len(rows) != L or any(row is None or len(row) != E for row in rows):
        found = [None if row is None else len(row) for row in rows]
        raise ValueError(
            f"subfunctions must hold L={L} sequences of E={E} callables, got {len(rows)} "
            f"entries of lengths {found}"
        )
    if not all(callable(f) for row in rows for f in row):
        raise TypeError("subfunctions must contain callables only")
    return tuple(rows)


def combine(components: Tensor, output: str) -> Tensor:
    """(n, L) values f_{l,i_l}(x_l) -> the ``output`` form: (n, L) or (n, 1)."""
    if output == "vector":
        return components
    if output == "sum":
        return components.sum(dim=1, keepdim=True)
    return components.prod(dim=1, keepdim=True)


def flat_piece_id(piece: Tensor, E: int) -> Tensor:
    """(n, L) 0-based piece indices -> (n,) row-major id sum_l piece_l E^(L - 1 - l)."""
    L = piece.shape[1]
    weights = E ** torch.arange(L - 1, -1, -1, dtype=torch.long)
    return (piece * weights).sum(dim=1)


@dataclass(frozen=True, eq=False)
class PiecewiseSample:
    """n labelled points of a :class:`PiecewiseTask`.

    Attributes:
        x: (n, L) points, uniform on [0, E]^L.
        y: (n, L) for output "vector", else (n, 1); y_clean plus N(0, noise^2) noise.
        y_clean: noise-free target, same shape as y.
        piece: (n, L) long, 0-based piece index i_l - 1 of each coordinate.
        piece_id: (n,) long, row-major flat piece id in [0, E^L).
        task: the task, for ground truth on new points and further samples.
    """

    x: Tensor
    y: Tensor
    y_clean: Tensor
    piece: Tensor
    piece_id: Tensor
    task: PiecewiseTask


@dataclass(frozen=True, eq=False)
class PiecewiseTask:
    """The Eq. (4) target with E pieces per coordinate and L coordinates (see module docstring)."""

    E: int
    L: int
    subfunctions: tuple[tuple[Subfunction, ...], ...]
    output: str
    noise: float
    dtype: torch.dtype

    @property
    def out_dim(self) -> int:
        return self.L if self.output == "vector" else 1

    @property
    def n_pieces(self) -> int:
        return self.E**self.L

    def pieces(self, x: Tensor) -> Tensor:
        """(n, L) -> (n, L) long 0-based piece index min(floor(x_l), E - 1), clipped to [0, E-1]."""
        x = as_float64(x, self.L)
        return torch.floor(x).clamp(0, self.E - 1).long()

    def piece_id(self, x: Tensor) -> Tensor:
        """(n, L) -> (n,) long row-major flat piece id."""
        return flat_piece_id(self.pieces(x), self.E)

    def components(self, x: Tensor) -> Tensor:
        """(n, L) -> (n, L) the values f_{l,i_l}(x_l) (the vector of Eq. 4)."""
        piece = self.pieces(x)
        x = as_float64(x, self.L)
        out = torch.zeros_like(x)
        for l, row in enumerate(self.subfunctions):
            for j, f in enumerate(row):
                hit = piece[:, l] == j
                if hit.any():
                    out[hit, l] = f(x[hit, l]).to(torch.float64)
        return out.to(self.dtype)

    def target(self, x: Tensor) -> Tensor:
        """(n, L) -> (n, out_dim) noise-free target in the task's output form."""
        return combine(self.components(x).to(torch.float64), self.output).to(self.dtype)

    def sample(
        self, n: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> PiecewiseSample:
        """n points uniform on [0, E]^L with targets and pieces."""
        n = positive_int("n", n)
        rng = resolve_generator(seed, generator)
        x = (self.E * torch.rand(n, self.L, generator=rng, dtype=torch.float64)).to(self.dtype)
        y_clean = self.target(x)
        y = y_clean.to(torch.float64)
        if self.noise > 0:
            y = y + self.noise * torch.randn(y.shape, generator=rng, dtype=torch.float64)
        piece = self.pieces(x)
        return PiecewiseSample(
            x=x,
            y=y.to(self.dtype),
            y_clean=y_clean,
            piece=piece,
            piece_id=flat_piece_id(piece, self.E),
            task=self,
        )


def build_piecewise_task(
    *,
    E: int,
    L: int,
    subfunctions: str | Sequence[Sequence[Subfunction]] | None = None,
    output: str = "vector",
    noise: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> PiecewiseTask:
    """The task of :func:`make_piecewise_task` (same arguments) without drawing samples."""
    E, L = positive_int("E", E), positive_int("L", L)
    if subfunctions is None or isinstance(subfunctions, str):
        one_of("subfunctions", "paper" if subfunctions is None else subfunctions, ("paper",))
        rows = paper_subfunctions(E, L)
    else:
        rows = check_subfunctions(subfunctions, E, L)
    return PiecewiseTask(
        E=E,
        L=L,
        subfunctions=rows,
        output=one_of("output", output, OUTPUTS),
        noise=positive_float("noise", noise, allow_zero=True),
        dtype=check_dtype(dtype),
    )


def make_piecewise_task(
    n: int,
    *,
    E: int,
    L: int,
    subfunctions: str | Sequence[Sequence[Subfunction]] | None = None,
    output: str = "vector",
    noise: float = 0.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> PiecewiseSample:
    """n samples of the Eq. (4) task on [0, E]^L with ground-truth pieces (Thm 5.3, Exp. II).

    Args:
        n: number of samples, uniform on [0, E]^L.
        E: pieces per coordinate (experts per layer); L: coordinates (the depth is 2L).
        subfunctions: None or ``"paper"`` (the built-in set, see the module docstring), or L
            sequences of E callables, ``subfunctions[l][j]`` applied to x_l on piece j (0-based).
        output: ``"vector"`` (n, L), ``"sum"`` or ``"product"`` (n, 1).
        noise: standard deviation of the Gaussian noise added to y.
        seed, generator: the random state (at most one): samples, then noise.
        dtype: floating dtype of x and y.

    Returns:
        :class:`PiecewiseSample` with x, y, y_clean, piece (n, L) 0-based, piece_id (n,), task.
    """
    task = build_piecewise_task(E=E, L=L, subfunctions=subfunctions, output=output, noise=noise, dtype=dtype)
    return task.sample(n, seed=seed, generator=generator)
