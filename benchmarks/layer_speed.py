"""Forward+backward speed of moelab's MoELayer against baselines, on CPU in fp32.

One training step is: forward, loss = mean(y ** 2), backward (parameters and the input, as inside a
network), then the gradients are cleared with ``set_to_none``. Each contender is warmed up and then
timed over several steps; the median and the minimum are reported. All contenders run in this one
process, taking turns, at torch's default thread count.

The regimes are the rows of :data:`REGIMES`; each times moelab's layer with ``dispatch="auto"`` and
with the explicit ``"grouped"`` and ``"dense"`` paths (to show whether ``"auto"`` picks the faster
one), and its baselines from :data:`BASELINES` (built in baselines.py; that each computes the same
function as moelab's layer is tested in tests/layers/test_peer_parity.py, not here). The final JSON
line gives moelab (auto) time / baseline time as ``<regime>_vs_<baseline>``.

Usage: python benchmarks/layer_speed.py [--quick] [--only REGIME ...] [--compile] [--threads N]
                                       [--json-out PATH] [--seed N]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from baselines import LoopMoE, dense_active, hf_mixtral_block, torchtitan_moe
from moelab.layers import ExpertConfig, MoEConfig, MoELayer, RouterConfig
from summary_line import emit

# -- what is timed ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Untimed warm-up steps, timed steps, and timed steps per contender per turn."""

    warmup: int
    steps: int
    block: int


@dataclass(frozen=True, kw_only=True)
class Regime:
    """moelab's layer ``d_in -> d_out`` with config ``moe`` on ``tokens`` tokens, and its baselines
    (keys of :data:`BASELINES`). ``init_std``: every layer parameter ~ N(0, init_std^2) instead of
    moelab's default initialisation (None)."""

    name: str
    tokens: int
    d_in: int
    d_out: int
    moe: MoEConfig
    baselines: tuple[str, ...]
    budget: Budget
    quick: Budget
    init_std: float | None = None


LARGE, LARGE_QUICK = Budget(warmup=3, steps=15, block=1), Budget(warmup=2, steps=5, block=1)
SMALL, SMALL_QUICK = Budget(warmup=20, steps=50, block=10), Budget(warmup=5, steps=20, block=10)

REGIMES = (
    # Large ReLU experts against the compute of the active experts alone.
    Regime(
        name="big", tokens=2048, d_in=256, d_out=256,
        moe=MoEConfig(num_experts=8, router=RouterConfig(top_k=2), experts=ExpertConfig(hidden=1024)),
        baselines=("dense_active",), budget=LARGE, quick=LARGE_QUICK,
    ),
    # Mixtral-shaped experts (SiLU-gated, no biases, softmax over the top-2 logits) against Hugging
    # Face's Mixtral block with both of its expert implementations, the compute floor, and
    # torchtitan's MoE.
    Regime(
        name="gated", tokens=2048, d_in=256, d_out=256,
        moe=MoEConfig(
            num_experts=8,
            router=RouterConfig(top_k=2, bias=False, weighting="paper"),
            experts=ExpertConfig(hidden=512, gated=True, activation="silu", bias=False),
        ),
        baselines=("hf_grouped_mm", "dense_active", "hf_eager", "torchtitan"),
        budget=LARGE, quick=LARGE_QUICK, init_std=0.02,
    ),
    # The paper's layer (top-1, two-layer ReLU experts of width m, d_out = 1) against the common
    # eager loop over experts, and one plain MLP of an expert's shape on all T tokens (no router,
    # no dispatch): the least one eager training step of this size costs.
    Regime(
        name="paper_w10", tokens=128, d_in=64, d_out=1,
        moe=MoEConfig(num_experts=4, experts=ExpertConfig(hidden=10)),
        baselines=("loop", "dense_active"), budget=SMALL, quick=SMALL_QUICK,
    ),
    Regime(
        name="paper_w128", tokens=128, d_in=64, d_out=1,
        moe=MoEConfig(num_experts=4, experts=ExpertConfig(hidden=128)),
        baselines=("loop", "dense_active"), budget=SMALL, quick=SMALL_QUICK,
    ),
)

