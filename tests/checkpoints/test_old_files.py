"""Checkpoints written by earlier checkpoint formats still load, bit-exactly.

Version 1 (moelab 0.1): flat MoEConfig names and the old expert tensor names. Version 2: each
model's constructor arguments.
"""

from pathlib import Path

import pytest
import safetensors.torch
import torch

from moelab.checkpoints import load_checkpoint, read_config

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
