"""Forward+backward speed of moelab's MoELayer against baselines, on CPU in fp32.

One training step is: forward, loss = mean(y ** 2), backward (parameters and the input, as inside a
network), then the gradients are cleared with ``set_to_none``. Each contender is warmed up and then
timed over several steps; the median is reported. All contenders run in this one process, one after
another, at torch's default thread count.

Regimes (T tokens, D width, E experts, K experts per token):

* ``big``: T=2048, D=256, E=8, K=2, ReLU experts of hidden width 1024. Baseline ``dense_active``: one
  ReLU MLP 256 -> 1024 -> 256 on T*K = 4096 tokens, the compute of the active experts alone.
* ``gated``: the same tokens with Mixtral-shaped experts (SiLU-gated, hidden 512, no biases, softmax
  over the top-2 logits) against Hugging Face's ``MixtralSparseMoeBlock`` with
  ``experts_implementation="grouped_mm"`` and ``"eager"``, given moelab's weights, and against the
  compute floor ``gated_dense_active``: one SwiGLU MLP of the experts' shape on the T*K active rows.
* ``paper_w10`` / ``paper_w128``: the paper's layer, T=128, D=64, E=4, K=1, two-layer ReLU experts of
  width 10 or 128, d_out=1, against the common eager loop over experts.

In every regime moelab's ``"grouped"`` and ``"dense"`` dispatch paths are also timed, to show whether
``"auto"`` picks the faster one. Ratios in the final JSON line are moelab (auto) time / other time.

Usage: python benchmarks/layer_speed.py [--quick] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moelab.layers import MoEConfig, MoELayer

try:
    import transformers
    from transformers.models.mixtral.modeling_mixtral import MixtralConfig, MixtralSparseMoeBlock
except ImportError:  # the HF contenders are skipped
    transformers = None


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Warm-up and timed steps for the big (T=2048) and the tiny (T=128) regimes."""

    big_warmup: int = 3
    big_steps: int = 15
    tiny_warmup: int = 20
    tiny_steps: int = 50


FULL = Budget()
QUICK = Budget(big_warmup=2, big_steps=5, tiny_warmup=5, tiny_steps=20)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    steps: int


def training_step(
    forward: Callable[[], Tensor], modules: list[nn.Module], inputs: list[Tensor]
) -> Callable[[], None]:
    """One step: forward, loss = mean(y^2), backward, then clear every gradient (set to None)."""

    def step() -> None:
        forward().square().mean().backward()
        for module in modules:
            module.zero_grad(set_to_none=True)
        for x in inputs:
            x.grad = None

    return step


def time_steps(
    steps_by_name: dict[str, Callable[[], None]], *, warmup: int, steps: int, block: int
) -> dict[str, Timing]:
    """Median wall time of ``steps`` calls of each step function, after ``warmup`` untimed calls.

    The contenders take turns, ``block`` timed steps at a time, so that a burst of load from
    elsewhere on the machine falls on all of them rather than on whichever was running.
    """
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    while len(next(iter(times.values()))) < steps:
        for name, step in steps_by_name.items():
            for _ in range(min(block, steps - len(times[name]))):
                start = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing(statistics.median(t), min(t), len(t)) for name, t in times.items()}


def leaf_input(*shape: int, generator: torch.Generator) -> Tensor:
    return torch.randn(*shape, generator=generator).requires_grad_(True)


