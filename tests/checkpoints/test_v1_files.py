"""Checkpoints written by moelab's first checkpoint format (version 1) still load, bit-exactly."""

from pathlib import Path

import pytest
import safetensors.torch
import torch

from moelab.checkpoints import load_checkpoint, read_config

DATA = Path(__file__).parent / "data"
FIXTURES = ["v1_moe_layer", "v1_gated_layer", "v1_deep_per_layer", "v1_dense_mlp"]


@pytest.mark.parametrize("name", FIXTURES)
def test_version_1_checkpoint_loads_bit_exactly(name):
    assert read_config(DATA / name).format_version == 1
    model = load_checkpoint(DATA / name)
    expected = safetensors.torch.load_file(DATA / "v1_outputs.safetensors")
    with torch.no_grad():
        y = model(expected["x"])
    assert torch.equal(y, expected[name])
    stored = safetensors.torch.load_file(DATA / name / "model.safetensors")
    assert sum(t.numel() for t in model.state_dict().values()) == sum(
        t.numel() for t in stored.values())
