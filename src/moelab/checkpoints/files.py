"""Writing and reading checkpoint directories: ``model.safetensors`` + ``config.json``.

Loading never unpickles: the weights are parsed by safetensors from the bytes that were hashed, and
the model is rebuilt from the JSON description by calling its constructor. Every check runs before
any tensor reaches a model, and a failed load leaves the files untouched.

Writing is crash-safe (:func:`moelab.atomic.atomic_paths`): both files are first written in full to
temporary files in the checkpoint directory (flushed to disk), then renamed into place, weights first
and ``config.json`` last. A crash before the renames leaves the previous checkpoint as it was; a crash
between the two renames (a window of one system call) leaves new weights beside the old config, which
then fails its SHA-256 check: a checkpoint never loads with wrong contents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from moelab import __version__
from moelab.atomic import atomic_paths
from moelab.checkpoints.config import (
    DTYPES,
    FORMAT_VERSION,
    CheckpointConfig,
    CheckpointError,
    TensorSpec,
    describe,
    description_json,
    dtype_name,
    parse_config,
    rename_v1_tensors,
)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_checkpoint(
    model: nn.Module,
    directory: str | Path,
    *,
    state_dict: dict[str, Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` to ``directory`` (created if needed) and return the directory.

    Args:
        model: a :class:`~moelab.layers.MoELayer`, :class:`~moelab.layers.DeepMoE` or
            :class:`~moelab.layers.DenseMLP`; its config (an ``MoELayer``: its constructor
            arguments) goes to ``config.json``. A
            subclass (such as the expert-parallel layer) is saved as, and loads as, its base class.
        directory: the checkpoint directory; an existing checkpoint there is replaced only once
            the new one is completely written.
        state_dict: the tensors to save instead of ``model.state_dict()``, e.g. the full
            (unsharded) state of an expert-parallel model, whose own state dict holds only its
            shard. It must match a single-process model built from ``model``'s configuration.
        metadata: JSON-serialisable extra information (step, run config, ...) kept in
            ``config.json`` and returned by :func:`read_config`.

    A model's provenance record ``model.source`` (a JSON object, if the model has one: e.g. a
    layer converted from a Hugging Face block) is kept in ``config.json`` too, and
    :func:`load_checkpoint` puts it back.
    """
    class_name, description = describe(model)
    recipe = {"model_class": class_name, "arguments": description.get("arguments", {}),
              "model_config": description.get("config")}
    tensors = _contiguous_cpu(model.state_dict() if state_dict is None else state_dict)
    reference = CheckpointConfig(**recipe, tensors={}, weights_sha256="", weights_bytes=0,
                                 moelab_version=__version__)
    problem = _structure_mismatch(_specs(reference.build(device="meta").state_dict()), tensors,
                                  dtypes=False)
    if problem:
        source, hint = ("state_dict", "") if state_dict is not None else (
            "model.state_dict()", "; an expert-parallel model saves its full state dict: "
            "save_checkpoint(model, directory, state_dict=full_state_dict(model))")
        raise ValueError(f"{source} does not match a {class_name} built from the model's "
                         f"configuration: {problem}{hint}")
    metadata = _json_object("metadata", {} if metadata is None else metadata)
    source = getattr(model, "source", None)
    source = None if source is None else _json_object("model.source", source)

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"directory={str(directory)!r} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    # Both files are written and flushed before either replaces its predecessor; weights are renamed
    # first and config.json last (see the module docstring).
    with atomic_paths(directory / WEIGHTS_NAME, directory / CONFIG_NAME) as (weights_tmp, config_tmp):
        safetensors.torch.save_file(tensors, weights_tmp, metadata={"format": "pt"})
        # safetensors creates its file 0600; give it the permissions of a normally created file.
        os.chmod(weights_tmp, stat.S_IMODE(os.stat(config_tmp).st_mode))
        digest, size = _sha256(weights_tmp)
        config = CheckpointConfig(
            **recipe, tensors=_specs(tensors),
            weights_sha256=digest, weights_bytes=size, moelab_version=__version__,
            format_version=FORMAT_VERSION, metadata=metadata, source=source,
        )
        text = json.dumps(config.to_dict(), indent=2, allow_nan=False) + "\n"
        config_tmp.write_text(text, encoding="utf-8")
    return directory


def read_config(directory: str | Path) -> CheckpointConfig:
    """The checked ``config.json`` of a checkpoint (the weights file is not read)."""
    path = _checkpoint_file(directory, CONFIG_NAME)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text ({exc})") from None
    return parse_config(text, path)