def init_normal_(module: nn.Module, std: float, generator: torch.Generator) -> None:
    """Every parameter of ``module`` ~ N(0, std^2) (HF's parameters start uninitialised)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def moelab_contenders(layer: MoELayer, x: Tensor) -> dict[str, Callable[[], Tensor]]:
    return {
        "moelab_auto": lambda: layer(x),
        "moelab_grouped": lambda: layer.run(x, dispatch_mode="grouped").y,
        "moelab_dense": lambda: layer.run(x, dispatch_mode="dense").y,
    }


@torch.no_grad()
def auto_path(layer: MoELayer, x: Tensor) -> str:
    """Which explicit path ``"auto"`` ran, told by bitwise equality of the outputs."""
    y = layer(x)
    for mode in ("grouped", "dense"):
        if torch.equal(y, layer.run(x, dispatch_mode=mode).y):
            return mode
    return "unknown"


# -- baselines ---------------------------------------------------------------------------------------


def dense_active_mlp(d: int, hidden: int) -> nn.Module:
    """The big regime's floor: one ReLU MLP of the experts' shape, run on all T*K assignments."""
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))


class GatedMLP(nn.Module):
    """The gated regime's floor: one SwiGLU MLP of the experts' shape, W2 (silu(W1 x) * W3 x), no
    biases, run on all T*K assignments."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))


class LoopMoE(nn.Module):
    """The common eager MoE: a linear softmax router, top-1, a Python loop over nn.Linear experts.

    Weighting is Switch's (the selected expert's full softmax probability), as moelab's default.
    """

    def __init__(self, d_in: int, d_out: int, *, num_experts: int, hidden: int) -> None:
        super().__init__()
        self.router = nn.Linear(d_in, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
            for _ in range(num_experts)
        )
        self.d_out = d_out

    def forward(self, x_TI: Tensor) -> Tensor:
        probs_TE = self.router(x_TI).softmax(-1)
        weight_T, top1_T = probs_TE.max(-1)
        y_TO = x_TI.new_zeros(x_TI.shape[0], self.d_out)
        for e, expert in enumerate(self.experts):
            idx = torch.where(top1_T == e)[0]
            y_TO = y_TO.index_add(0, idx, weight_T[idx, None] * expert(x_TI[idx]))
        return y_TO

    @torch.no_grad()
    def copy_from(self, layer: MoELayer) -> None:
        """Take ``layer``'s router and expert weights (moelab holds expert weights as (E, in, out))."""
        self.router.weight.copy_(layer.router.scorer.weight)
        self.router.bias.copy_(layer.router.scorer.bias)
        w, b = layer.experts.weights, layer.experts.biases
        for e, expert in enumerate(self.experts):
            for k, linear in enumerate((expert[0], expert[2])):
                linear.weight.copy_(w[k][e].t())
                linear.bias.copy_(b[k][e])


def hf_mixtral_block(layer: MoELayer, *, hidden: int, implementation: str) -> nn.Module:
    """HF's MixtralSparseMoeBlock holding ``layer``'s weights (gated moelab experts, no biases)."""
    d = layer.d_in
    config = MixtralConfig(
        hidden_size=d, intermediate_size=hidden, num_local_experts=layer.num_experts,
        num_experts_per_tok=layer.config.top_k, experts_implementation=implementation,
    )
    block = MixtralSparseMoeBlock(config)
    w = layer.experts.weights  # gate W1 (E, D, H), down W2 (E, H, D), value W3 (E, D, H)
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.scorer.weight)
        # gate_up_proj is (E, 2H, D): the gate's rows first, then the value's ("up"), as F.linear reads.
        block.experts.gate_up_proj.copy_(torch.cat([w[0], w[2]], dim=2).transpose(1, 2))
        block.experts.down_proj.copy_(w[1].transpose(1, 2))
    return block


HF_KERNELS = ("aten::_grouped_mm", "aten::index_add_", "aten::mm")


def hf_output(block: nn.Module, x_BSD: Tensor) -> Tensor:
    out = block(x_BSD)
    return out[0] if isinstance(out, tuple) else out


