"""A model's provenance record (``model.source``) survives a checkpoint; files without one are
written as before."""

import json

import pytest

from moelab.checkpoints import CheckpointError, load_checkpoint, read_config, save_checkpoint
from moelab.layers import MoEConfig, MoELayer


def test_source_is_saved_and_put_back(tmp_path):
    layer = MoELayer(4, 3, MoEConfig(num_experts=2))
    layer.source = {"kind": "huggingface", "family": "mixtral", "config": {"hidden_size": 4}}
    save_checkpoint(layer, tmp_path)
    assert read_config(tmp_path).source == layer.source
    assert load_checkpoint(tmp_path).source == layer.source


def test_no_source_no_key(tmp_path):
    save_checkpoint(MoELayer(4, 3, MoEConfig(num_experts=2)), tmp_path)
    assert "source" not in json.loads((tmp_path / "config.json").read_text())
    assert read_config(tmp_path).source is None
    assert not hasattr(load_checkpoint(tmp_path), "source")


def test_bad_source_is_named(tmp_path):
    layer = MoELayer(4, 3, MoEConfig(num_experts=2))
    layer.source = ["not", "an", "object"]
    with pytest.raises(TypeError, match="model.source must be a dict"):
        save_checkpoint(layer, tmp_path)
    del layer.source
    save_checkpoint(layer, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["source"] = 3
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="source must be a JSON object, got 3"):
        read_config(tmp_path)
