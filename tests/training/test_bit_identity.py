"""Seeded training reproduces the references written before the layers were refactored, bit for bit."""

import json
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).parent))
import bit_identity  # noqa: E402

from moelab.training.metrics import ROUTER_METRICS  # noqa: E402


@pytest.mark.parametrize("name", sorted(bit_identity.RUNS))
def test_training_run_is_bit_identical_to_the_stored_reference(name):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, history = bit_identity.RUNS[name]()
    finally:
        torch.set_num_threads(before)
    reference = json.loads((bit_identity.DATA / f"{name}_history.json").read_text())
    # The references predate the router metrics in the history rows: every value they hold (each
    # logged loss, aux loss and test metric) must be exactly the same, and the rows may only have
    # gained the router metrics (held to their formulas in test_metrics.py).
    assert [{k: row[k] for k in ref} for row, ref in zip(history, reference, strict=True)] == reference
    gained = {k.split("/", 1)[1] for row in history for k in row if "/" in k}
    assert gained == set(ROUTER_METRICS)
    assert all(set(row) - set(ref) == {k for k in row if "/" in k}
               for row, ref in zip(history, reference, strict=True))
    weights = safetensors.torch.load_file(bit_identity.DATA / f"{name}_final.safetensors")
    state = bit_identity.canonical_state(model)
    assert sorted(state) == sorted(weights)
    for key, tensor in weights.items():
        assert torch.equal(state[key], tensor), key