#: moelab's dispatch paths timed in every regime; the ratios divide the first one's time.
MOELAB_MODES = ("auto", "grouped", "dense")


# -- contenders ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """``forward`` runs ``module`` on its leaf inputs ``inputs``; ``kernels`` are aten ops whose
    counts in one forward call show which implementation ran (reported, not timed)."""

    forward: Callable[[], Tensor]
    module: nn.Module
    inputs: tuple[Tensor, ...]
    kernels: tuple[str, ...] = ()

    def step(self) -> None:
        """One training step: forward, loss = mean(y^2), backward, clear every gradient."""
        self.forward().square().mean().backward()
        self.module.zero_grad(set_to_none=True)
        for x in self.inputs:
            x.grad = None


def leaf_input(*shape: int, generator: torch.Generator) -> Tensor:
    return torch.randn(*shape, generator=generator).requires_grad_(True)


def moelab_contender(layer: MoELayer, x: Tensor, mode: str) -> Contender:
    if mode == "auto":
        return Contender(lambda: layer(x), layer, (x,))
    return Contender(lambda: layer.run(x, dispatch_mode=mode).y, layer, (x,))


def dense_active_contender(layer: MoELayer, x: Tensor, gen: torch.Generator) -> Contender:
    """One MLP of the experts' shape on T*K rows: the compute of the active experts alone."""
    mlp = dense_active(layer)
    x_active = leaf_input(x.shape[0] * layer.config.router.top_k, layer.d_in, generator=gen)
    return Contender(lambda: mlp(x_active), mlp, (x_active,))


def hf_contender(layer: MoELayer, x: Tensor, gen: torch.Generator, *, implementation: str) -> Contender:
    """HF's MixtralSparseMoeBlock with ``layer``'s weights, on the same tokens as (1, T, D).

    ``grouped_mm`` runs aten::_grouped_mm; ``eager`` a loop of per-expert F.linear (aten::mm) with
    aten::index_add_.
    """
    block = hf_mixtral_block(layer, implementation=implementation)
    x_BSD = x.detach().view(1, *x.shape).clone().requires_grad_(True)
    kernels = ("aten::_grouped_mm", "aten::index_add_", "aten::mm")
    return Contender(lambda: block(x_BSD), block, (x_BSD,), kernels)


def torchtitan_contender(layer: MoELayer, x: Tensor, gen: torch.Generator) -> Contender:
    """torchtitan's MoE with ``layer``'s weights and Mixtral's routing, on the same tokens as (1, T, D).

    Its experts run in bfloat16 (aten::_grouped_mm, which on CPU is a loop of aten::mm over the
    experts); its combine is aten::scatter_add under deterministic algorithms.
    """
    moe = torchtitan_moe(layer)
    x_BSD = x.detach().view(1, *x.shape).clone().requires_grad_(True)
    kernels = ("aten::_grouped_mm", "aten::mm", "aten::scatter_add")
    return Contender(lambda: moe(x_BSD), moe, (x_BSD,), kernels)


def compiled_contender(layer: MoELayer, x: Tensor) -> tuple[Contender | None, dict]:
    """``torch.compile(layer)`` (inductor, which on CPU writes and builds C++ kernels), timed like
    the eager layer. The first step (the compilation, forward and backward) is timed apart; if it
    fails (no working C++ compiler, say), the contender is dropped and the reason reported."""
    compiled = torch.compile(layer)
    contender = Contender(lambda: compiled(x), layer, (x,))
    start = time.perf_counter()
    try:
        contender.step()
    except Exception as error:  # any failure to compile means: stay eager, and say why
        return None, {"compiled": f"failed, eager only ({type(error).__name__}: {error})"[:300]}
    return contender, {"compile_s": round(time.perf_counter() - start, 2)}


def loop_contender(layer: MoELayer, x: Tensor, gen: torch.Generator) -> Contender:
    loop = LoopMoE.like(layer)
    return Contender(lambda: loop(x), loop, (x,))


@dataclass(frozen=True)
class Baseline:
    """How to build a baseline next to moelab's layer and its input; the module it needs to import
    (None: only torch) and how to install it."""

    build: Callable[[MoELayer, Tensor, torch.Generator], Contender]
    needs: str | None = None
    install: str = ""


