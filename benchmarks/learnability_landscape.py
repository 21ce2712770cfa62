"""What stops training from finding the composition: the loss landscape around Thm 5.3's network.

Two measurements on Experiment II's target (Eq. (4), E = 3, L = 2, vector output), each trained
with the best recipe's optimiser (Adam, peak lr 3e-3 or ``--lr``, 100 warm-up steps, cosine decay):

* ``perturb``: the hand-built Thm 5.3 network (moelab.constructions, ``thm5.3``) with Gaussian
  noise of relative size sigma added to every parameter tensor (sigma times the tensor's RMS), then
  trained; does training stay at (or return to) the 9-path solution, and from how far?
* ``oracle``: a diagnostic that *uses the pieces* (it is not a training method): the 2-3-MoE of
  Table 4 with data-initialised experts and its two routers set by hand to the ideal stripes
  (layer 1 cuts x_1 at 1 and 2, layer 2 cuts its input's second channel, x_2 at initialisation,
  at 1 and 2), trained with the routers fixed (hard routing) or free (``--method``).

    python benchmarks/learnability_landscape.py perturb --m 32 --steps 3000 --out perturb.json
    python benchmarks/learnability_landscape.py oracle --m 128 --steps 5000 --out oracle.json
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from moelab.constructions import CONSTRUCTIONS
from moelab.experiments.build import build_model, build_task
from moelab.experiments.config import TaskSpec, apply_overrides
from moelab.experiments.measure import routing_summary
from moelab.experiments.registry import learnability
from moelab.training import TrainConfig, evaluate
from moelab.training.init import data_init
from moelab.training.loop import RouterGradientWarning
from moelab.training.method import MethodConfig
from moelab.training.recipes import fit

TASK = TaskSpec(kind="piecewise", E=3, L=2, output="vector")


def _config(steps: int, method: str, lr: float) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, schedule="cosine", warmup_steps=100,
                       test_size=10_000, method=MethodConfig(name=method))


def _measure(model, built, seed: int) -> dict:
    test = built.task(10_000, torch.Generator().manual_seed(seed + 1_000_003))
    routing = routing_summary(model, built, seed=seed)
    return {"test_mse": evaluate(model, *test).mse, "num_paths": routing["num_paths"],
            "pieces_separated": routing["pieces_separated"],
            "routing_purity": routing["routing_purity"]}


def _train(model, built, steps: int, method: str, seed: int, lr: float) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RouterGradientWarning)
        fit(lambda _r: model, built.task, _config(steps, method, lr), seed=seed)
    return _measure(model, built, seed)


def perturb(m: int, steps: int, sigmas: list[float], seeds: list[int], method: str,
            lr: float) -> list[dict]:
    built = build_task(TASK)
    rows = []
    for seed in seeds:
        for sigma in sigmas:
            model, _ = CONSTRUCTIONS["thm5.3"](E=3, L=2, m=m, seed=seed)
            model = model.float()
            gen = torch.Generator().manual_seed(seed + 777)
            with torch.no_grad():
                for p in model.parameters():
                    rms = p.square().mean().sqrt()
                    p.add_(sigma * rms * torch.randn(p.shape, generator=gen))
            before = _measure(model, built, seed)
            after = _train(model, built, steps, method, seed, lr)
            rows.append({"sigma": sigma, "seed": seed, "m": m, "method": method, "lr": lr,
                         "before": before, "after": after})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def oracle(m: int, steps: int, seeds: list[int], method: str, lr: float,
           scale: float = 20.0) -> list[dict]:
    built = build_task(TASK)
    base = next(r for r in learnability().runs(seeds=1)
                if r.labels == {"method": "plain", "model": "2-3-MoE", "m": str(m)})
    rows = []
    for seed in seeds:
        run = apply_overrides(base, {"seed": seed})
        torch.manual_seed(seed)
        model = build_model(run, built.task.d_in, built.task.d_out)
        gen = torch.Generator().manual_seed(seed + 12345)
        data_init(model, built.task(4096, gen)[0], generator=gen)
        centres = torch.tensor([0.5, 1.5, 2.5])
        with torch.no_grad():  # Voronoi cells of the centres along one channel: stripes
            for layer, channel in zip(model.moe_layers, (0, 1), strict=True):
                layer.router.scorer.weight.zero_()
                layer.router.scorer.weight[:, channel] = scale * centres
                layer.router.scorer.bias.copy_(-scale * centres.square() / 2)
        before = _measure(model, built, seed)
        after = _train(model, built, steps, method, seed, lr)
        rows.append({"seed": seed, "m": m, "method": method, "lr": lr, "before": before, "after": after})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("perturb", "oracle"))
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sigmas", default="0,0.01,0.03,0.1,0.3,1")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--method", default="plain", help="a training method (MethodConfig.name)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.study == "perturb":
        rows = perturb(args.m, args.steps, [float(s) for s in args.sigmas.split(",")], seeds,
                       args.method, args.lr)
    else:
        rows = oracle(args.m, args.steps, seeds, args.method, args.lr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
