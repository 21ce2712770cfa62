"""Per-model cost of a training step: N runs stacked (moelab.training.batched) against one run.

For each model of Tables 3 and 4 (first run of each batch the experiment's runner plans) this
times, in this one process and taking turns: the solo loop (:func:`moelab.training.train`, one
model) and :func:`moelab.training.batched.train_batched` with N copies of it (N seeds), and prints
milliseconds per model-step and their ratio. Both include drawing the data; neither includes the
final test evaluation (the test set is tiny). One thread, as the runner uses.

``--against FILE`` instead compares two versions of the batched trainer on the batches ``moelab
reproduce`` trains (:func:`~moelab.experiments.schedule.plan_batches`, members built as the runner
builds them; ``--seeds`` per configuration, so 3 gives N = 18 for a Table 4 batch and 10 gives
N = 60): FILE is another version's ``batched.py`` (e.g. ``git show main:src/moelab/training/
batched.py > /tmp/old_batched.py``). The two take turns ``--repeats`` times; it prints the
median and the fastest milliseconds per member-step of each, the median of their per-turn ratios,
and whether every member's parameters, history and evaluations came out bit for bit the same.

``--floor`` times, on the same planned batches, the step's batched matmuls (every ``torch.bmm``
and ``torch.baddbmm`` of at least 1% of the step's matmul work) inside a training run and the same
products (same operands) each repeated in a plain loop, and prints their GFLOP/s, the whole
step's matmul work per second and, for scale, one (N, 256, 256) x (N, 256, 256) product's.

Usage: python benchmarks/batched_speed.py [--steps 300] [--sizes 1,3,12,48] [--json-out PATH]
       python benchmarks/batched_speed.py --against OLD_BATCHED_PY [--seeds 3,10] [--repeats 5]
       python benchmarks/batched_speed.py --floor [--seeds 3,10] [--steps 300]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
import time
import warnings

import torch

from moelab.experiments.config import apply_overrides
from moelab.experiments.execute import _prepare, constant_inputs
from moelab.experiments.registry import table3, table4
from moelab.experiments.schedule import plan_batches
from moelab.training import batched, train
from moelab.training.batched import Member, train_batched

#: The planned batches --against times: (experiment, the labels one of its runs has).
PLANNED = (
    ("table4", {"model": "2-3-MoE", "m": "128"}),
    ("table4", {"model": "1-6-MoE", "m": "128"}),
    ("table4", {"model": "2-3-MoE", "m": "16"}),
    ("table3", {"recipe": "best"}),
)


def _cases():
    t3 = table3().runs(seeds=1)
    t4 = table4().runs(seeds=1)
    yield "table3 D=16 paper", next(r for r in t3 if r.labels == {"D": "16", "recipe": "paper"})
    yield "table3 D=128 best", next(r for r in t3 if r.labels == {"D": "128", "recipe": "best"})
    for model in ("2-3-MoE", "1-6-MoE"):
        for m in ("16", "128"):
            yield f"table4 {model} m={m} best", next(
                r for r in t4 if r.labels == {"model": model, "m": m, "output": "vector",
                                              "recipe": "best"})


def _solo(run) -> float:
    built, model = _prepare(run)
    start = time.perf_counter()
    train(model, built.task, run.train, seed=run.seed, progress=False)
    return time.perf_counter() - start


def _batched(run, n: int) -> float:
    members = []
    for seed in range(n):
        r = apply_overrides(run, {"seed": seed})
        built, model = _prepare(r)
        members.append(Member(model, built.task, r.train, r.seed, stream=seed,
                              inputs=constant_inputs(built)))
    start = time.perf_counter()
    train_batched(members)
    return time.perf_counter() - start


def _planned_batch(name: str, labels: dict[str, str], seeds: int, steps: int) -> list:
    """The runs of the batch ``moelab run NAME --seeds SEEDS`` trains with a run of ``labels``,
    shortened to ``steps`` steps."""
    experiment = {"table3": table3, "table4": table4}[name]()
    batch = next(b for b in plan_batches(experiment.runs(seeds=seeds))
                 if all(b[0].labels[k] == v for k, v in labels.items()))
    return [apply_overrides(r, {"train.steps": steps, "train.test_size": 64}) for r in batch]


def _runner_members(runs) -> list[Member]:
    """The members :func:`moelab.experiments.execute.execute_batch` builds for ``runs``."""
    members = []
    for run in runs:
        built, model = _prepare(run)
        stream = json.dumps(run.to_dict()["task"], sort_keys=True, default=str) + f"/{run.seed}"
        members.append(Member(model, built.task, run.train, run.seed, stream=stream,
                              inputs=constant_inputs(built)))
    return members


def _load_other(path: str):
    spec = importlib.util.spec_from_file_location("other_batched", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _outcome(members, results) -> tuple:
    params = torch.cat([p.detach().flatten() for m in members for p in m.model.parameters()])
    return params, [(r.history, r.evals) for r in results]


def compare(path: str, seeds: list[int], steps: int, repeats: int) -> dict:
    """Time ``path``'s train_batched against this one on the planned batches, taking turns."""
    versions = {"other": _load_other(path), "this": batched}
    results = {}
    for name, labels in PLANNED:
        for n_seeds in seeds:
            runs = _planned_batch(name, labels, n_seeds, steps)
            times: dict[str, list[float]] = {v: [] for v in versions}
            outcomes = {}
            for _ in range(repeats):
                for version, module in versions.items():
                    members = _runner_members(runs)
                    start = time.perf_counter()
                    trained = module.train_batched(members)
                    times[version].append((time.perf_counter() - start) / steps / len(runs) * 1e3)
                    outcomes[version] = _outcome(members, trained)
            (p0, h0), (p1, h1) = outcomes.values()
            key = f"{name} {' '.join(f'{k}={v}' for k, v in labels.items())} N={len(runs)}"
            row = {f"{v}_{stat.__name__}_ms": stat(t) for v, t in times.items()
                   for stat in (statistics.median, min)}
            row["ratio"] = statistics.median(b / a for a, b in zip(*times.values(), strict=True))
            row["bit_identical"] = torch.equal(p0, p1) and h0 == h1
            results[key] = row
            print(f"{key:34s} other {row['other_median_ms']:.4f} (min {row['other_min_ms']:.4f})"
                  f"  this {row['this_median_ms']:.4f} (min {row['this_min_ms']:.4f}) ms per "
                  f"member-step  this/other {row['ratio']:.3f}  bit-identical "
                  f"{row['bit_identical']}", flush=True)
    return results


