"""Functions of t carried as a partition of [0, 1] into intervals with an affine map on each.

:func:`moelab.analysis.pieces.count_pieces` pushes x(t) = a + t (b - a) through a model as a
:class:`Track`: on interval i the carried values are h(t) = p[i] + t q[i], in float64. Affine maps act
on (p, q) directly; a ReLU cuts an interval where a pre-activation crosses 0; routing cuts where the
selected set changes. Columns are appended as layers compute, and compacted between layers.

Shape legend: n intervals, W carried columns, S selection slots, I/O in/out widths, E experts.
"""

from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64


class Track:
    """The partition t_0 = 0 < ... < t_n = 1 and, on interval i, h(t) = p[i] + t q[i] (n, W), plus the
    selected experts so far, ``sel`` (n, S). ``opaque`` names the layer after which the carried values
    stop being affine in t (only with ``routing_intervals_only``)."""

    def __init__(self, a: Tensor, b: Tensor, t_tol: float) -> None:
        self.t = torch.tensor([0.0, 1.0], dtype=F64)
        self.p, self.q = a[None].clone(), (b - a)[None].clone()
        self.sel = torch.zeros(1, 0, dtype=torch.long)
        self.t_tol = t_tol
        self.opaque: str | None = None

    def mid(self) -> Tensor:
        return (self.t[:-1] + self.t[1:]) / 2

    def at_mid(self, cols: slice) -> Tensor:
        return self.p[:, cols] + self.mid()[:, None] * self.q[:, cols]

    def append(self, p_nO: Tensor, q_nO: Tensor) -> slice:
        w = self.p.shape[1]
        self.p, self.q = torch.cat([self.p, p_nO], 1), torch.cat([self.q, q_nO], 1)
        return slice(w, w + p_nO.shape[1])

    def keep(self, cols: slice) -> slice:
        self.p, self.q = self.p[:, cols].clone(), self.q[:, cols].clone()
        return slice(0, self.p.shape[1])

    def split(self, cuts_nM: Tensor) -> Tensor:
        """Cut interval i at its candidate points ``cuts_nM[i]`` (NaN: none); points closer than
        ``t_tol`` to a boundary or to each other are dropped. Returns each new interval's parent."""
        inside = (cuts_nM > self.t[:-1, None] + self.t_tol) & (cuts_nM < self.t[1:, None] - self.t_tol)
        cuts = cuts_nM[inside].sort().values
        if cuts.numel() == 0:
            return torch.arange(len(self.t) - 1)
        cuts = cuts[torch.cat([torch.ones(1, dtype=torch.bool), cuts.diff() > self.t_tol])]
        t_new = torch.cat([self.t, cuts]).sort().values
        parent = torch.searchsorted(self.t, (t_new[:-1] + t_new[1:]) / 2, right=True) - 1
        parent = parent.clamp(0, len(self.t) - 2)
        self.t, self.p, self.q, self.sel = t_new, self.p[parent], self.q[parent], self.sel[parent]
        return parent

    def merge(self, same_next: Tensor) -> None:
        """Join interval i and i + 1 where ``same_next[i]`` (they must carry the same values)."""
        starts = torch.cat([torch.ones(1, dtype=torch.bool), ~same_next])
        self.t = torch.cat([self.t[:1], self.t[1:-1][~same_next], self.t[-1:]])
        self.p, self.q, self.sel = self.p[starts], self.q[starts], self.sel[starts]

    def affine(self, cols: slice, w_IO: Tensor, b_O: Tensor | None, where: str,
               ids_col: int | None = None) -> slice:
        """Append x @ W + b for the columns ``cols``; W (I, O), or (E, I, O) with interval i using
        expert ``sel[i, ids_col]``."""
        x_p, x_q = self.p[:, cols], self.q[:, cols]
        if x_p.shape[1] != w_IO.shape[-2]:
            raise ValueError(
                f"a and b must have the input width of the model: {where} expects "
                f"{w_IO.shape[-2]} features, got {x_p.shape[1]}"
            )
        if w_IO.dim() == 3:
            ids = self.sel[:, ids_col]
            w_nIO = w_IO[ids]
            y_p = torch.bmm(x_p[:, None], w_nIO)[:, 0]
            y_q = torch.bmm(x_q[:, None], w_nIO)[:, 0]
            if b_O is not None:
                y_p = y_p + b_O[ids]
        else:
            y_p, y_q = x_p @ w_IO, x_q @ w_IO
            if b_O is not None:
                y_p = y_p + b_O
        return self.append(y_p, y_q)

    def relu(self, cols: slice, slope: float, where: str) -> None:
        self.check_affine(where)
        p, q = self.p[:, cols], self.q[:, cols]
        self.split(torch.where(q != 0, -p / q, torch.full_like(p, float("nan"))))
        # the factors as float64 tensors: two Python scalars would make a float32 result
        one, leak = torch.ones((), dtype=F64), torch.tensor(slope, dtype=F64)
        factor = torch.where(self.at_mid(cols) > 0, one, leak)
        self.p[:, cols] *= factor
        self.q[:, cols] *= factor

    def check_affine(self, where: str) -> None:
        if self.opaque is not None:
            raise ValueError(
                f"{where} reads a value that is not piecewise affine in t: the combine weights of "
                f"{self.opaque} vary with the input, so later ReLUs and routers cannot be traced exactly"
            )
