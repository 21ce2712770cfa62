"""What each rank computes in the expert-parallel tests (run in spawned gloo processes).

The reference: rank 0 builds the full model (every rank then receives rank 0's weights by
broadcast), and every rank runs that single-process model on each rank's tokens in turn, with the
loss summed over ranks. Capacity and the balancing losses are per-batch quantities, so the reference
applies the model per rank's batch (without capacity the outputs equal one pass over all tokens
concatenated). Expert gradients then compare directly with the owning rank's shard, and replicated
gradients after summing over ranks.

Each check returns plain Python values (max abs errors, flags, lists) for the parent to assert on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from moelab.distributed import (
    allreduce_replicated_grads,
    broadcast_parameters,
    expert_parameter_names,
    full_state_dict,
    load_full_state_dict,
    shard_model,
    shard_moe_layer,
)
from moelab.layers import DeepMoE, ExpertConfig, MoEConfig, MoELayer, RouterConfig

D_IN, D_OUT = 6, 3


@dataclass(frozen=True)
class LayerCase:
    config: MoEConfig
    lead: tuple = ((13,), (9,))  # the leading shape of rank r's input
    bias: dict = field(default_factory=dict)  # router bias entries set before broadcasting
    d_in: int = D_IN
    d_out: int = D_OUT


def _config(router: RouterConfig, experts: ExpertConfig | None = None, **layer) -> MoEConfig:
    """A case's layer: 4 experts of hidden width 5 unless the case says otherwise."""
    experts = ExpertConfig(hidden=5) if experts is None else experts
    return MoEConfig(**{"num_experts": 4, **layer}, router=router, experts=experts)


LAYER_CASES = {
    "k1": LayerCase(_config(RouterConfig(top_k=1))),
    "k2": LayerCase(_config(RouterConfig(top_k=2))),
    "k1_capacity": LayerCase(_config(RouterConfig(top_k=1, capacity_factor=1.0))),
    "k2_capacity": LayerCase(_config(RouterConfig(top_k=2, capacity_factor=0.75))),
    "k1_empty_expert": LayerCase(_config(RouterConfig(top_k=1)), bias={1: -50.0}),
    "k2_empty_expert_capacity": LayerCase(_config(RouterConfig(top_k=2, capacity_factor=1.0)),
                                          bias={2: -50.0}),
    # experts 2 and 3 live on rank 1: it receives no rows at all
    "k1_empty_rank": LayerCase(_config(RouterConfig(top_k=1)), bias={2: -50.0, 3: -50.0}),
    "k2_empty_rank": LayerCase(_config(RouterConfig(top_k=2)), bias={2: -50.0, 3: -50.0}),
    "rank_without_tokens": LayerCase(_config(RouterConfig(top_k=2)), lead=((11,), (0,))),
    "leading_dims": LayerCase(_config(RouterConfig(top_k=2)), lead=((2, 5), (3, 4))),
    # widths that are multiples of 4 take torch's grouped_mm kernel; 4 experts per rank
    "e8_grouped_mm": LayerCase(_config(RouterConfig(top_k=2), ExpertConfig(hidden=16), num_experts=8),
                               d_in=8, d_out=4),
    "lowdim_decoder": LayerCase(_config(RouterConfig(top_k=2),
                                        ExpertConfig(hidden=5, latent_dim=2, latent_decoder=True))),
    "gated_mlp_router_shared": LayerCase(_config(
        RouterConfig(top_k=2, scorer="mlp"), ExpertConfig(hidden=5, gated=True, activation="silu"),
        shared_experts=1)),
    "paper_weighting_no_bias": LayerCase(_config(RouterConfig(top_k=2, weighting="paper", bias=False),
                                                 ExpertConfig(hidden=5, bias=False))),
    "expert_choice": LayerCase(_config(RouterConfig(routing="expert_choice", capacity_factor=1.0))),
}

DEEP_WIDTHS = [D_IN, D_IN, D_OUT]
DEEP_CONFIGS = [MoEConfig(num_experts=4, router=RouterConfig(top_k=1),
                          experts=ExpertConfig(hidden=8), shared_experts=1),
                MoEConfig(num_experts=4, router=RouterConfig(top_k=2, capacity_factor=1.0),
                          experts=ExpertConfig(hidden=8))]


