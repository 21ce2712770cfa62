"""Checkpoints written by earlier checkpoint formats still load, bit-exactly.

Version 1 (moelab 0.1): flat MoEConfig names and the old expert tensor names. Version 2: each
model's constructor arguments.
"""

from pathlib import Path

import pytest
import safetensors.torch
import torch

from moelab.checkpoints import load_checkpoint, load_into, load_state, read_config
from moelab.layers import DeepMoE, DeepMoEConfig, DenseMLPConfig, MoEConfig

DATA = Path(__file__).parent / "data"
FIXTURES = {
    1: ["v1_moe_layer", "v1_gated_layer", "v1_deep_per_layer", "v1_dense_mlp"],
    2: ["v2_moe_layer", "v2_deep_per_layer", "v2_deep_alternating", "v2_dense_mlp"],
}


@pytest.mark.parametrize(("version", "name"),
                         [(v, name) for v, names in FIXTURES.items() for name in names])
def test_old_checkpoint_loads_bit_exactly(version, name):
    assert read_config(DATA / name).format_version == version
    model = load_checkpoint(DATA / name)
    expected = safetensors.torch.load_file(DATA / f"v{version}_outputs.safetensors")
    with torch.no_grad():
        y = model(expected["x"])
    assert torch.equal(y, expected[name])
    stored = safetensors.torch.load_file(DATA / name / "model.safetensors")
    assert sum(t.numel() for t in model.state_dict().values()) == sum(
        t.numel() for t in stored.values())


def test_version_2_files_of_config_classes_read_as_their_config():
    config = read_config(DATA / "v2_deep_alternating")
    assert config.arguments == {}
    assert config.model_config == DeepMoEConfig(widths=(3, 4, 4, 2), moe=MoEConfig(num_experts=2),
                                                moe_every=2)
    dense = read_config(DATA / "v2_dense_mlp").model_config
    assert dense == DenseMLPConfig(d_in=3, d_out=2, hidden=6, depth=3, activation="gelu",
                                   bias=False, check_finite=False)
    target = DeepMoE([3, 4, 4, 2], MoEConfig(num_experts=2), moe_every=2)
    load_into(target, DATA / "v2_deep_alternating")  # today's model matches the old description
    _, state = load_state(DATA / "v2_deep_alternating")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())
