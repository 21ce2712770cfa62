"""Every broken checkpoint is a CheckpointError naming the file and the fault; loading writes nothing."""

import hashlib
import json
import re

import pytest
import safetensors.torch
import torch

from moelab.checkpoints import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    load_checkpoint,
    load_into,
    load_state,
    save_checkpoint,
)
from moelab.layers import DeepMoE, ExpertConfig, MoEConfig, MoELayer, RouterConfig


def _edit_config(directory, change):
    path = directory / CONFIG_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set_weights(directory, data: bytes, *, rehash: bool):
    (directory / WEIGHTS_NAME).write_bytes(data)
    if rehash:  # a config that vouches for these bytes, so the later checks are reached
        def change(cfg):
            cfg["weights"]["bytes"] = len(data)
            cfg["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
        _edit_config(directory, change)


@pytest.fixture
def expect_failure(snapshot):
    """Check that each loader fails with ``message`` naming ``file_name`` in ``directory`` and that
    the files on disk are unchanged."""
    def check(directory, file_name, message):
        before = snapshot(directory) if directory.is_dir() else None
        target = MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2),
                                          experts=ExpertConfig(hidden=8)))
        for load in (load_checkpoint, load_state, lambda d: load_into(target, d)):
            with pytest.raises(CheckpointError, match=message) as info:
                load(directory)
            assert str(directory / file_name) in str(info.value)
            assert isinstance(info.value, ValueError)
        assert (snapshot(directory) if directory.is_dir() else None) == before
    return check


def test_missing_directory(tmp_path, expect_failure):
    expect_failure(tmp_path / "nowhere", "", "checkpoint directory does not exist")


def test_directory_is_a_file(tmp_path, expect_failure):
    (tmp_path / "file").write_text("x")
    expect_failure(tmp_path / "file", "", "checkpoint directory is not a directory")


@pytest.mark.parametrize("name", [CONFIG_NAME, WEIGHTS_NAME])
def test_missing_file(saved, name, expect_failure):
    (saved / name).unlink()
    expect_failure(saved, name, f"missing file \\({re.escape(name)} is part of every checkpoint\\)")


def test_truncated_weights(saved, expect_failure):
    data = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    expect_failure(saved, WEIGHTS_NAME, f"truncated: {len(data) // 2} bytes, config.json records {len(data)}")


def test_appended_bytes(saved, expect_failure):
    data = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(data + b"\0")
    expect_failure(saved, WEIGHTS_NAME, "the file was changed after saving")


@pytest.mark.parametrize("where", ["header", "last tensor byte"])
def test_flipped_byte(saved, where, expect_failure):
    data = bytearray((saved / WEIGHTS_NAME).read_bytes())
    i = 20 if where == "header" else len(data) - 1
    data[i] ^= 0x01
    (saved / WEIGHTS_NAME).write_bytes(bytes(data))
    expect_failure(saved, WEIGHTS_NAME, "SHA-256 mismatch: the file hashes to [0-9a-f]{64}")


def test_hash_in_config_does_not_match(saved, expect_failure):
    _edit_config(saved, lambda cfg: cfg["weights"].update(sha256="0" * 64))
    expect_failure(saved, WEIGHTS_NAME, f"config.json records {'0' * 64}; the file was changed")


def test_weights_file_is_not_safetensors(saved, expect_failure):
    _set_weights(saved, b"PK\x03\x04 this is a zip archive, not safetensors" * 4, rehash=True)
    expect_failure(saved, WEIGHTS_NAME, "not a safetensors file")


