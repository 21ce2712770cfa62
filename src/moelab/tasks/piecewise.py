"""Piecewise targets of Eq. (4) on [0, E]^L, with ground-truth pieces (Sec. 5, Experiment II).

The cube [0, E]^L is cut into E^L unit cubes and

    f(x) = (f_{1,i_1}(x_1), ..., f_{L,i_L}(x_L)),   i_l the j with x_l in [j - 1, j] (paper, 1-based).

moelab indexes pieces from 0: ``piece[:, l] = min(floor(x_l), E - 1)``, so piece j is [j, j + 1)
(the last one closed, [E - 1, E]), and points outside [0, E] get the nearest piece. The flat piece id
is row-major, sum_l piece[:, l] * E^(L - 1 - l), in [0, E^L); it is int64, so asking for flat ids of
a task with E^L > 2^63 pieces is a ValueError (the per-coordinate pieces remain).

Subfunctions: ``subfunctions[l][j]`` (0-based) maps the raw coordinate z = x_l of points in piece j,
an (m,) float64 tensor, to (m,) values. The built-in ``"paper"`` set (docs/paper.md Sec. 5, 6) alternates
the two Experiment II families over the coordinates, with the paper's 1-based i = j + 1:

* l = 1, 3, 5, ... (1-based): ``ParabolaPiece``, f_{l,i}(z) = (-1)^i i (z - i + 1)(z - i);
* l = 2, 4, 6, ...: ``QuarticPiece``, f_{l,i}(z) = i (i - 1 - z)^2 (z - i)^2.

Both vanish at the integers, so f is continuous on [0, E]^L; the parabolas' slopes jump there, so
f is C^0 only, as the paper states. L = 2, E = 3 is Experiment II.

Outputs: ``"vector"`` (Eq. 4, (n, L)), ``"sum"`` (sum_l f_l, (n, 1)), ``"product"`` (prod_l f_l,
(n, 1)); docs/paper.md Sec. 6 explains why all three are offered.

Shape legend: n samples, L coordinates (levels), E pieces per coordinate.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from moelab._validation import one_of, positive_float, positive_int
from moelab.tasks._common import add_noise, as_float64, check_dtype, checked_values, with_n
from moelab.tasks.base import Sampling

if TYPE_CHECKING:
    from moelab.tasks.product import ProductTask

OUTPUTS = ("vector", "sum", "product")
#: (m,) float64 coordinate values -> (m,) values
Subfunction = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ParabolaPiece:
    """f_i(z) = (-1)^i i (z - i + 1)(z - i) on [i - 1, i], paper's 1-based ``i``."""

    i: int
    pointwise: ClassVar[bool] = True  # see evaluate_components

    def __call__(self, z: Tensor) -> Tensor:
        return (-1) ** self.i * self.i * (z - self.i + 1) * (z - self.i)


@dataclass(frozen=True)
class QuarticPiece:
    """f_i(z) = i (i - 1 - z)^2 (z - i)^2 on [i - 1, i], paper's 1-based ``i`` (Experiment II)."""

    i: int
    pointwise: ClassVar[bool] = True  # see evaluate_components

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


def evaluate_components(
    subfunctions: Sequence[Sequence[Callable[[Tensor], Tensor]]], piece: Tensor, inputs: Sequence[Tensor]
) -> Tensor:
    """(n, L) float64 values f_{l, piece[:, l]} of each row of ``inputs[l]`` (n, ...), the argument
    of coordinate or block l; every subfunction must return one value per row it is given.

    Each subfunction sees only the rows of its own piece, unless every subfunction of a row
    declares ``pointwise = True`` (each value depends on its own row alone and is defined on every
    row, as for the built-in pieces): those are evaluated on all rows and the values picked per
    row, which gives the same numbers without selecting each piece's rows.
    """
    out = torch.zeros(piece.shape, dtype=torch.float64)
    for l, row in enumerate(subfunctions):
        if all(getattr(f, "pointwise", False) for f in row):
            values = torch.stack([checked_values(f, inputs[l], f"subfunctions[{l}][{j}]")
                                  for j, f in enumerate(row)])  # (E, n)
            out[:, l] = values.gather(0, piece[None, :, l]).squeeze(0)
            continue
        for j, f in enumerate(row):
            hit = piece[:, l] == j
            if hit.any():
                out[hit, l] = checked_values(f, inputs[l][hit], f"subfunctions[{l}][{j}]")
    return out


