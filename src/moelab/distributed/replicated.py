"""Replicated parameters of an expert-parallel model: same start on every rank, summed gradients.

Everything outside the expert shards (routers, shared experts, dense layers) is replicated, and each
rank's backward pass gives only its own tokens' share of their gradient, as in data parallelism.
The expert shards are different on every rank and their gradients are already complete.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from moelab.distributed.expert_parallel import _require_initialized, expert_parallel_layers


def expert_parameter_names(model: nn.Module) -> set[str]:
    """Qualified names of the sharded expert parameters of ``model`` (different on every rank).

    Useful to keep them out of data-parallel wrappers, e.g. the ignore list of
    ``DistributedDataParallel``.
    """
    names = set()
    for prefix, layer in expert_parallel_layers(model):
        base = f"{prefix}.experts" if prefix else "experts"
        names.update(f"{base}.{n}" for n, _ in layer.experts.named_parameters())
    return names


def allreduce_replicated_grads(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Sum the gradients of every replicated parameter over ``group``; expert shards are skipped.

    Call it after ``backward()`` and before the optimizer step. Afterwards every gradient is that of
    the sum over ranks of the per-rank losses, which is what an expert shard's gradient already is;
    divide each rank's loss by the world size to train on the mean instead. A gradient that is None
    on some ranks counts as zero; one that is None on every rank stays None. All gradients of one
    dtype and device travel in a single all-reduce.
    """
    _require_initialized("allreduce_replicated_grads")
    skip = expert_parameter_names(model)
    params = [p for n, p in model.named_parameters() if p.requires_grad and n not in skip]
    buckets: dict[tuple, list[nn.Parameter]] = {}
    for p in params:
        buckets.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), group_params in buckets.items():
        # One flat buffer: the gradients, then one "has a gradient" flag per parameter.
        parts = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                 for p in group_params]
        flags = torch.tensor([p.grad is not None for p in group_params], dtype=dtype, device=device)
        flat = torch.cat([*parts, flags])
        dist.all_reduce(flat, group=group)
        grads = flat[: -len(group_params)].split([p.numel() for p in group_params])
        for p, g, flag in zip(group_params, grads, flat[-len(group_params):].tolist(), strict=True):
            if p.grad is not None:
                p.grad.copy_(g.view_as(p))
            elif flag > 0:
                p.grad = g.view_as(p).clone()


@torch.no_grad()
def broadcast_parameters(module: nn.Module, *, src: int = 0,
                         group: dist.ProcessGroup | None = None) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank of ``group``.

    For a model that is not yet sharded (every rank holds all experts), so that all ranks start from
    the same full weights; ``src`` is a global rank.
    """
    _require_initialized("broadcast_parameters")
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=src, group=group)
