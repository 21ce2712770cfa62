"""Train a small expert-parallel DeepMoE on the circle task: the worked example of docs/distributed.md.

Run on one CPU machine with 2 processes (gloo), or on GPUs (NCCL, one process per GPU)::

    torchrun --standalone --nproc_per_node=2 -m moelab.distributed.example --steps 300

Every rank builds the same full model (same seed), keeps its slice of the experts, draws its own
batches (its own data seed) and runs a plain Adam loop; replicated parameters (routers, shared
experts) have their gradients summed over ranks before each step. Rank 0 prints the loss averaged
over ranks, and at the end the test error; ``--save PATH`` writes the full (unsharded) state dict,
which loads into a single-process ``DeepMoE`` with ``load_state_dict``. Without torchrun the script
runs as a single rank.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moelab.distributed.expert_parallel import shard_model
from moelab.distributed.replicated import allreduce_replicated_grads
from moelab.distributed.state import full_state_dict
from moelab.layers import DeepMoE, ExpertConfig, MoEConfig
from moelab.tasks import build_manifold_task


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m moelab.distributed.example", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128, help="tokens per rank and step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--experts", type=int, default=4, help="experts per layer (divisible by ranks)")
    p.add_argument("--aux-weight", type=float, default=1e-2, help="load-balancing loss weight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save", default=None, help="write the full state dict here (torch.save)")
    return p.parse_args(argv)


def _init_process_group() -> torch.device:
    """Join the torchrun job (NCCL on GPUs, gloo on CPU), or start a 1-rank group without torchrun."""
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def _mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone()
    dist.all_reduce(value)
    return float(value) / dist.get_world_size()


def main(argv: Sequence[str] | None = None) -> float:
    """Train and return the final test MSE (the same on every rank)."""
    args = _parse(argv)
    device = _init_process_group()
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        task = build_manifold_task("circle", D=16, seed=args.seed)  # the same task on every rank
        with torch.random.fork_rng(devices=[]):  # the same initial weights on every rank
            torch.manual_seed(args.seed)
            model = DeepMoE([16, 32, 1], MoEConfig(num_experts=args.experts, experts=ExpertConfig(hidden=16)))
        model = shard_model(model.to(device))
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        data = torch.Generator().manual_seed(1000 * (args.seed + 1) + rank)  # each rank its own data
        if rank == 0:
            print(f"{world} rank(s), {args.experts} experts per layer, "
                  f"{args.experts // world} per rank", flush=True)

        for step in range(1, args.steps + 1):
            batch = task.sample(args.batch, generator=data)
            out = model.run(batch.x.to(device))
            mse = F.mse_loss(out.y, batch.y.to(device))
            loss = mse + args.aux_weight * out.aux_losses["load_balance"]
            # Gradients are summed over ranks, so divide by the world size to train on the mean.
            (loss / world).backward()
            allreduce_replicated_grads(model)
            opt.step()
            opt.zero_grad(set_to_none=True)
            mean_mse = _mean_over_ranks(mse)  # every rank takes part in the collective
            if rank == 0 and (step % args.log_every == 0 or step == args.steps):
                print(f"step {step:5d}  train mse {mean_mse:.5f}", flush=True)

        test = task.sample(4096, seed=args.seed + 12345)  # each rank scores its share of one test set
        with torch.no_grad():
            x, y = test.x.chunk(world)[rank].to(device), test.y.chunk(world)[rank].to(device)
            sq_err = (model(x) - y).square().sum()
        dist.all_reduce(sq_err)
        test_mse = float(sq_err) / test.y.numel()
        state = full_state_dict(model)  # a collective: every rank gathers
        if rank == 0:
            print(f"test mse {test_mse:.5f}", flush=True)
            if args.save:
                torch.save({k: v.cpu() for k, v in state.items()}, args.save)
                print(f"saved the full state dict to {args.save}", flush=True)
        return test_mse
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
