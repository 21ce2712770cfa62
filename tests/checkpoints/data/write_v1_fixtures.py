"""Wrote the version-1 checkpoint fixtures beside this file (run once, with moelab before format 2)."""
from pathlib import Path

import safetensors.torch
import torch

from moelab.checkpoints import save_checkpoint
from moelab.layers import DeepMoE, DenseMLP, MoEConfig, MoELayer

out = Path("tests/checkpoints/data")
torch.set_num_threads(1)
torch.manual_seed(0)
models = {
    "v1_moe_layer": MoELayer(3, 2, MoEConfig(num_experts=4, top_k=2, expert_hidden=8, router_bias=False,
                                             weighting="paper", capacity_factor=1.5)),
    "v1_gated_layer": MoELayer(3, 2, MoEConfig(num_experts=3, gated=True, activation="silu",
                                               expert_bias=False, shared_experts=1, expert_hidden=4)),
    "v1_deep_per_layer": DeepMoE([3, 5, 5, 2], [
        MoEConfig(num_experts=3, router="mlp", router_hidden=6, latent_dim=2, latent_decoder=True),
        MoEConfig(num_experts=2, expert_hidden=7, expert_depth=3, activation="tanh"),
        MoEConfig(num_experts=4, top_k=2, balance_bias=True, check_finite=False)], residual=True),
    "v1_dense_mlp": DenseMLP(3, 2, hidden=6, depth=3, activation="gelu", bias=False),
}
x = torch.randn(7, 3, generator=torch.Generator().manual_seed(5))
expected = {"x": x}
for name, model in models.items():
    if name == "v1_deep_per_layer":
        with torch.no_grad():
            model.layers[2].router.expert_bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
    save_checkpoint(model, out / name, metadata={"fixture": name})
    with torch.no_grad():
        expected[name] = model.eval()(x)
safetensors.torch.save_file(expected, out / "v1_outputs.safetensors")