def _seeded(build, seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _loss(out, g) -> torch.Tensor:
    aux = sum(out.aux_losses.values()) if len(out.aux_losses) else 0.0
    return (out.y * g).sum() + 0.1 * aux


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def _grad_errors(model, ref, rank_slices: dict[str, tuple[int, int]]) -> dict[str, float]:
    errs = {}
    for name, p in model.named_parameters():
        ref_p = ref.get_parameter(name)
        ref_g = ref_p.grad if ref_p.grad is not None else torch.zeros_like(ref_p)
        if name in rank_slices:
            lo, hi = rank_slices[name]
            ref_g = ref_g[lo:hi]
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        errs[f"grad {name}"] = _err(g, ref_g)
    return errs


def _expert_slices(model) -> dict[str, tuple[int, int]]:
    names = expert_parameter_names(model)
    ranges = {}
    for name in names:
        owner = model.get_submodule(name.split(".experts.")[0]) if ".experts." in name else model
        ranges[name] = owner.dispatcher.expert_range
    return ranges


def _routing_errors(out, ref_out) -> tuple[bool, dict[str, float]]:
    r, q = out.routing, ref_out.routing
    exact = (torch.equal(r.expert_ids, q.expert_ids) and torch.equal(r.kept, q.kept)
             and torch.equal(r.tokens_per_expert, q.tokens_per_expert)
             and torch.equal(r.dropped_fraction, q.dropped_fraction))
    errs = {f"routing.{k}": _err(getattr(r, k), getattr(q, k)) for k in ("weights", "probs", "logits")}
    return exact, errs


def check_layer(rank: int, world: int, name: str) -> dict:
    case = LAYER_CASES[name]
    config = case.config
    # Different initial weights on every rank; rank 0's win the broadcast.
    full = _seeded(lambda: MoELayer(case.d_in, case.d_out, config), 1000 + rank)
    with torch.no_grad():
        for e, value in case.bias.items():
            full.router.scorer.bias[e] = value
    broadcast_parameters(full, src=0)
    xs = [_randn((*s, case.d_in), 10 + r) for r, s in enumerate(case.lead)]
    gs = [_randn((*s, case.d_out), 20 + r) for r, s in enumerate(case.lead)]

    ref = copy.deepcopy(full)
    ref_xs = [x.clone().requires_grad_(True) for x in xs]
    ref_outs = [ref.run(x) for x in ref_xs]
    sum(_loss(o, g) for o, g in zip(ref_outs, gs, strict=True)).backward()

    ep = shard_moe_layer(full)
    x = xs[rank].clone().requires_grad_(True)
    out = ep.run(x)
    _loss(out, gs[rank]).backward()
    allreduce_replicated_grads(ep)

    ref_out = ref_outs[rank]
    exact, errs = _routing_errors(out, ref_out)
    errs["y"] = _err(out.y, ref_out.y)
    errs["x.grad"] = _err(x.grad, ref_xs[rank].grad)
    for key in ref_out.aux_losses:
        errs[f"aux {key}"] = _err(out.aux_losses[key], ref_out.aux_losses[key])
    errs.update(_grad_errors(ep, ref, _expert_slices(ep)))
    load = out.routing.tokens_per_expert.clone()
    dist.all_reduce(load)
    return {
        "errors": errs,
        "routing_exact": exact,
        "aux_keys": sorted(out.aux_losses),
        "ref_aux_keys": sorted(ref_out.aux_losses),
        "global_load": load.tolist(),
        "dropped": float(out.routing.dropped_fraction),
        "local_experts": list(ep.dispatcher.expert_range),
        "is_moe_layer": type(ep) is MoELayer,
    }


def _deep_model(seed: int) -> DeepMoE:
    return _seeded(lambda: DeepMoE(DEEP_WIDTHS, DEEP_CONFIGS, residual=True), seed)


def check_deep(rank: int, world: int) -> dict:
    full = _deep_model(2000 + rank)
    broadcast_parameters(full, src=0)
    shapes = [(12, D_IN), (7, D_IN)]
    xs = [_randn(s, 30 + r) for r, s in enumerate(shapes)]
    gs = [_randn((s[0], D_OUT), 40 + r) for r, s in enumerate(shapes)]

    ref = copy.deepcopy(full)
    ref_xs = [x.clone().requires_grad_(True) for x in xs]
    ref_outs = [ref.run(x) for x in ref_xs]
    sum(_loss(o, g) for o, g in zip(ref_outs, gs, strict=True)).backward()

    ep = shard_model(copy.deepcopy(full))
    x = xs[rank].clone().requires_grad_(True)
    out = ep.run(x)
    _loss(out, gs[rank]).backward()
    allreduce_replicated_grads(ep)

    ref_out = ref_outs[rank]
    errs = {"y": _err(out.y, ref_out.y), "x.grad": _err(x.grad, ref_xs[rank].grad)}
    for key in ref_out.aux_losses:
        errs[f"aux {key}"] = _err(out.aux_losses[key], ref_out.aux_losses[key])
    exact = len(out.layers) == len(ref_out.layers) == 2
    for i, (lo, lr) in enumerate(zip(out.layers, ref_out.layers, strict=True)):
        same, routing_errs = _routing_errors(lo, lr)
        exact = exact and same
        errs.update({f"layer {i} {k}": v for k, v in routing_errs.items()})
    errs.update(_grad_errors(ep, ref, _expert_slices(ep)))
    kinds = [type(layer.dispatcher).__name__ for layer in ep.layers]
    return {"errors": errs, "routing_exact": exact, "kinds": kinds,
            "aux_keys": sorted(out.aux_losses), "ref_aux_keys": sorted(ref_out.aux_losses)}


def check_state(rank: int, world: int) -> dict:
    full = _deep_model(3000 + rank)
    broadcast_parameters(full, src=0)
    ep = shard_model(copy.deepcopy(full))
    # One training step, so the checkpoint differs from the initial weights.
    x = _randn((10, D_IN), 50 + rank)
    opt = torch.optim.Adam(ep.parameters(), lr=1e-2)
    ep.run(x).y.square().mean().backward()
    allreduce_replicated_grads(ep)
    opt.step()
    with torch.no_grad():
        y = ep.run(x).y

    state = full_state_dict(ep)
    ref_state = full.state_dict()
    result = {
        "same_keys": set(state) == set(ref_state),
        "same_shapes": all(state[k].shape == ref_state[k].shape for k in ref_state),
        "changed": any(not torch.equal(state[k], ref_state[k]) for k in ref_state),
    }
    # identical on every rank
    checksum = torch.stack([state[k].double().sum() for k in sorted(state)])
    all_sums = [torch.empty_like(checksum) for _ in range(world)]
    dist.all_gather(all_sums, checksum)
    result["same_on_all_ranks"] = all(torch.equal(s, all_sums[0]) for s in all_sums)

    # Round trip into a differently initialised sharded model.
    fresh = shard_model(_deep_model(4000 + rank))
    load_full_state_dict(fresh, state)
    with torch.no_grad():
        result["reload_equal"] = torch.equal(fresh.run(x).y, y)
    again = full_state_dict(fresh)
    result["round_trip_equal"] = all(torch.equal(again[k], state[k]) for k in state)

    # The 2-rank checkpoint loaded into a 1-rank expert-parallel group (rank 0 only).
    solo_group = dist.new_group([0])
    if rank == 0:
        solo = shard_model(_deep_model(5000), group=solo_group)
        load_full_state_dict(solo, state)
        with torch.no_grad():
            result["one_rank_err"] = _err(solo.run(x).y, y)
        result["one_rank_state_equal"] = all(
            torch.equal(v, state[k]) for k, v in full_state_dict(solo).items())
        result["one_rank_experts"] = [layer.dispatcher.num_local_experts for layer in solo.layers]

    # A truncated expert tensor is rejected with a message naming the key.
    key = "layers.1.experts.weight1"
    bad = {**state, key: state[key][:2]}
    try:
        load_full_state_dict(fresh, bad)
        result["bad_shape_error"] = None
    except ValueError as err:
        result["bad_shape_error"] = str(err)

    if rank == 0:  # what a single-process run needs to reload the checkpoint
        result["state"] = {k: v.numpy().copy() for k, v in state.items()}
        result["x"], result["y"] = x.numpy().copy(), y.numpy().copy()
    return result


def check_errors(rank: int, world: int) -> dict:
    messages = {}
    try:
        shard_moe_layer(MoELayer(4, 2, MoEConfig(num_experts=3)))
    except ValueError as err:
        messages["indivisible"] = str(err)
    ep = shard_moe_layer(MoELayer(4, 2, MoEConfig(num_experts=2)))
    try:
        shard_moe_layer(ep)
    except TypeError as err:
        messages["twice"] = str(err)
    return messages


def run_all(rank: int, world: int) -> dict:
    return {
        "layers": {name: check_layer(rank, world, name) for name in LAYER_CASES},
        "deep": check_deep(rank, world),
        "state": check_state(rank, world),
        "errors": check_errors(rank, world),
    }
