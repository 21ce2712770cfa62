"""A one-minute demo: train the paper's 1-4-MoE on the circle task (Experiment I) and report."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moelab.analysis import count_parameters
from moelab.experiments.build import build_task
from moelab.experiments.config import TaskSpec
from moelab.layers import ExpertConfig, MoEConfig, MoELayer, RouterConfig
from moelab.training import TrainConfig, TrainResult, train
from moelab.training.init import data_init


@dataclass(frozen=True)
class DemoResult:
    D: int
    steps: int
    test_mse: float
    test_sup: float
    parameters: int
    active_parameters: float
    tokens_per_expert: list[int]
    train: TrainResult


def circle_demo(
    *, D: int = 16, steps: int = 500, lr: float = 1e-2, seed: int = 0, progress: bool = True
) -> DemoResult:
    """Train a 1-4-MoE (one MoE layer, 4 two-layer ReLU experts of width 10, top-1) on
    f(x) = sin(5 x_1) + cos(3 x_2) on the unit circle in R^D (docs/paper.md Sec. 5, Experiment I), with
    moelab's best recipe: data-dependent initialisation, hard top-1 routing, 100 warm-up steps and a
    cosine-decayed learning rate from ``lr``; batch 128 of fresh samples per step.
    """
    sampler = build_task(TaskSpec(kind="manifold", manifold="circle", D=D, n_charts=4)).task

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer_config = MoEConfig(num_experts=4, router=RouterConfig(top_k=1, weighting="paper"),
                                 experts=ExpertConfig(hidden=10))
        model = MoELayer(D, 1, layer_config)
    gen = torch.Generator().manual_seed(seed + 12345)
    data_init(model, sampler(4096, gen)[0], generator=gen)
    config = TrainConfig(steps=steps, lr=lr, schedule="cosine", warmup_steps=min(100, steps // 5),
                         test_size=10_000)
    result = train(model, sampler, config, seed=seed, progress=progress, description="1-4-MoE")
    x_test, _ = sampler(4096, torch.Generator().manual_seed(seed + 7))
    with torch.no_grad():
        model.eval()
        load = model.run(x_test).routing.tokens_per_expert.tolist()
    counts = count_parameters(model)
    return DemoResult(D=D, steps=steps, test_mse=result.final.mse, test_sup=result.final.sup_error,
                      parameters=counts.total, active_parameters=counts.active,
                      tokens_per_expert=load, train=result)
