"""Crash safety: a save that fails part-way leaves the previous checkpoint loadable and unchanged.
Also the static guarantee that the checkpoint code never unpickles."""

import ast
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

import moelab.checkpoints
from moelab.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from moelab.layers import ExpertConfig, MoEConfig, MoELayer, RouterConfig


@pytest.fixture
def new_model():
    torch.manual_seed(1)
    return MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2),
                                    experts=ExpertConfig(hidden=8)))


def _assert_loads_as(directory, model):
    loaded = load_checkpoint(directory)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("crash", [OSError("No space left on device"), KeyboardInterrupt()])
def test_writer_crashing_half_way_leaves_the_previous_checkpoint(
    saved, small_layer, new_model, snapshot, monkeypatch, crash
):
    before = snapshot(saved)
    real_save_file = safetensors.torch.save_file
    written = []

    def save_half_then_crash(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        written.append(Path(filename))
        raise crash

    monkeypatch.setattr(safetensors.torch, "save_file", save_half_then_crash)
    with pytest.raises(type(crash)):
        save_checkpoint(new_model, saved)
    assert written and written[0].parent == saved and written[0].name.startswith(".")
    assert snapshot(saved) == before  # same files, same bytes, no temporary left behind
    _assert_loads_as(saved, small_layer)


@pytest.mark.parametrize("failing_call", [1, 2])
def test_config_write_or_rename_failing_leaves_the_previous_checkpoint(
    saved, small_layer, new_model, snapshot, monkeypatch, failing_call
):
    """Call 1 of os.fsync is the weights file's, call 2 the config's: both before any rename."""
    before = snapshot(saved)
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == failing_call:
            raise OSError("I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="I/O error"):
        save_checkpoint(new_model, saved)
    assert snapshot(saved) == before
    _assert_loads_as(saved, small_layer)


def test_first_rename_failing_leaves_the_previous_checkpoint(
    saved, small_layer, new_model, snapshot, monkeypatch
):
    before = snapshot(saved)

    def replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(new_model, saved)
    assert snapshot(saved) == before
    _assert_loads_as(saved, small_layer)


def test_crash_between_the_renames_never_loads_wrong_contents(
    saved, small_layer, new_model, monkeypatch
):
    """New weights beside the old config: the load is refused, not a mix of the two."""
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(new_model, saved)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(saved)
    save_checkpoint(new_model, saved)  # the next save repairs the directory
    _assert_loads_as(saved, new_model)
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]


def test_first_save_crashing_leaves_no_checkpoint(tmp_path, new_model, monkeypatch):
    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x10\x00")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(new_model, tmp_path / "ckpt")
    assert list((tmp_path / "ckpt").iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="missing file"):
        load_checkpoint(tmp_path / "ckpt")


def test_files_get_the_permissions_of_ordinary_files(saved):
    umask = os.umask(0)
    os.umask(umask)
    for path in saved.iterdir():
        assert (path.stat().st_mode & 0o777) == (0o666 & ~umask), path.name


# -- no unpickling, statically ---------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _calls_and_imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (("import", alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("import", node.module or "")
            yield from (("import", f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                yield ("attribute", ".".join([value.id, *reversed(parts)]))


def test_checkpoint_code_never_calls_torch_load_or_pickle():
    sources = sorted(Path(moelab.checkpoints.__file__).parent.glob("*.py"))
    assert len(sources) >= 2
    for path in sources:
        for kind, name in _calls_and_imports(path):
            root = name.split(".")[0]
            assert root not in UNSAFE_MODULES, f"{path.name}: {kind} {name}"
            assert not name.startswith(("torch.load", "torch.serialization", "numpy.load", "np.load")), \
                f"{path.name}: {kind} {name}"
        assert "torch.load(" not in path.read_text().replace("safetensors.torch.load(", "")