def load_state(directory: str | Path) -> tuple[CheckpointConfig, dict[str, Tensor]]:
    """The checked config and the full state dict (CPU tensors, saved dtypes) of a checkpoint.

    For models that take the state in their own way, e.g. an expert-parallel model loading its
    slice of the experts. Checks, in order: both files exist; ``config.json`` parses; the weights
    file has the recorded size and SHA-256; it is a safetensors file holding exactly the tensors
    (names, dtypes, shapes) that ``config.json`` lists; those are the tensors of the model that
    ``config.json`` describes. Any failure is a :class:`CheckpointError`.
    """
    config = read_config(directory)
    path = _checkpoint_file(directory, WEIGHTS_NAME)
    data = path.read_bytes()
    if len(data) < config.weights_bytes:
        raise CheckpointError(f"{path}: truncated: {len(data)} bytes, {CONFIG_NAME} records "
                              f"{config.weights_bytes}")
    if len(data) > config.weights_bytes:
        raise CheckpointError(f"{path}: {len(data)} bytes, {CONFIG_NAME} records "
                              f"{config.weights_bytes}: the file was changed after saving")
    digest = hashlib.sha256(data).hexdigest()
    if digest != config.weights_sha256:
        raise CheckpointError(f"{path}: SHA-256 mismatch: the file hashes to {digest}, {CONFIG_NAME} "
                              f"records {config.weights_sha256}; the file was changed or corrupted "
                              "after saving")
    try:
        state = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    problem = _structure_mismatch(config.tensors, state, dtypes=True)
    if problem:
        raise CheckpointError(f"{path} does not match the tensors listed in {CONFIG_NAME}: {problem}")
    try:
        reference = config.build(device="meta")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.parent / CONFIG_NAME}: {config.model_class} rejects the saved "
                              f"arguments: {exc}") from None
    renames = rename_v1_tensors(config, reference)
    if renames:  # a version-1 file: today's names for the expert tensors
        state = {renames.get(k, k): v for k, v in state.items()}
        config = dataclasses.replace(
            config, tensors={renames.get(k, k): v for k, v in config.tensors.items()})
    problem = _structure_mismatch(_specs(reference.state_dict()), state, dtypes=False)
    if problem:
        raise CheckpointError(f"{path.parent / CONFIG_NAME} does not match {path}: the "
                              f"{config.model_class} it describes differs from the weights: {problem}")
    # Own the memory (the parsed tensors view the bytes read above) and keep state-dict order.
    return config, {name: state[name].clone() for name in config.tensors}


def load_checkpoint(directory: str | Path) -> nn.Module:
    """Rebuild the saved model with its saved tensors (bit-exact, dtypes kept), in eval mode, with
    its provenance record (``model.source``) if it was saved with one."""
    config, state = load_state(directory)
    model = config.build(device="meta")  # no random init: every tensor comes from the file
    model.load_state_dict(state, strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{config.model_class} has tensors outside its state dict: {left}")
    if config.source is not None:
        model.source = config.source
    return model.eval()


def load_into(model: nn.Module, directory: str | Path) -> CheckpointConfig:
    """Copy a checkpoint's tensors into ``model`` in place (its device kept); return the config.

    ``model`` must be of the saved class with the saved configuration and dtypes;
    otherwise a :class:`CheckpointError` names the first difference and ``model`` is unchanged.
    """
    config, state = load_state(directory)
    class_name, description = describe(model)
    where = Path(directory) / CONFIG_NAME
    if class_name != config.model_class:
        raise CheckpointError(f"{where}: the checkpoint holds a {config.model_class}, the model is "
                              f"a {class_name}")
    difference = _first_difference(description_json(config.description()),
                                   description_json(description))
    if difference:
        raise CheckpointError(f"{where}: the model was built with another configuration: "
                              f"{difference}")
    problem = _structure_mismatch(_specs(model.state_dict()), state, dtypes=True)
    if problem:
        raise CheckpointError(f"{where}: the model's tensors differ from the checkpoint's: {problem}")
    model.load_state_dict(state, strict=True)
    return config


# -- helpers ---------------------------------------------------------------------------------------

def _checkpoint_file(directory: str | Path, name: str) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise CheckpointError(f"{directory}: checkpoint directory {what}")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file ({name} is part of every checkpoint)")
    return path


def _contiguous_cpu(state: dict[str, Any]) -> dict[str, Tensor]:
    """Each tensor detached, on the CPU, contiguous and with its own storage (safetensors refuses
    tensors that share memory, as views into one flat buffer do)."""
    out = {}
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state_dict[{name!r}] must be a tensor, got {type(value).__name__}")
        if value.dtype not in DTYPES.values():
            raise TypeError(f"state_dict[{name!r}] has dtype {value.dtype}; checkpoints hold "
                            f"{sorted(DTYPES)}")
        out[name] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return out


def _specs(state: dict[str, Tensor]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(t.dtype, tuple(t.shape)) for name, t in state.items()}


def _structure_mismatch(expected: dict[str, TensorSpec], state: dict[str, Tensor], *,
                        dtypes: bool) -> str | None:
    """The first tensor (in ``expected``'s order) missing from ``state`` or of another shape (or
    dtype, if asked), then the first unexpected one; None if they match."""
    for name, spec in expected.items():
        if name not in state:
            return f"tensor {name!r} is missing"
        shape = tuple(state[name].shape)
        if shape != spec.shape:
            return f"tensor {name!r} has shape {shape}, expected {spec.shape}"
        if dtypes and state[name].dtype != spec.dtype:
            return (f"tensor {name!r} has dtype {dtype_name(state[name].dtype)}, "
                    f"expected {dtype_name(spec.dtype)}")
    extra = [name for name in state if name not in expected]
    if extra:
        return f"unexpected tensor {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if extra[1:] else "")
    return None


def _first_difference(a: Any, b: Any, path: str = "model") -> str | None:
    """Where two JSON values first differ: "path: checkpoint <a>, model <b>"."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                mine, theirs = a.get(key, "<absent>"), b.get(key, "<absent>")
                return f"{path}.{key}: checkpoint {mine!r}, model {theirs!r}"
            found = _first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if a != b or type(a) is not type(b):
        return f"{path}: checkpoint {a!r}, model {b!r}"
    return None


def _json_object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be JSON-serialisable (no NaN/Inf): {exc}") from None




def _sha256(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file's bytes."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size

