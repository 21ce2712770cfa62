"""Full (unsharded) state dicts of expert-parallel models, for checkpoints that outlive the run.

A sharded model's own ``state_dict()`` holds only the local expert slice. :func:`full_state_dict`
gathers the slices into the state dict of the single-process model (same keys, expert tensors of
leading size E), identical on every rank; :func:`load_full_state_dict` takes such a state and keeps
each rank's slice. A checkpoint is thus independent of the number of ranks: one written from 2 ranks
loads into a single-process model (plain ``load_state_dict``) or into any number of ranks dividing E.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moelab.distributed.expert_parallel import expert_parallel_layers
from moelab.layers.moe import MoELayer


@torch.no_grad()
def gather_expert_state(layer: MoELayer) -> dict[str, Tensor]:
    """The full expert bank of a sharded ``layer`` on every rank: {name: tensor of leading size E}.

    Names are those of ``layer.experts.state_dict()`` (e.g. ``weight1``: (E, in, out)). A
    collective over the layer's group: every rank must call it.
    """
    full = {}
    sharding = layer.dispatcher
    for name, local in layer.experts.state_dict().items():
        pieces = [torch.empty_like(local) for _ in range(sharding.world_size)]
        dist.all_gather(pieces, local.contiguous(), group=sharding.group)
        full[name] = torch.cat(pieces)
    return full


def _expert_prefixes(model: nn.Module) -> dict[str, MoELayer]:
    return {(f"{name}.experts." if name else "experts."): layer
            for name, layer in expert_parallel_layers(model)}


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of the unsharded model, on every rank (expert shards all-gathered).

    Load it into the single-process model with ``load_state_dict`` or into a sharded model with
    :func:`load_full_state_dict`. A collective: every rank must call it.
    """
    state = dict(model.state_dict())
    for prefix, layer in _expert_prefixes(model).items():
        for name, tensor in gather_expert_state(layer).items():
            state[prefix + name] = tensor
    return state


def load_full_state_dict(model: nn.Module, state: Mapping[str, Tensor], *, strict: bool = True):
    """Load a full (unsharded) state dict into a sharded ``model``, keeping this rank's expert slice.

    ``state`` is what :func:`full_state_dict` returns, or the ``state_dict()`` of the single-process
    model. No communication. Returns ``load_state_dict``'s result (missing and unexpected keys).
    Raises ValueError when an expert tensor's leading size is not the layer's number of experts.
    """
    prefixes = _expert_prefixes(model)
    local = {}
    for key, tensor in state.items():
        layer = next((lay for p, lay in prefixes.items() if key.startswith(p)), None)
        if layer is None:
            local[key] = tensor
            continue
        if tensor.dim() == 0 or tensor.shape[0] != layer.num_experts:
            raise ValueError(
                f"state[{key!r}] has shape {tuple(tensor.shape)}; expected a full expert tensor "
                f"with leading size num_experts={layer.num_experts}"
            )
        lo, hi = layer.dispatcher.expert_range
        local[key] = tensor[lo:hi]
    return model.load_state_dict(local, strict=strict)