HF_INSTALL = "pip install -c constraints.txt -e '.[bench]'"
TORCHTITAN_INSTALL = "see benchmarks/README.md: torchtitan is installed with --no-deps"


BASELINES = {
    "dense_active": Baseline(dense_active_contender),
    "hf_grouped_mm": Baseline(
        functools.partial(hf_contender, implementation="grouped_mm"), needs="transformers",
        install=HF_INSTALL,
    ),
    "hf_eager": Baseline(
        functools.partial(hf_contender, implementation="eager"), needs="transformers",
        install=HF_INSTALL,
    ),
    "torchtitan": Baseline(
        torchtitan_contender, needs="torchtitan.models.common.moe", install=TORCHTITAN_INSTALL
    ),
    "loop": Baseline(loop_contender),
}


def import_error(module: str) -> ImportError | None:
    """Why ``module`` does not import (torchtitan, installed without its dependencies, may lack one
    of the few it needs), or None if it does."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        return error
    return None


def init_normal_(module: nn.Module, std: float, generator: torch.Generator) -> None:
    """Every parameter of ``module`` ~ N(0, std^2)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


# -- timing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    steps: int


def time_steps(steps_by_name: dict[str, Callable[[], None]], budget: Budget) -> dict[str, Timing]:
    """Wall time per call of each step function over ``budget.steps`` calls, after the warm-up.

    The contenders take turns, ``budget.block`` timed steps at a time, so that a burst of load from
    elsewhere on the machine falls on all of them rather than on whichever was running.
    """
    for step in steps_by_name.values():
        for _ in range(budget.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    while len(next(iter(times.values()))) < budget.steps:
        for name, step in steps_by_name.items():
            for _ in range(min(budget.block, budget.steps - len(times[name]))):
                start = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing(statistics.median(t), min(t), len(t)) for name, t in times.items()}


@torch.no_grad()
def auto_path(layer: MoELayer, x: Tensor) -> str:
    """Which explicit path ``"auto"`` ran, told by bitwise equality of the outputs."""
    y = layer(x)
    for mode in ("grouped", "dense"):
        if torch.equal(y, layer.run(x, dispatch_mode=mode).y):
            return mode
    return "unknown"


def kernels_called(fn: Callable[[], Tensor], names: tuple[str, ...]) -> str:
    """How often one forward call of ``fn`` runs each of the aten ops ``names`` (profiler count)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        fn()
    counts = {e.key: e.count for e in prof.key_averages()}
    return ", ".join(f"{name} x{counts.get(name, 0)}" for name in names)


def run_regime(regime: Regime, budget: Budget, gen: torch.Generator, *,
               compile_layer: bool = False) -> tuple[dict[str, Timing], dict]:
    """Time moelab's paths and the regime's available baselines; also say what ``"auto"`` ran.
    With ``compile_layer``, also ``torch.compile(layer)`` (``moelab_compiled``)."""
    layer = MoELayer(regime.d_in, regime.d_out, regime.moe)
    if regime.init_std is not None:
        init_normal_(layer, regime.init_std, gen)
    x = leaf_input(regime.tokens, regime.d_in, generator=gen)
    contenders = {f"moelab_{mode}": moelab_contender(layer, x, mode) for mode in MOELAB_MODES}
    for name in regime.baselines:
        baseline = BASELINES[name]
        error = None if baseline.needs is None else import_error(baseline.needs)
        if error is not None:
            print(f"{baseline.needs} does not import ({error}): skipping {regime.name}/{name} "
                  f"({baseline.install})")
            continue
        contenders[name] = baseline.build(layer, x, gen)
    info = {"auto_path": auto_path(layer, x)}
    if compile_layer:
        compiled, compile_info = compiled_contender(layer, x)
        info.update(compile_info)
        if compiled is not None:
            contenders["moelab_compiled"] = compiled
    for name, contender in contenders.items():
        if contender.kernels:
            info[f"{name}_ops"] = kernels_called(contender.forward, contender.kernels)
    steps = {name: contender.step for name, contender in contenders.items()}
    return time_steps(steps, budget), info


# -- report -------------------------------------------------------------------------------------------

Results = dict[str, tuple[dict[str, Timing], dict]]


def print_table(results: Results) -> None:
    print(f"{'regime':<11} {'contender':<15} {'median ms':>10} {'min ms':>9} {'steps':>6} "
          f"{'auto/this':>10}")
    for regime, (timings, info) in results.items():
        auto = timings["moelab_auto"].median_ms
        for name, t in timings.items():
            print(f"{regime:<11} {name:<15} {t.median_ms:>10.3f} {t.min_ms:>9.3f} {t.steps:>6} "
                  f"{auto / t.median_ms:>10.2f}")
        for key, value in info.items():
            print(f"{'':<11} {key}: {value}")


def ratio(timings: dict[str, Timing], other: str, stat: str) -> float | None:
    """moelab (auto) time / ``other``'s, by ``stat``; None where ``other`` was skipped."""
    if other not in timings:
        return None
    return round(getattr(timings["moelab_auto"], stat) / getattr(timings[other], stat), 4)


