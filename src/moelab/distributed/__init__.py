"""Expert parallelism over ``torch.distributed``: MoE layers whose experts are sharded over ranks.

* :func:`shard_moe_layer` / :func:`shard_model`: make one MoE layer, or every MoE layer in a model,
  expert-parallel (this rank's slice of the experts and an :class:`ExpertParallelDispatcher`);
  tokens travel to their experts' ranks by all_to_all.
* :func:`allreduce_replicated_grads`: sum the replicated parameters' gradients over ranks;
  :func:`broadcast_parameters` gives every rank the same starting weights.
* :func:`full_state_dict` / :func:`load_full_state_dict` / :func:`gather_expert_state`: checkpoints
  that load into a single-process model or into any number of ranks.

See ``docs/distributed.md``; ``torchrun --standalone --nproc_per_node=2 -m moelab.distributed.example``
trains a small sharded model.
"""

from moelab.distributed.comm import all_to_all_rows, exchange_counts
from moelab.distributed.expert_parallel import (
    ExpertParallelDispatcher,
    expert_parallel_layers,
    is_expert_parallel,
    shard_model,
    shard_moe_layer,
)
from moelab.distributed.replicated import (
    allreduce_replicated_grads,
    broadcast_parameters,
    expert_parameter_names,
)
from moelab.distributed.state import full_state_dict, gather_expert_state, load_full_state_dict

__all__ = [
    "ExpertParallelDispatcher",
    "all_to_all_rows",
    "allreduce_replicated_grads",
    "broadcast_parameters",
    "exchange_counts",
    "expert_parallel_layers",
    "expert_parameter_names",
    "is_expert_parallel",
    "full_state_dict",
    "gather_expert_state",
    "load_full_state_dict",
    "shard_model",
    "shard_moe_layer",
]