def _timed(fn, repeats: int = 100) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _step_matmuls(runs, steps: int) -> tuple[float, dict[tuple, list]]:
    """Seconds per step of training ``runs`` and, per distinct batched matmul (op, shapes,
    strides), [seconds, calls, flop per call, operands] over the run."""
    bmm, baddbmm = torch.bmm, torch.baddbmm
    calls: dict[tuple, list] = {}

    def timing(fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
        a, b = args[-2:]
        entry = calls.setdefault((fn.__name__, a.shape, b.shape, a.stride(), b.stride()),
                                 [0.0, 0, 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2],
                                  args])
        entry[0] += seconds
        entry[1] += 1
        return out

    train_batched(_runner_members(runs))  # warm-up
    members = _runner_members(runs)
    torch.bmm, torch.baddbmm = functools.partial(timing, bmm), functools.partial(timing, baddbmm)
    try:
        start = time.perf_counter()
        train_batched(members)
        return (time.perf_counter() - start) / steps, calls
    finally:
        torch.bmm, torch.baddbmm = bmm, baddbmm


def floor(seeds: list[int], steps: int) -> dict:
    """The step's matmuls inside training against the same products in a plain loop."""
    results = {}
    for name, labels in PLANNED:
        for n_seeds in seeds:
            runs = _planned_batch(name, labels, n_seeds, steps)
            step, calls = _step_matmuls(runs, steps)
            work = sum(n * flop for _, n, flop, _ in calls.values())
            big = {k: v for k, v in calls.items() if v[1] * v[2] >= 0.01 * work}
            flop = sum(n * f for _, n, f, _ in big.values()) / steps
            inside = sum(sec for sec, *_ in big.values()) / steps
            ops = {"bmm": torch.bmm, "baddbmm": torch.baddbmm}
            with torch.no_grad():
                plain = sum(_timed(functools.partial(ops[op], *args)) * n / steps
                            for (op, *_), (_, n, _, args) in big.items())
            square = torch.randn(len(runs), 256, 256)
            peak = 2 * len(runs) * 256**3 / _timed(functools.partial(torch.bmm, square, square), 10)
            key = f"{name} {' '.join(f'{k}={v}' for k, v in labels.items())} N={len(runs)}"
            row = {"mflop_per_member_step": flop / len(runs) / 1e6,
                   "step_ms": step * 1e3, "inside_ms": inside * 1e3, "plain_ms": plain * 1e3,
                   "inside_gflops": flop / inside / 1e9, "plain_gflops": flop / plain / 1e9,
                   "step_gflops": flop / step / 1e9, "square_256_gflops": peak / 1e9}
            results[key] = row
            print(f"{key:34s} {row['mflop_per_member_step']:.2f} MFLOP/member-step: matmuls "
                  f"inside {row['inside_ms']:.3f} ms/step ({row['inside_gflops']:.1f} GFLOP/s), "
                  f"plain loop {row['plain_ms']:.3f} ms ({row['plain_gflops']:.1f}), whole step "
                  f"{row['step_ms']:.3f} ms ({row['step_gflops']:.1f}); (N,256,256)^2 "
                  f"{row['square_256_gflops']:.1f} GFLOP/s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sizes", default="1,3,12,48")
    parser.add_argument("--against", metavar="FILE",
                        help="another version's batched.py to compare with on planned batches")
    parser.add_argument("--seeds", default="3,10",
                        help="with --against or --floor: seeds per configuration")
    parser.add_argument("--repeats", type=int, default=5, help="with --against: turns each")
    parser.add_argument("--floor", action="store_true",
                        help="the step's matmuls inside training against a plain loop of them")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if args.against or args.floor:
        seeds = [int(s) for s in args.seeds.split(",")]
        results = (compare(args.against, seeds, args.steps, args.repeats) if args.against
                   else floor(seeds, args.steps))
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(results, f, indent=1)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for name, run in _cases():
        run = apply_overrides(run, {"train.steps": args.steps, "train.test_size": 64})
        solo = _solo(run) / args.steps * 1e3
        row = {"solo_ms": solo}
        for n in sizes:
            per = _batched(run, n) / args.steps / n * 1e3
            row[f"N={n}_ms"] = per
            row[f"N={n}_ratio"] = per / solo
        results[name] = row
        cells = "  ".join(f"N={n}: {row[f'N={n}_ms']:.3f} ({row[f'N={n}_ratio']:.2f}x)"
                          for n in sizes)
        print(f"{name:28s} solo {solo:.3f} ms  {cells}", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    print(json.dumps({k: {n: round(v, 4) for n, v in row.items()} for k, row in results.items()}))


if __name__ == "__main__":
    main()