def test_bad_json(saved, expect_failure):
    (saved / CONFIG_NAME).write_text('{"format": "moelab-checkpoint", ')
    expect_failure(saved, CONFIG_NAME, "not valid JSON")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(extra=1), r"unknown key\(s\) \['extra'\] in the top level"),
        (lambda c: c["weights"].update(file="x"), r"unknown key\(s\) \['file'\] in weights"),
        (lambda c: c["model"]["arguments"]["config"].update(num_expert=4),
         r"unknown MoEConfig field\(s\) \['num_expert'\] in model\.arguments\.config"),
        (lambda c: c.pop("metadata"), r"missing key\(s\) \['metadata'\]"),
        (lambda c: c["model"].update({"class": "Transformer"}),
         "unknown model class 'Transformer'; this moelab rebuilds"),
        (lambda c: c.update(format_version=FORMAT_VERSION + 1),
         f"format_version {FORMAT_VERSION + 1} is newer than this moelab reads"),
        (lambda c: c.update(format="something-else"), "not a moelab checkpoint config"),
        (lambda c: c["model"]["arguments"].update(d_in="3"),
         "model.arguments.d_in must be int, got '3'"),
        (lambda c: c["model"]["arguments"]["config"]["experts"].update(gated="yes"),
         "model.arguments.config.experts.gated must be bool"),
        (lambda c: c["model"]["arguments"]["config"]["router"].update(top_k=9),
         "model.arguments.config is not a valid MoEConfig: top_k=9 must be <= num_experts=4"),
        (lambda c: c["weights"]["tensors"]["router.scorer.bias"].update(dtype="complex128"),
         r"weights\.tensors\['router\.scorer\.bias'\]\.dtype 'complex128' is not one of"),
    ],
)
def test_config_with_bad_content(saved, change, message, expect_failure):
    _edit_config(saved, change)
    expect_failure(saved, CONFIG_NAME, message)


def test_duplicate_key_in_json(saved, expect_failure):
    text = (saved / CONFIG_NAME).read_text()
    once = f'"format_version": {FORMAT_VERSION},'
    (saved / CONFIG_NAME).write_text(text.replace(once, once + " " + once))
    expect_failure(saved, CONFIG_NAME, "duplicate key 'format_version'")


def test_config_for_a_different_width(saved, expect_failure):
    _edit_config(saved, lambda c: c["model"]["arguments"].update(d_in=4))
    expect_failure(saved, CONFIG_NAME, r"differs from the weights: tensor 'router\.scorer\.weight' "
                                        r"has shape \(4, 3\), expected \(4, 4\)")


def test_config_for_a_model_without_a_tensor(saved, expect_failure):
    _edit_config(saved, lambda c: c["model"]["arguments"]["config"]["router"].update(bias=False))
    expect_failure(saved, CONFIG_NAME, r"differs from the weights: unexpected tensor 'router\.scorer\.bias'")


def test_arguments_the_model_rejects(saved, expect_failure):
    _edit_config(saved, lambda c: c["model"]["arguments"].update(d_out=0))
    expect_failure(saved, CONFIG_NAME, "MoELayer rejects the saved arguments: d_out must be >= 1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t["experts.weight1"].update(dtype="float64"),
         r"tensor 'experts\.weight1' has dtype float32, expected float64"),
        (lambda t: t["experts.weight1"].update(shape=[4, 16, 3]),
         r"tensor 'experts\.weight1' has shape \(4, 3, 8\), expected \(4, 16, 3\)"),
        (lambda t: t.pop("experts.bias2"), r"unexpected tensor 'experts\.bias2'"),
        (lambda t: t.update({"experts.weight9": {"dtype": "float32", "shape": [1]}}),
         r"tensor 'experts\.weight9' is missing"),
    ],
)
def test_weights_that_do_not_match_the_tensor_list(saved, change, message, expect_failure):
    _edit_config(saved, lambda c: change(c["weights"]["tensors"]))
    expect_failure(saved, WEIGHTS_NAME, "does not match the tensors listed in config.json: " + message)


def test_weights_of_another_model_with_a_matching_hash(saved, tmp_path, expect_failure):
    """A safetensors file of the wrong model, even with a config that vouches for its bytes."""
    other = MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2),
                                     experts=ExpertConfig(hidden=8))).double()
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file(other.state_dict(), path)
    _set_weights(saved, path.read_bytes(), rehash=True)
    expect_failure(saved, WEIGHTS_NAME,
                   r"tensor 'router\.scorer\.weight' has dtype float64, expected float32")


def test_loading_never_unpickles(saved, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during a checkpoint load")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads")]:
        monkeypatch.setattr(module, name, refuse)
    assert isinstance(load_checkpoint(saved), MoELayer)


def test_a_stored_model_config_is_checked_on_reading(tmp_path, expect_failure):
    directory = save_checkpoint(DeepMoE([3, 4, 2]), tmp_path / "deep")
    _edit_config(directory, lambda c: c["model"]["config"].update(widths=[3, 0, 2]))
    expect_failure(directory, CONFIG_NAME,
                   r"model\.config is not a valid DeepMoEConfig: widths\[1\] must be >= 1, got 0")
    _edit_config(directory, lambda c: c["model"].update(arguments={"widths": [3, 4, 2]}))
    expect_failure(directory, CONFIG_NAME, r"unknown key\(s\) \['arguments'\] in model")