#: Flat piece ids are int64: E^L pieces need E^L - 1 <= 2^63 - 1.
MAX_FLAT_PIECES = 2**63


def flat_piece_id(piece: Tensor, E: int) -> Tensor:
    """(n, L) 0-based piece indices -> (n,) row-major id sum_l piece_l E^(L - 1 - l), or a ValueError
    when E^L ids do not fit in int64 (they would wrap around to negative numbers)."""
    L = piece.shape[1]
    if E**L > MAX_FLAT_PIECES:
        raise ValueError(
            f"E={E} pieces per coordinate and L={L} coordinates make E^L = {float(E**L):.3g} pieces, "
            f"more than int64 piece ids can number (at most 2^63 = {float(MAX_FLAT_PIECES):.3g}); "
            "use the per-coordinate piece indices (n, L) instead"
        )
    weights = E ** torch.arange(L - 1, -1, -1, dtype=torch.long)
    return (piece * weights).sum(dim=1)


class PieceIds:
    """The flat piece id of a sample with per-coordinate pieces ``piece`` (n, L) of a ``task``."""

    piece: Tensor
    task: PiecewiseTask | ProductTask

    @property
    def piece_id(self) -> Tensor:
        """(n,) long, row-major flat id sum_l piece_l E^(L - 1 - l) in [0, E^L) (a ValueError
        beyond int64)."""
        return flat_piece_id(self.piece, self.task.E)

    @property
    def region(self) -> Tensor:
        """(n,) long, the ground-truth region: :attr:`piece_id`."""
        return self.piece_id


@dataclass(frozen=True, eq=False)
class PiecewiseSample(PieceIds):
    """n labelled points of a :class:`PiecewiseTask`.

    Attributes:
        x: (n, L) points, uniform on [0, E]^L.
        y: (n, L) for output "vector", else (n, 1); y_clean plus N(0, noise^2) noise.
        y_clean: noise-free target, same shape as y.
        piece: (n, L) long, 0-based piece index i_l - 1 of each coordinate.
        task: the task, for ground truth on new points and further samples.
        piece_id: (n,) long, row-major flat piece id in [0, E^L) (a property).
    """

    x: Tensor
    y: Tensor
    y_clean: Tensor
    piece: Tensor
    task: PiecewiseTask


@dataclass(frozen=True, eq=False, kw_only=True)
class PieceTask(Sampling):
    """What the Eq. (4) and Eq. (5) tasks share: L coordinates or blocks with E pieces (or charts)
    each, the E^L combinations as regions, and the output formed from the L components
    f_{l,i_l}. Subclasses provide ``E``, ``L``, ``pieces(x)`` and the subfunctions' inputs."""

    subfunctions: tuple[tuple[Callable[[Tensor], Tensor], ...], ...]
    output: str
    noise: float
    dtype: torch.dtype

    E: ClassVar[int]
    L: ClassVar[int]

    @abstractmethod
    def pieces(self, x: Tensor) -> Tensor:
        """(n, d_in) -> (n, L) long, the 0-based piece of each coordinate or block."""

    @abstractmethod
    def _inputs(self, x: Tensor) -> Sequence[Tensor]:
        """(n, d_in) -> the argument rows of each coordinate's or block's subfunctions."""

    def components(self, x: Tensor) -> Tensor:
        """(n, d_in) -> (n, L) the values f_{l,i_l} (the vector of Eq. 4 or Eq. 5)."""
        return evaluate_components(self.subfunctions, self.pieces(x), self._inputs(x)).to(self.dtype)

    @property
    def out_dim(self) -> int:
        return self.L if self.output == "vector" else 1

    @property
    def n_pieces(self) -> int:
        return self.E**self.L

    # the Task protocol's names
    d_out, n_regions = out_dim, n_pieces

    def piece_id(self, x: Tensor) -> Tensor:
        """(n, d_in) -> (n,) long row-major flat piece id (a ValueError beyond int64)."""
        return flat_piece_id(self.pieces(x), self.E)

    region = piece_id

    def target(self, x: Tensor) -> Tensor:
        """(n, d_in) -> (n, out_dim) noise-free target in the task's output form."""
        return combine(self.components(x).to(torch.float64), self.output).to(self.dtype)


