"""Per-model cost of a training step: N runs stacked (moelab.training.batched) against one run.

For each model of Tables 3 and 4 (first run of each batch the experiment's runner plans) this
times, in this one process and taking turns: the solo loop (:func:`moelab.training.train`, one
model) and :func:`moelab.training.batched.train_batched` with N copies of it (N seeds), and prints
milliseconds per model-step and their ratio. Both include drawing the data; neither includes the
final test evaluation (the test set is tiny). One thread, as the runner uses.

Usage: python benchmarks/batched_speed.py [--steps 300] [--sizes 1,3,12,48] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from moelab.experiments.config import apply_overrides
from moelab.experiments.execute import _prepare, constant_inputs
from moelab.experiments.registry import table3, table4
from moelab.training import train
from moelab.training.batched import Member, train_batched


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sizes", default="1,3,12,48")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
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
