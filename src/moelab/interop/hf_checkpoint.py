"""Read one MoE layer straight from a directory of downloaded Hugging Face weights.

``from_hf_checkpoint(directory, layer_index)`` builds the moelab layer of one decoder layer's MoE
block from ``config.json`` and ``*.safetensors``, opening only that block's tensors with
``safetensors.safe_open``. Checkpoints store the experts one tensor per expert, unlike the fused
in-memory tensors of transformers 5.23: Mixtral
``model.layers.<i>.block_sparse_moe.experts.<e>.w1.weight`` (gate), ``w3`` (up), ``w2`` (down);
Qwen2/3-MoE, OLMoE and DeepSeek-V3 ``model.layers.<i>.mlp.experts.<e>.gate_proj.weight``,
``up_proj``, ``down_proj``; GPT-OSS (bf16) the fused ``mlp.experts.gate_up_proj`` etc.
``save_pretrained`` writes the same keys; files holding the fused in-memory names are read too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from moelab.interop.hf import SHARED_MAPS, Layout, build_layer, layout_of, moe_config
from moelab.interop.hf_capture import require_transformers
from moelab.layers import MoELayer


def is_moe_layer(config: Any, layer_index: int) -> bool:
    """Whether decoder layer ``layer_index`` of a ``config`` model has an MoE block (DeepSeek-V3's
    first ``first_k_dense_replace`` layers and Qwen2/3-MoE's ``mlp_only_layers`` are dense)."""
    mt = layout_of(config).model_type
    if mt == "deepseek_v3":
        return layer_index >= config.first_k_dense_replace
    if mt in ("qwen2_moe", "qwen3_moe"):
        return (layer_index not in (config.mlp_only_layers or [])
                and config.num_experts > 0 and (layer_index + 1) % config.decoder_sparse_step == 0)
    return True


def from_hf_checkpoint(directory: str | Path, layer_index: int, *,
                       dtype: torch.dtype | None = None) -> MoELayer:
    """The MoE block of decoder layer ``layer_index`` of a downloaded checkpoint, as an
    :class:`~moelab.layers.MoELayer` (eval mode), reading only that block's tensors.

    ``directory`` holds ``config.json`` and ``*.safetensors`` (with
    ``model.safetensors.index.json`` when sharded), as written by ``save_pretrained`` or
    downloaded from the hub: per-expert keys (``model.layers.<i>.block_sparse_moe.experts.<e>.w1.
    weight`` for Mixtral, ``model.layers.<i>.mlp.experts.<e>.gate_proj.weight`` for the others)
    or the fused in-memory names (GPT-OSS, or files written by other tools). ``dtype`` casts the
    tensors (None: the checkpoint's own). Quantised checkpoints (FP8, MXFP4) raise ValueError.
    """
    directory = Path(directory).expanduser()
    if not (directory / "config.json").is_file():
        raise ValueError(f"directory={str(directory)!r} has no config.json; expected a directory "
                         "of downloaded weights (config.json and *.safetensors)")
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "?")
        raise ValueError(f"{directory}/config.json: quantization_config (quant_method={method!r}) "
                         "is not supported: convert dequantised weights (bf16/fp32)")
    transformers = require_transformers()
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    family = layout_of(config)
    if isinstance(layer_index, bool) or not isinstance(layer_index, int) or not (
            0 <= layer_index < config.num_hidden_layers):
        raise ValueError(f"layer_index must be an int in [0, {config.num_hidden_layers}) "
                         f"(num_hidden_layers), got {layer_index!r}")
    if not is_moe_layer(config, layer_index):
        raise ValueError(f"layer_index={layer_index} is a dense layer of this {family.model_type} "
                         f"model; its MoE layers are "
                         f"{[i for i in range(config.num_hidden_layers) if is_moe_layer(config, i)]}")
    reader = _TensorReader(directory)
    hf_state = _read_block(family, config, reader, f"model.layers.{layer_index}.")
    if dtype is not None:
        hf_state = {k: v.to(dtype) for k, v in hf_state.items()}
    where = {"directory": str(directory), "layer_index": layer_index}
    return build_layer(family, config, hf_state, where=where).eval()


class _TensorReader:
    """Reads single tensors by key from the safetensors files of a directory (headers only until a
    tensor is asked for)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {k: directory / f for k, f in weight_map.items()}
        else:
            paths = sorted(directory.glob("*.safetensors"))
            if not paths:
                raise ValueError(f"directory={str(directory)!r} has no *.safetensors weights")
            self.files = {}
            for path in paths:
                with safe_open(path, framework="pt") as f:
                    self.files.update(dict.fromkeys(f.keys(), path))

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def get(self, key: str) -> Tensor:
        if key not in self.files:
            raise ValueError(f"{self.directory}: no tensor {key!r} in the safetensors files")
        with safe_open(self.files[key], framework="pt") as f:
            return f.get_tensor(key)


def _read_block(family: Layout, config: Any, reader: _TensorReader, layer: str) -> dict[str, Tensor]:
    """The block's tensors under their in-memory (transformers 5.23) names."""
    prefix = f"{layer}{family.on_disk}."
    if f"{layer}mlp.{family.router}.weight" in reader:  # written with in-memory names
        prefix = f"{layer}mlp."
    quantised = [k for k in reader.files if k.startswith(prefix) and k.endswith(
        ("_blocks", "_scales", "weight_scale_inv"))]
    if quantised:
        raise ValueError(f"{reader.directory}: {quantised[0]!r} is a quantised tensor; convert "
                         "dequantised weights (bf16/fp32)")
    names = [f"{family.router}.weight"]
    if family.interleaved:
        names += [f"{family.router}.bias", "experts.gate_up_proj_bias", "experts.down_proj_bias"]
    if family.model_type == "deepseek_v3":
        names.append(f"{family.router}.e_score_correction_bias")
    if family.shared is not None and (family.model_type != "deepseek_v3"
                                      or config.n_shared_experts):
        names += [f"{family.shared}.{h}.weight" for _, h in SHARED_MAPS]
        if family.shared_gate is not None:
            names.append(f"{family.shared_gate}.weight")
    state = {name: reader.get(prefix + name) for name in names}
    if family.expert_keys is None or prefix + "experts.gate_up_proj" in reader:
        for name in ("experts.gate_up_proj", "experts.down_proj"):
            state[name] = reader.get(prefix + name)
        return state
    gate, up, down = family.expert_keys
    num_experts = moe_config(config, drop_jitter=True).num_experts

    def stacked(key: str) -> Tensor:
        return torch.stack([reader.get(f"{prefix}experts.{e}.{key}.weight")
                            for e in range(num_experts)])

    state["experts.gate_up_proj"] = torch.cat([stacked(gate), stacked(up)], dim=1)
    state["experts.down_proj"] = stacked(down)
    return state
