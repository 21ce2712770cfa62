"""Two short seeded training runs whose final weights and loss history are stored as references.

(a) a 1-layer MoE on the circle task (D=16, E=4, m=10, hard top-1 ``weighting="paper"``,
``data_init``); (b) a 2-layer MoE on the piecewise task (E=3, L=2). 300 steps each. The files in
``tests/training/data/`` were written by ``python tests/training/bit_identity.py --write`` before the
layers were refactored; ``test_bit_identity.py`` retrains and compares every bit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import safetensors.torch
import torch

from moelab.layers import DeepMoE, MoELayer
from moelab.tasks import build_manifold_task, build_piecewise_task
from moelab.training import TrainConfig, train
from moelab.training.init import data_init

DATA = Path(__file__).parent / "data"
STEPS = 300


def _moe_config(**kwargs):
    from moelab.layers import ExpertConfig, MoEConfig, RouterConfig  # noqa: F401  (new API)

    router = {k: kwargs.pop(k) for k in ("top_k", "weighting") if k in kwargs}
    experts = {"hidden": kwargs.pop("expert_hidden")}
    return MoEConfig(router=RouterConfig(**router), experts=ExpertConfig(**experts), **kwargs)


def circle_run() -> tuple[torch.nn.Module, list[dict[str, float]]]:
    task = build_manifold_task("circle", D=16, n_charts=4, seed=0)

    def sampler(n, gen):
        s = task.sample(n, generator=gen)
        return s.x, s.y

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MoELayer(16, 1, moe_config(num_experts=4, top_k=1, expert_hidden=10,
                                           weighting="paper", check_finite=False))
        gen = torch.Generator().manual_seed(12345)
        x_init, _ = sampler(4096, gen)
        data_init(model, x_init, generator=gen)
    result = train(model, sampler, TrainConfig(steps=STEPS, test_size=1000), seed=0, progress=False)
    return model, result.history + result.evals


def piecewise_run() -> tuple[torch.nn.Module, list[dict[str, float]]]:
    task = build_piecewise_task(E=3, L=2, output="vector", noise=0.0)

    def sampler(n, gen):
        s = task.sample(n, generator=gen)
        return s.x, s.y

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = DeepMoE([2, 4, task.out_dim], moe_config(num_experts=3, expert_hidden=32,
                                                         check_finite=False))
    config = TrainConfig(steps=STEPS, test_size=1000, lr=3e-3, aux_weights={"load_balance": 0.01})
    result = train(model, sampler, config, seed=1, progress=False)
    return model, result.history + result.evals


def moe_config(**kwargs):
    """The MoE config of these runs, in whichever spelling this moelab has."""
    try:
        return _moe_config(**dict(kwargs))
    except ImportError:  # the flat config of moelab before the nested one
        from moelab.layers import MoEConfig

        return MoEConfig(**kwargs)


RUNS = {"circle": circle_run, "piecewise": piecewise_run}


def canonical_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under the pre-refactor key names (experts.weights.k / experts.biases.k)."""
    try:
        from moelab.layers.experts import legacy_names
    except ImportError:  # moelab before the named expert parameters
        old_name = {}
    else:
        old_name = {new: old for old, new in legacy_names(model).items()}
    return {old_name.get(name, name): t.detach().clone() for name, t in model.state_dict().items()}


if __name__ == "__main__" and "--write" in sys.argv:
    torch.set_num_threads(1)
    DATA.mkdir(exist_ok=True)
    for name, run in RUNS.items():
        model, history = run()
        safetensors.torch.save_file(canonical_state(model), DATA / f"{name}_final.safetensors")
        (DATA / f"{name}_history.json").write_text(json.dumps(history, indent=1) + "\n")
        print(name, history[-1])