@dataclass(frozen=True, eq=False)
class PiecewiseTask(PieceTask):
    """The Eq. (4) target with E pieces per coordinate and L coordinates (see module docstring).
    A :class:`~moelab.tasks.base.Task`: its regions are the E^L pieces. Fields: E, L, and
    :class:`PieceTask`'s subfunctions, output, noise and dtype (keyword-only)."""

    E: int
    L: int

    @property
    def d_in(self) -> int:
        return self.L

    def pieces(self, x: Tensor) -> Tensor:
        """(n, L) -> (n, L) long 0-based piece index min(floor(x_l), E - 1), clipped to [0, E-1]."""
        x = as_float64(x, self.L)
        return torch.floor(x).clamp(0, self.E - 1).long()

    def _inputs(self, x: Tensor) -> Tensor:
        return as_float64(x, self.L).T  # row l: the coordinate x_l

    def _sample(self, n: int, rng: torch.Generator) -> PiecewiseSample:
        """n points uniform on [0, E]^L with targets and pieces: draws the points, then the noise."""
        x = (self.E * torch.rand(n, self.L, generator=rng, dtype=torch.float64)).to(self.dtype)
        y_clean = self.target(x)
        y = add_noise(y_clean, self.noise, rng)
        return PiecewiseSample(x=x, y=y.to(self.dtype), y_clean=y_clean, piece=self.pieces(x), task=self)


def build_piecewise_task(
    *,
    E: int,
    L: int,
    subfunctions: str | Sequence[Sequence[Subfunction]] | None = None,
    output: str = "vector",
    noise: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> PiecewiseTask:
    """The Eq. (4) task on [0, E]^L with ground-truth pieces (Thm 5.3, Experiment II).

    Args:
        E: pieces per coordinate (experts per layer); L: coordinates (the depth is 2L).
        subfunctions: None or ``"paper"`` (the built-in set, see the module docstring), or L
            sequences of E callables, ``subfunctions[l][j]`` applied to x_l on piece j (0-based);
            each must return one value per point it is given.
        output: ``"vector"`` (n, L), ``"sum"`` or ``"product"`` (n, 1).
        noise: standard deviation of the Gaussian noise added to y.
        dtype: floating dtype of x and y.

    Draw samples with ``task.sample(n, seed=...)`` (points, then noise), or use the task as a
    training sampler, ``task(n, generator) -> (x, y)``.
    """
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
    n: int, *, seed: int | None = None, generator: torch.Generator | None = None, **params: Any
) -> PiecewiseSample:
    """n samples of the Eq. (4) task, ``build_piecewise_task(**params).sample(n, seed=seed,
    generator=generator)``; the parameters are those of :func:`build_piecewise_task`.

    Returns:
        :class:`PiecewiseSample` with x, y, y_clean, piece (n, L) 0-based, piece_id (n,), task.
    """
    return build_piecewise_task(**params).sample(n, seed=seed, generator=generator)


make_piecewise_task.__signature__ = with_n(build_piecewise_task, make_piecewise_task)
