"""Token dispatch: run the routed experts on their tokens and combine the weighted outputs.

Three paths compute the same function:

* ``"grouped"``: gather each kept (token, slot) assignment, sort the rows by expert, run every
  expert on its contiguous group through grouped matmuls, weight the rows, and write each row to its
  own (token, slot) cell before summing over slots. Work is proportional to T*K.
* ``"dense"``: every expert on every token (batched matmul), then a (T, E) matrix of combine weights
  masks and mixes them. Work is proportional to T*E. For tiny experts (the paper's regime) this is
  the faster path: it launches a handful of kernels; for two-layer experts the mix is folded into
  the second matmul.
* ``"reference"``: the plain version of ``"dense"`` — ``forward_all`` (every expert's output on
  every token), then the weighted sum. Never chosen by ``"auto"``; the tests' yardstick.

Both combines are deterministic: every output cell is written once and then reduced in a fixed
order (no atomic scatter-add), so a re-run gives the same bits.

A :class:`LocalDispatcher` is the component an :class:`~moelab.layers.moe.MoELayer` owns to run
these paths; expert parallelism swaps in an all-to-all dispatcher with the same call signature
(:class:`Dispatcher`). The experts are any :class:`~moelab.layers.experts.ExpertBank`.
Shapes: see :mod:`moelab.layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from moelab._validation import one_of
from moelab.layers.config import DispatchMode, choices
from moelab.layers.experts import ExpertBank
from moelab.layers.outputs import Routing

DISPATCH_MODES = choices(DispatchMode)

#: ``"auto"`` takes the dense path when computing every expert on every token costs at most this
#: many multiply-adds. Below it, the dense path's few large kernels beat sorting and grouping
#: (measured on CPU, forward + backward, T=128: the two paths tie at about 2**22 for E/K = 4).
DENSE_WORK_LIMIT = 2**22
#: Experts of at most this many multiply-adds per token take the dense path up to
#: :data:`TINY_DENSE_WORK_LIMIT`: on many tokens, the grouped path's gathers and sorts of every
#: row cost more than the dense path wastes (measured: forward, T=8192, D=16, width 10).
TINY_EXPERT_MACS = 256
TINY_DENSE_WORK_LIMIT = 2**23


@dataclass(frozen=True)
class Dispatched:
    """Combined expert output ``y`` (T, O) and, for low-dimensional experts with a decoder, the mean
    over kept assignments of the squared reconstruction error (else None)."""

    y: Tensor
    recon_loss: Tensor | None


class Dispatcher(Protocol):
    """Runs ``experts`` on the assignments of ``routing`` and combines: x (T, I) -> y (T, O)."""

    def __call__(self, x_TI: Tensor, routing: Routing, experts: ExpertBank, *,
                 mode: str) -> Dispatched: ...


class LocalDispatcher:
    """All experts on this process: the paths of this module (see the module docstring)."""

    def __call__(self, x_TI: Tensor, routing: Routing, experts: ExpertBank, *,
                 mode: str = "auto") -> Dispatched:
        return dispatch_and_combine(x_TI, routing, experts, mode=mode)

    def __repr__(self) -> str:
        return "LocalDispatcher()"


def expert_macs_per_token(experts: ExpertBank) -> int:
    """Multiply-adds one expert spends on one token (weights only)."""
    return experts.macs_per_token


def choose_path(mode: str, num_tokens: int, experts: ExpertBank, routing: Routing) -> str:
    """Resolve ``"auto"`` to ``"dense"`` or ``"grouped"`` (see :data:`DENSE_WORK_LIMIT` and
    :data:`TINY_EXPERT_MACS`)."""
    one_of("dispatch", mode, DISPATCH_MODES)
    if mode != "auto":
        return mode
    macs = experts.macs_per_token
    limit = TINY_DENSE_WORK_LIMIT if macs <= TINY_EXPERT_MACS else DENSE_WORK_LIMIT
    return "dense" if num_tokens * routing.num_experts * macs <= limit else "grouped"


def dispatch_and_combine(x_TI: Tensor, routing: Routing, experts: ExpertBank, *,
                         mode: str = "auto") -> Dispatched:
    """Run ``experts`` on the assignments of ``routing`` and combine: x (T, I) -> y (T, O)."""
    path = choose_path(mode, x_TI.shape[0], experts, routing)
    if path == "grouped":
        return _grouped(x_TI, routing, experts)
    return _dense(x_TI, routing, experts, fused=path == "dense")


def _dense(x_TI: Tensor, routing: Routing, experts: ExpertBank, *, fused: bool) -> Dispatched:
    w_TE = routing.combine_weights()
    y_TO = experts.forward_mixed(x_TI, w_TE) if fused else None
    if y_TO is not None:  # two-layer experts: every expert and the mix in two flat matmuls
        return Dispatched(y_TO, None)
    out = experts.forward_all(x_TI)
    y_TO = torch.einsum("te,eto->to", w_TE, out.y)
    recon = None
    if out.recon_error is not None:
        kept_TE = torch.zeros_like(w_TE, dtype=torch.bool).scatter(1, routing.expert_ids,
                                                                   routing.kept)
        recon = _mean_or_zero(out.recon_error.t()[kept_TE], x_TI)
    return Dispatched(y_TO, recon)


def sort_by_expert(routing: Routing) -> tuple[Tensor, Tensor]:
    """The kept (token, slot) cells as flat indices t * S + s, sorted by expert (stable, so cells of
    one expert stay in token order), and the expert of each: two (N,) long tensors.

    When the router knows that every assignment is kept (no capacity limit, token choice),
    ``routing.all_kept`` says so and no mask is read: no host sync, static shapes.
    """
    T, S = routing.expert_ids.shape
    ids_N = routing.expert_ids.reshape(-1)
    if routing.all_kept:
        cell_N = torch.arange(T * S, device=ids_N.device)
    else:
        cell_N = routing.kept.reshape(-1).nonzero().squeeze(1)
        ids_N = ids_N[cell_N]
    order_N = torch.argsort(ids_N, stable=True)
    return cell_N[order_N], ids_N[order_N]


def combine_cells(y_NO: Tensor, cell_N: Tensor, routing: Routing) -> Tensor:
    """Weight each routed row and sum a token's slots: (N, O) rows of the cells ``cell_N`` ->
    (T, O). Each (token, slot) cell is written exactly once, then the slots are summed in order,
    so the result is deterministic (no atomic scatter-add)."""
    T, S = routing.expert_ids.shape
    y_NO = y_NO * routing.weights.reshape(-1).index_select(0, cell_N)[:, None]
    cells = y_NO.new_zeros(T * S, y_NO.shape[1]).index_copy(0, cell_N, y_NO)
    return cells if S == 1 else cells.view(T, S, y_NO.shape[1]).sum(1)


def _grouped(x_TI: Tensor, routing: Routing, experts: ExpertBank) -> Dispatched:
    S = routing.expert_ids.shape[1]
    cell_N, ids_N = sort_by_expert(routing)
    # Rows per expert, as a tensor of static shape (E,): bincount's shape depends on the data.
    counts_E = ids_N.new_zeros(routing.num_experts).index_add_(0, ids_N, torch.ones_like(ids_N))
    # index_select: its backward is a plain index_add (the [] gather's is a slower index_put).
    out = experts.forward_grouped(x_TI.index_select(0, cell_N if S == 1 else cell_N // S), counts_E)
    recon = None if out.recon_error is None else _mean_or_zero(out.recon_error, x_TI)
    return Dispatched(combine_cells(out.y, cell_N, routing), recon)


def _mean_or_zero(values: Tensor, like: Tensor) -> Tensor:
    return values.mean() if values.numel() else like.new_zeros(())