def summary(results: Results, quick: bool) -> dict:
    """The JSON summary: ratios of medians (and, less sensitive to load, of minima) and raw times."""

    def ratios(stat: str) -> dict[str, float | None]:
        return {
            f"{regime.name}_vs_{other}":
                ratio(results[regime.name][0], other, stat) if regime.name in results else None
            for regime in REGIMES for other in regime.baselines
        }

    def times(stat: str) -> dict[str, float]:
        return {
            f"{regime}/{name}": round(getattr(t, stat), 4)
            for regime, (timings, _) in results.items() for name, t in timings.items()
        }

    return {
        **ratios("median_ms"),
        "ratios_of_min": ratios("min_ms"),
        "median_ms": times("median_ms"),
        "min_ms": times("min_ms"),
        "auto_path": {regime: info["auto_path"] for regime, (_, info) in results.items()},
        # compiled time / eager (auto) time, from medians: below 1 means compiling paid.
        "compiled_vs_eager": {
            regime: round(timings["moelab_compiled"].median_ms / timings["moelab_auto"].median_ms, 4)
            for regime, (timings, _) in results.items() if "moelab_compiled" in timings
        },
        "compile_s": {regime: info["compile_s"] for regime, (_, info) in results.items()
                      if "compile_s" in info},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "torchtitan": package_version("torchtitan"),
        "quick": quick,
    }


def package_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name).__version__


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer warm-up and timed steps")
    parser.add_argument("--json-out", metavar="PATH", help="also write the summary JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="REGIME", choices=[r.name for r in REGIMES],
                        help="time only these regimes (the others' ratios are null)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(layer) (moelab_compiled) and its compile time")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch's intra-op threads (default: torch's default, one per core)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    # torchtitan's router asks for float32 autocast, unsupported on CPU: it warns and runs in float32.
    warnings.filterwarnings("ignore", message="In CPU autocast", category=UserWarning)
    threads = "default" if args.threads is None else "--threads"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} ({threads}), "
          f"{platform.processor() or platform.machine()}, "
          f"transformers {package_version('transformers')}, "
          f"torchtitan {package_version('torchtitan')}, fp32 (torchtitan's experts: bf16)")
    load_before = os.getloadavg()[0]
    print(f"1-minute load average before: {load_before:.2f} (other work on these cores adds noise)")
    results = {}
    for regime in REGIMES:
        if args.only is not None and regime.name not in args.only:
            continue
        # Seeded per regime, so a regime's weights and inputs do not depend on which others ran.
        torch.manual_seed(args.seed)  # moelab's and nn.Linear's initialisers use the default one
        gen = torch.Generator().manual_seed(args.seed)
        budget = regime.quick if args.quick else regime.budget
        results[regime.name] = run_regime(regime, budget, gen, compile_layer=args.compile)
    print_table(results)
    load_after = os.getloadavg()[0]
    print(f"1-minute load average after: {load_after:.2f}")
    out = summary(results, args.quick)
    out["loadavg_1min"] = [round(load_before, 2), round(load_after, 2)]
    emit(out, args.json_out)
    return out


if __name__ == "__main__":
    main()
