"""Wrote the version-2 checkpoint fixtures beside this file (run once, with moelab at format 2).

Version 2 stored each model's constructor arguments; these files keep that layout loadable.
"""
from pathlib import Path

import safetensors.torch
import torch

from moelab.checkpoints import save_checkpoint
from moelab.layers import DeepMoE, DenseMLP, ExpertConfig, MoEConfig, MoELayer, RouterConfig

out = Path("tests/checkpoints/data")
torch.set_num_threads(1)
torch.manual_seed(0)
models = {
    "v2_moe_layer": MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2, bias=False),
                                             experts=ExpertConfig(hidden=8))),
    "v2_deep_per_layer": DeepMoE([3, 5, 5, 2], [
        MoEConfig(num_experts=3, router=RouterConfig(scorer="mlp", hidden=6)),
        MoEConfig(num_experts=2, experts=ExpertConfig(hidden=7, depth=3, activation="tanh")),
        MoEConfig(num_experts=4, router=RouterConfig(top_k=2))], residual=True),
    "v2_deep_alternating": DeepMoE([3, 4, 4, 2], MoEConfig(num_experts=2), moe_every=2),
    "v2_dense_mlp": DenseMLP(3, 2, hidden=6, depth=3, activation="gelu", bias=False,
                             check_finite=False),
}
x = torch.randn(7, 3, generator=torch.Generator().manual_seed(5))
expected = {"x": x}
for name, model in models.items():
    save_checkpoint(model, out / name, metadata={"fixture": name})
    with torch.no_grad():
        expected[name] = model.eval()(x)
safetensors.torch.save_file(expected, out / "v2_outputs.safetensors")
