"""The collectives expert parallelism needs: split sizes first, then token rows, with autograd.

Shape legend: W ranks in the group, L experts per rank, N rows sent, M rows received, F features.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def exchange_counts(send_WL: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Tell every rank how many rows it will receive: (W, L) -> (W, L).

    ``send_WL[r, l]`` is the number of rows this rank sends to local expert l of rank r; the result's
    ``[s, l]`` is the number of rows rank s sends to this rank's local expert l.
    """
    recv_WL = torch.empty_like(send_WL)
    dist.all_to_all_single(recv_WL.view(-1), send_WL.contiguous().view(-1), group=group)
    return recv_WL


class _AllToAllRows(torch.autograd.Function):
    """all_to_all_single over rows whose backward is the reverse exchange (splits swapped)."""

    @staticmethod
    def forward(ctx, x_NF: Tensor, recv_sizes: list[int], send_sizes: list[int], group):
        ctx.sizes, ctx.group = (recv_sizes, send_sizes), group
        y_MF = x_NF.new_empty(sum(recv_sizes), *x_NF.shape[1:])
        dist.all_to_all_single(y_MF, x_NF.contiguous(), recv_sizes, send_sizes, group=group)
        return y_MF

    @staticmethod
    def backward(ctx, grad_MF: Tensor):
        recv_sizes, send_sizes = ctx.sizes
        grad_NF = _AllToAllRows.apply(grad_MF.contiguous(), send_sizes, recv_sizes, ctx.group)
        return grad_NF, None, None, None


def all_to_all_rows(
    x_NF: Tensor,
    recv_sizes: list[int],
    send_sizes: list[int],
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Send ``send_sizes[r]`` consecutive rows of x (N, F) to rank r; receive (M, F), M = sum(recv_sizes).

    Rows from rank s arrive as the s-th block of ``recv_sizes[s]`` rows. Differentiable: the gradient
    travels back by the reverse exchange, so every rank of ``group`` must run the backward pass too
    (as it must for any collective inside a model).
    """
    return _AllToAllRows.apply(x_NF, list(recv_sizes), list(send_sizes), group)
