"""Seeded training reproduces the references written before the layers were refactored, bit for bit."""

import json
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).parent))
import bit_identity  # noqa: E402


@pytest.mark.parametrize("name", sorted(bit_identity.RUNS))
def test_training_run_is_bit_identical_to_the_stored_reference(name):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, history = bit_identity.RUNS[name]()
    finally:
        torch.set_num_threads(before)
    reference = json.loads((bit_identity.DATA / f"{name}_history.json").read_text())
    assert history == reference  # every logged loss, aux loss and test metric, exactly
    weights = safetensors.torch.load_file(bit_identity.DATA / f"{name}_final.safetensors")
    state = bit_identity.canonical_state(model)
    assert sorted(state) == sorted(weights)
    for key, tensor in weights.items():
        assert torch.equal(state[key], tensor), key
