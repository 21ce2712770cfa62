"""Expert parallelism: an MoE layer whose experts are sharded over the ranks of a process group.

Sharding swaps two components of an ordinary :class:`~moelab.layers.moe.MoELayer`: its experts
become this rank's slice, and its dispatcher an :class:`ExpertParallelDispatcher` (all-to-all);
the router and shared experts stay replicated. Rank r owns experts [r * L, (r + 1) * L),
L = E / W. A forward pass on a rank's own tokens:

1. route them with the replicated router (the same :class:`~moelab.layers.outputs.Routing` the
   single-process layer computes for these tokens);
2. sort the kept (token, slot) assignments by expert, exactly as the grouped dispatch path does;
3. exchange split sizes (all_to_all of per-expert counts), then send each row to the rank owning its
   expert (all_to_all of rows);
4. regroup the received rows by local expert, run the local experts as grouped matmuls, restore the
   received order and send the outputs back (the reverse all_to_all);
5. weight and combine with the grouped path's deterministic combine (each (token, slot) cell written
   once, then slots summed).

Gradients flow through both exchanges, so an expert's gradient is complete on its owning rank (it
sees the rows of every rank); replicated parameters get per-rank partial gradients, summed by
:func:`~moelab.distributed.replicated.allreduce_replicated_grads`. Shapes: see :mod:`moelab.layers`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moelab._validation import one_of
from moelab.distributed.comm import all_to_all_rows, exchange_counts
from moelab.layers.dispatch import DISPATCH_MODES, Dispatched, combine_cells, sort_by_expert
from moelab.layers.experts import ExpertBank
from moelab.layers.moe import MoELayer
from moelab.layers.outputs import Routing


def _require_initialized(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{what} needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up its environment)"
        )


def _slice_experts(experts: nn.Module, num_experts: int, lo: int, hi: int) -> nn.Module:
    """A copy of the expert bank holding experts [lo, hi) only; every tensor's dim 0 is the expert."""
    memo: dict[int, Tensor] = {}
    for name, t in [*experts.named_parameters(), *experts.named_buffers()]:
        if t.dim() == 0 or t.shape[0] != num_experts:
            raise TypeError(
                f"cannot shard the expert bank: {name} has shape {tuple(t.shape)}, expected a "
                f"leading expert dimension of {num_experts}"
            )
        piece = t.detach()[lo:hi].clone()
        memo[id(t)] = nn.Parameter(piece, t.requires_grad) if isinstance(t, nn.Parameter) else piece
    # deepcopy with a memo copies the module structure but substitutes the sliced tensors, so the
    # full bank is never duplicated.
    local = copy.deepcopy(experts, memo)
    for module in local.modules():
        if hasattr(module, "num_experts"):
            module.num_experts = hi - lo
    return local