def kernels_called(fn: Callable[[], Tensor], names: tuple[str, ...]) -> str:
    """How often one forward call of ``fn`` runs each of the aten ops ``names`` (profiler count)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        fn()
    counts = {e.key: e.count for e in prof.key_averages()}
    return ", ".join(f"{name} x{counts.get(name, 0)}" for name in names)


# -- regimes -----------------------------------------------------------------------------------------


def run_big(budget: Budget, gen: torch.Generator) -> tuple[dict[str, Timing], dict]:
    T, D, E, K, H = 2048, 256, 8, 2, 1024
    layer = MoELayer(D, D, MoEConfig(num_experts=E, top_k=K, expert_hidden=H))
    x = leaf_input(T, D, generator=gen)
    mlp = dense_active_mlp(D, H)
    x_active = leaf_input(T * K, D, generator=gen)
    contenders = {**moelab_contenders(layer, x), "dense_active": lambda: mlp(x_active)}
    steps = {name: training_step(fn, [layer, mlp], [x, x_active]) for name, fn in contenders.items()}
    timings = time_steps(steps, warmup=budget.big_warmup, steps=budget.big_steps, block=1)
    return timings, {"auto_path": auto_path(layer, x)}


def run_gated(budget: Budget, gen: torch.Generator) -> tuple[dict[str, Timing], dict]:
    T, D, E, K, H = 2048, 256, 8, 2, 512
    config = MoEConfig(
        num_experts=E, top_k=K, expert_hidden=H, gated=True, activation="silu",
        expert_bias=False, router_bias=False, weighting="paper",
    )
    layer = MoELayer(D, D, config)
    init_normal_(layer, 0.02, gen)
    x = leaf_input(T, D, generator=gen)
    floor = GatedMLP(D, H)
    x_active = leaf_input(T * K, D, generator=gen)
    contenders = {**moelab_contenders(layer, x), "gated_dense_active": lambda: floor(x_active)}
    modules: list[nn.Module] = [layer, floor]
    inputs = [x, x_active]
    info: dict = {"auto_path": auto_path(layer, x)}
    if transformers is None:
        print("transformers is not installed: skipping the Hugging Face Mixtral contenders "
              "(pip install -c constraints.txt 'transformers==5.23.0', or the 'bench' extra)")
    else:
        x_BSD = x.detach().view(1, T, D).clone().requires_grad_(True)
        with torch.no_grad():
            y_ref = layer(x)
        for impl in ("grouped_mm", "eager"):
            block = hf_mixtral_block(layer, hidden=H, implementation=impl)
            modules.append(block)
            contenders[f"hf_{impl}"] = lambda block=block: hf_output(block, x_BSD)
            with torch.no_grad():
                diff = (hf_output(block, x_BSD).view(T, D) - y_ref).abs().max().item()
            info[f"max_abs_diff_vs_hf_{impl}"] = diff
            # Evidence of the path taken: grouped_mm runs aten::_grouped_mm, eager a loop of
            # per-expert F.linear (aten::mm) with aten::index_add_.
            info[f"hf_{impl}_ops"] = kernels_called(
                lambda block=block: hf_output(block, x_BSD), HF_KERNELS
            )
        info["output_max_abs"] = y_ref.abs().max().item()
        inputs.append(x_BSD)
    steps = {name: training_step(fn, modules, inputs) for name, fn in contenders.items()}
    timings = time_steps(steps, warmup=budget.big_warmup, steps=budget.big_steps, block=1)
    return timings, info


def run_paper(width: int, budget: Budget, gen: torch.Generator) -> tuple[dict[str, Timing], dict]:
    T, D, E = 128, 64, 4
    layer = MoELayer(D, 1, MoEConfig(num_experts=E, expert_hidden=width))
    loop = LoopMoE(D, 1, num_experts=E, hidden=width)
    loop.copy_from(layer)
    x = leaf_input(T, D, generator=gen)
    with torch.no_grad():
        diff = (loop(x) - layer(x)).abs().max().item()
    contenders = {**moelab_contenders(layer, x), "loop": lambda: loop(x)}
    steps = {name: training_step(fn, [layer, loop], [x]) for name, fn in contenders.items()}
    timings = time_steps(steps, warmup=budget.tiny_warmup, steps=budget.tiny_steps, block=10)
    return timings, {"auto_path": auto_path(layer, x), "max_abs_diff_vs_loop": diff}


# -- report ------------------------------------------------------------------------------------------

def print_table(results: dict[str, tuple[dict[str, Timing], dict]]) -> None:
    print(f"{'regime':<11} {'contender':<15} {'median ms':>10} {'min ms':>9} {'steps':>6} "
          f"{'auto/this':>10}")
    for regime, (timings, info) in results.items():
        auto = timings["moelab_auto"].median_ms
        for name, t in timings.items():
            print(f"{regime:<11} {name:<15} {t.median_ms:>10.3f} {t.min_ms:>9.3f} {t.steps:>6} "
                  f"{auto / t.median_ms:>10.2f}")
        for key, value in info.items():
            shown = f"{value:.3g}" if isinstance(value, float) else value
            print(f"{'':<11} {key}: {shown}")


#: (key in the summary, regime, the contender moelab's "auto" layer is divided by)
RATIOS = (
    ("big_vs_dense_active", "big", "dense_active"),
    ("gated_vs_hf_grouped_mm", "gated", "hf_grouped_mm"),
    ("gated_vs_dense_active", "gated", "gated_dense_active"),
    ("gated_vs_hf_eager", "gated", "hf_eager"),
    ("paper_w10_vs_loop", "paper_w10", "loop"),
    ("paper_w128_vs_loop", "paper_w128", "loop"),
)


def ratio(results, regime: str, other: str, stat: str = "median_ms") -> float | None:
    timings = results[regime][0]
    if other not in timings:
        return None
    return round(getattr(timings["moelab_auto"], stat) / getattr(timings[other], stat), 4)


def summary(results: dict[str, tuple[dict[str, Timing], dict]], quick: bool) -> dict:
    """The JSON summary: ratios of medians (and, less sensitive to load, of minima) and raw times."""
    return {
        **{key: ratio(results, regime, other) for key, regime, other in RATIOS},
        "ratios_of_min": {
            key: ratio(results, regime, other, "min_ms") for key, regime, other in RATIOS
        },
        "median_ms": {
            f"{regime}/{name}": round(t.median_ms, 4)
            for regime, (timings, _) in results.items() for name, t in timings.items()
        },
        "min_ms": {
            f"{regime}/{name}": round(t.min_ms, 4)
            for regime, (timings, _) in results.items() for name, t in timings.items()
        },
        "auto_path": {regime: info["auto_path"] for regime, (_, info) in results.items()},
        "gated_max_abs_diff_vs_hf": results["gated"][1].get("max_abs_diff_vs_hf_grouped_mm"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": None if transformers is None else transformers.__version__,
        "quick": quick,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer warm-up and timed steps")
    parser.add_argument("--json-out", metavar="PATH", help="also write the summary JSON here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL

    torch.manual_seed(args.seed)  # moelab's and nn.Linear's initialisers use the default generator
    gen = torch.Generator().manual_seed(args.seed)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (default), "
          f"{platform.processor() or platform.machine()}, "
          f"transformers {None if transformers is None else transformers.__version__}, fp32")
    load_before = os.getloadavg()[0]
    print(f"1-minute load average before: {load_before:.2f} (other work on these cores adds noise)")
    results = {
        "big": run_big(budget, gen),
        "gated": run_gated(budget, gen),
        "paper_w10": run_paper(10, budget, gen),
        "paper_w128": run_paper(128, budget, gen),
    }
    print_table(results)
    load_after = os.getloadavg()[0]
    print(f"1-minute load average after: {load_after:.2f}")
    out = summary(results, args.quick)
    out["loadavg_1min"] = [round(load_before, 2), round(load_after, 2)]
    line = json.dumps(out)
    print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    return out


if __name__ == "__main__":
    main()
