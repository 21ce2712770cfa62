"""Speed of a moelab layer converted from a Hugging Face MoE block against that block itself.

Each regime builds a transformers 5.23 MoE block with random weights and ``experts_implementation=
"grouped_mm"`` (transformers' grouped-matmul expert kernel path), converts it with
``moelab.interop.hf.from_hf`` and times both side by side on the same input: one training step is
forward, loss = mean(y ** 2), backward (parameters and the input), gradients cleared. The two take
turns in blocks of steps after a warm-up; the median and minimum step times are reported. Before
timing, the outputs are checked to agree (the maximum difference is printed).

The final line is JSON: ``<regime>`` = moelab median / HF median (below 1: moelab is faster) and
the same for the minimum, with the device, dtype and versions.

Usage: python benchmarks/hf_speed.py [--device cpu|cuda] [--dtype float32|bfloat16]
                                     [--size small|large] [--threads N] [--quick]
                                     [--json-out PATH]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from torch import Tensor, nn

from moelab.interop.hf import LAYOUTS, from_hf
from summary_line import emit


@dataclass(frozen=True, kw_only=True)
class Regime:
    """A transformers config class and its arguments, and the number of tokens per step."""

    name: str
    config_class: str
    config: dict
    tokens: int


def regimes(size: str) -> list[Regime]:
    """A Mixtral-like and a DeepSeek-V3-like block; ``"large"`` is for a GPU."""
    big = size == "large"
    d = 2048 if big else 256
    return [
        Regime(name="mixtral_like", config_class="MixtralConfig", tokens=8192 if big else 2048,
               config=dict(hidden_size=d, intermediate_size=4 * d if big else 512,
                           num_local_experts=8, num_experts_per_tok=2)),
        # DeepSeek-V3's routing at a smaller scale: 64 experts in 8 groups, 4 kept, K = 6,
        # scaling 2.5, one shared expert
        Regime(name="deepseek_like", config_class="DeepseekV3Config",
               tokens=8192 if big else 2048,
               config=dict(hidden_size=d, moe_intermediate_size=512 if big else 128,
                           n_routed_experts=64, num_experts_per_tok=6, n_group=8, topk_group=4,
                           routed_scaling_factor=2.5, n_shared_experts=1, norm_topk_prob=True)),
    ]


def hf_block(regime: Regime, gen: torch.Generator, device: str, dtype: torch.dtype) -> nn.Module:
    config = getattr(transformers, regime.config_class)(**regime.config)
    config._experts_implementation = "grouped_mm"
    layout = LAYOUTS[config.model_type]
    module = __import__(f"transformers.models.{layout.module}.modeling_{layout.module}",
                        fromlist=[layout.block])
    block = getattr(module, layout.block)(config)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
        for name, b in block.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.01 * torch.randn(b.shape, generator=gen))
    return block.to(device=device, dtype=dtype).train()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        y = module(x)
        y = y[0] if isinstance(y, tuple) else y
        y.float().square().mean().backward()
        module.zero_grad(set_to_none=True)
    return step


def time_pair(steps: dict[str, Callable[[], None]], *, warmup: int, rounds: int, block: int,
              device: str) -> dict[str, list[float]]:
    """Per-step seconds of each contender, taking turns in blocks of ``block`` steps."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(block):
                step()
            sync(device)
            times[name].append((time.perf_counter() - start) / block)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--size", choices=["small", "large"], default=None,
                        help="default: large on cuda, small on cpu")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is steadier on a busy machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, getattr(torch, args.dtype)
    size = args.size or ("large" if device == "cuda" else "small")
    warmup, rounds, block = (2, 3, 2) if args.quick else (3, 7, 3)
    gen = torch.Generator().manual_seed(args.seed)
    out: dict = {"benchmark": "hf_speed", "device": device, "dtype": args.dtype, "size": size,
                 "torch": torch.__version__, "transformers": transformers.__version__,
                 "threads": torch.get_num_threads(), "machine": platform.machine()}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    print(f"{'regime':<15} {'contender':<22} {'median ms':>10} {'min ms':>10}")
    for regime in regimes(size):
        hf = hf_block(regime, gen, device, dtype)
        layer = from_hf(hf)
        x = torch.randn(1, regime.tokens, regime.config["hidden_size"], generator=gen)
        x = x.to(device=device, dtype=dtype).requires_grad_()
        with torch.no_grad():
            diff = (layer(x) - hf(x)).abs().max().item()
        steps = {"hf_grouped_mm": make_step(hf, x), "moelab": make_step(layer, x)}
        times = time_pair(steps, warmup=warmup, rounds=rounds, block=block, device=device)
        for name, t in times.items():
            print(f"{regime.name:<15} {name:<22} {1e3 * statistics.median(t):>10.2f} "
                  f"{1e3 * min(t):>10.2f}")
        print(f"{regime.name:<15} max |moelab - hf| = {diff:.2e}")
        med = {n: statistics.median(t) for n, t in times.items()}
        out[regime.name] = round(med["moelab"] / med["hf_grouped_mm"], 3)
        out[f"{regime.name}_min"] = round(min(times["moelab"]) / min(times["hf_grouped_mm"]), 3)
        out[f"{regime.name}_ms"] = {n: round(1e3 * v, 3) for n, v in med.items()}
        out[f"{regime.name}_max_diff"] = diff
    emit(out, args.json_out)
    return out


if __name__ == "__main__":
    main()