class ExpertParallelDispatcher:
    """The all-to-all dispatcher of a sharded :class:`~moelab.layers.moe.MoELayer`.

    It runs the layer's experts (this rank's slice) on the rows that every rank routes to them
    (see the module docstring); it always takes the sorted, grouped path (the dense path computes
    the same function), so a layer's ``dispatch`` setting is checked and otherwise ignored. Every
    rank of ``group`` must run the layer (and backward) the same number of times: each call is a
    collective.

    Attributes:
        group: the process group (None: the default group).
        world_size, rank: W and this rank's index within ``group``.
        num_experts: E, over all ranks; num_local_experts: L = E / W.
        expert_range: (lo, hi), the global ids of the local experts, lo <= e < hi.
    """

    def __init__(self, num_experts: int, group: dist.ProcessGroup | None = None) -> None:
        _require_initialized("ExpertParallelDispatcher")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if num_experts % world:
            raise ValueError(
                f"num_experts={num_experts} is not divisible by the expert-parallel world size "
                f"{world}; use a number of experts that is a multiple of {world} or a group of a "
                f"size dividing {num_experts}"
            )
        self.group, self.world_size, self.rank = group, world, rank
        self.num_experts = num_experts
        self.num_local_experts = L = num_experts // world
        self.expert_range = (rank * L, (rank + 1) * L)

    def __call__(self, x_TI: Tensor, routing: Routing, experts: ExpertBank, *,
                 mode: str = "auto") -> Dispatched:
        one_of("dispatch", mode, DISPATCH_MODES)
        S = routing.expert_ids.shape[1]
        W, L = self.world_size, self.num_local_experts
        # This rank's kept (token, slot) cells sorted by expert, as in the single-process path.
        cell_N, ids_N = sort_by_expert(routing)
        # Expert e lives on rank e // L, so rows sorted by expert are already grouped by rank.
        send_WL = torch.bincount(ids_N, minlength=W * L).view(W, L)
        recv_WL = exchange_counts(send_WL, self.group)
        send_sizes, recv_sizes = send_WL.sum(1).tolist(), recv_WL.sum(1).tolist()
        x_MI = all_to_all_rows(x_TI.index_select(0, cell_N // S), recv_sizes, send_sizes, self.group)

        # Received rows come in blocks by source rank, each sorted by local expert: regroup them by
        # local expert for the grouped matmuls, then restore the received order.
        local_M = torch.arange(L, device=x_TI.device).repeat(W).repeat_interleave(recv_WL.reshape(-1))
        order_M = torch.argsort(local_M, stable=True)
        out = experts.forward_grouped(x_MI[order_M], recv_WL.sum(0))
        d_out = out.y.shape[1]
        y_MF = out.y if out.recon_error is None else torch.cat([out.y, out.recon_error[:, None]], 1)
        y_MF = y_MF.new_zeros(y_MF.shape).index_copy(0, order_M, y_MF)
        y_NF = all_to_all_rows(y_MF, send_sizes, recv_sizes, self.group)

        y_TO = combine_cells(y_NF[:, :d_out], cell_N, routing)
        recon = None
        if getattr(experts, "decoder", None) is not None:
            recon_N = y_NF[:, d_out]
            recon = recon_N.mean() if recon_N.numel() else x_TI.new_zeros(())
        return Dispatched(y_TO, recon)

    def __repr__(self) -> str:
        lo, hi = self.expert_range
        return (f"ExpertParallelDispatcher(experts [{lo}, {hi}) of {self.num_experts} on rank "
                f"{self.rank} of {self.world_size})")


def is_expert_parallel(layer: nn.Module) -> bool:
    """Whether ``layer`` is an MoE layer sharded by :func:`shard_moe_layer`."""
    return isinstance(layer, MoELayer) and isinstance(layer.dispatcher, ExpertParallelDispatcher)


def shard_moe_layer(layer: MoELayer, group: dist.ProcessGroup | None = None) -> MoELayer:
    """The expert-parallel version of ``layer`` over ``group`` (None: the default group): an
    ``MoELayer`` holding this rank's slice of the experts and an :class:`ExpertParallelDispatcher`.

    ``layer`` is left untouched: its router and shared experts are copied, and this rank's slice of
    its experts. Every rank must start from the same full weights (build them with the same seed, or
    call :func:`~moelab.distributed.replicated.broadcast_parameters` first, or load a full state with
    :func:`~moelab.distributed.state.load_full_state_dict` afterwards). Raises ValueError when the
    number of experts is not divisible by the group size.
    """
    if not isinstance(layer, MoELayer) or is_expert_parallel(layer):
        raise TypeError(f"layer must be a (not yet sharded) MoELayer, got {type(layer).__name__}")
    dispatcher = ExpertParallelDispatcher(layer.num_experts, group)
    experts = _slice_experts(layer.experts, layer.num_experts, *dispatcher.expert_range)
    # Copy everything but the experts (the full bank is never duplicated), then swap components.
    sharded = copy.deepcopy(layer, {id(layer.experts): experts})
    sharded.dispatcher = dispatcher
    return sharded


def shard_model(model: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every MoE layer inside ``model`` by its expert-parallel version, in place.

    Works for :class:`~moelab.layers.stack.DeepMoE` and any module containing ``MoELayer``s (already
    sharded layers are left alone). Returns ``model``, or the sharded layer when ``model`` is itself
    an ``MoELayer``.
    """
    if is_expert_parallel(model):
        return model
    if isinstance(model, MoELayer):
        return shard_moe_layer(model, group)
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, MoELayer) and not is_expert_parallel(module)]
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, shard_moe_layer(layer, group))
    return model


def expert_parallel_layers(model: nn.Module) -> Iterator[tuple[str, MoELayer]]:
    """(qualified name, layer) of every sharded MoE layer in ``model`` ("" for the model); the
    layer's ``dispatcher`` is its :class:`ExpertParallelDispatcher`."""
    for name, module in model.named_modules():
        if is_expert_parallel(module):
            yield name, module
