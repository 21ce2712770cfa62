"""Two-way conversion between Hugging Face MoE blocks and moelab :class:`~moelab.layers.MoELayer`.

``from_hf(block)`` gives an ``MoELayer`` that computes the same function as the sparse MoE block
of a transformers 5.23 model (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, GPT-OSS): the
same outputs, the same selected experts and the same gradients. ``to_hf(layer, config)`` builds the
block back, bit for bit. (:mod:`moelab.interop.hf_checkpoint` reads one MoE layer straight from a
directory of downloaded weights.)

Three things differ between the two sides, and this module is where they meet:

* **Layout.** transformers keeps an expert bank in fused tensors: ``gate_up_proj`` (E, 2H, D) with
  the gate rows first and ``down_proj`` (E, D, H), applied as ``F.linear`` (x @ W^T); GPT-OSS keeps
  them transposed, (E, D, 2H) and (E, H, D), with gate and up *interleaved* (columns 0, 2, 4, ...
  are the gate) and biases. moelab keeps one (E, in, out) tensor per map: ``weight_gate``,
  ``weight_value`` (the up projection), ``weight_down``. Checkpoints on disk store yet another
  layout, one tensor per expert (see :mod:`moelab.interop.hf_checkpoint`).
* **Semantics.** Each family's router rule is a :class:`~moelab.layers.RouterConfig` setting; the
  table :func:`moe_config` builds is in docs/hf.md. A setting moelab cannot express raises an
  error naming it.
* **Provenance.** A converted layer carries ``layer.source``: the family, the block class and the
  HF config (``to_dict``). moelab checkpoints keep it, so ``to_hf(load_checkpoint(dir))`` needs no
  config.

Shape legend: E experts, D hidden size, H expert width, K experts per token.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from moelab.interop.hf_capture import FAMILIES, require_transformers
from moelab.layers import MoELayer
from moelab.layers.config import ExpertConfig, MoEConfig, RouterConfig

#: ``source["kind"]`` of a layer converted from a Hugging Face block.
SOURCE_KIND = "huggingface"


@dataclass(frozen=True)
class Layout:
    """How one transformers family lays out its MoE block's tensors, in memory and on disk (the
    block's class and router are :data:`~moelab.interop.hf_capture.FAMILIES`')."""

    model_type: str
    on_disk: str  # the block's name in checkpoint keys (model.layers.<i>.<on_disk>.)
    expert_keys: tuple[str, str, str] | None  # per-expert (gate, up, down) on disk; None: fused
    shared: str | None = None  # the block's shared-expert MLP
    shared_gate: str | None = None  # the block's sigmoid gate of the shared expert
    interleaved: bool = False  # GPT-OSS: transposed, interleaved gate/up, biases

    @property
    def module(self) -> str:  # transformers.models.<module>.modeling_<module>
        return FAMILIES[self.model_type].module

    @property
    def block(self) -> str:  # the MoE block's class name
        return FAMILIES[self.model_type].block

    @property
    def router(self) -> str:  # the block's attribute holding the router
        return FAMILIES[self.model_type].router


_PER_EXPERT = ("gate_proj", "up_proj", "down_proj")
LAYOUTS: dict[str, Layout] = {f.model_type: f for f in (
    Layout("mixtral", "block_sparse_moe", ("w1", "w3", "w2")),
    Layout("qwen2_moe", "mlp", _PER_EXPERT, shared="shared_expert",
           shared_gate="shared_expert_gate"),
    Layout("qwen3_moe", "mlp", _PER_EXPERT),
    Layout("olmoe", "mlp", _PER_EXPERT),
    Layout("deepseek_v3", "mlp", _PER_EXPERT, shared="shared_experts"),
    Layout("gpt_oss", "mlp", None, interleaved=True),
)}
_BY_BLOCK = {f.block: f for f in LAYOUTS.values()}

#: transformers' ``hidden_act`` names that moelab's activations compute exactly.
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "relu": "relu", "tanh": "tanh",
                "sigmoid": "sigmoid"}


# -- the configuration ------------------------------------------------------------------------------

def layout_of(config: Any) -> Layout:
    """The :class:`Layout` of a transformers config's family, from its ``model_type``."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise ValueError(f"model_type={model_type!r} has no moelab conversion; expected one of "
                         f"{sorted(LAYOUTS)}")
    return LAYOUTS[model_type]


def moe_config(config: Any, *, drop_jitter: bool = False) -> MoEConfig:
    """The :class:`~moelab.layers.MoEConfig` of the MoE blocks of a transformers ``config``.

    Raises ValueError naming any setting the moelab layer cannot express (e.g. Mixtral's
    ``router_jitter_noise`` > 0, which scales the experts' input too; ``drop_jitter=True``
    converts without it, for evaluation).
    """
    family = layout_of(config)
    mt = family.model_type
    act = getattr(config, "hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"{mt}: hidden_act={act!r} has no exact moelab activation; expected one "
                         f"of {sorted(_ACTIVATIONS)}")
    router: dict[str, Any] = dict(top_k=config.num_experts_per_tok, bias=False)
    experts: dict[str, Any] = dict(depth=2, gated=True, bias=False,
                                   activation=_ACTIVATIONS[act])
    layer: dict[str, Any] = {}
    if mt == "mixtral":
        _check_mixtral_jitter(config, drop_jitter)
        num_experts, hidden = config.num_local_experts, config.intermediate_size
        router.update(weighting="softmax_renorm", float32=True)
    elif mt in ("qwen2_moe", "qwen3_moe", "olmoe"):
        num_experts = config.num_experts
        hidden = config.moe_intermediate_size if mt != "olmoe" else config.intermediate_size
        renorm = bool(config.norm_topk_prob)
        router.update(weighting="softmax_renorm" if renorm else "switch", float32=True)
        if mt == "qwen2_moe":
            layer.update(shared_experts=1, shared_hidden=config.shared_expert_intermediate_size,
                         shared_gated=True, shared_gate=True)
    elif mt == "deepseek_v3":
        num_experts, hidden = config.n_routed_experts, config.moe_intermediate_size
        router.update(_deepseek_v3_router(config, num_experts, router["top_k"]))
        if config.n_shared_experts:
            layer.update(shared_experts=config.n_shared_experts,
                         shared_hidden=config.n_shared_experts * hidden, shared_gated=True)
    else:  # gpt_oss
        num_experts, hidden = config.num_local_experts, config.intermediate_size
        router.update(weighting="paper", bias=True)
        experts.update(bias=True, gated_form="clamped", clamp_limit=float(config.swiglu_limit),
                       glu_alpha=float(config.swiglu_alpha))
    experts["hidden"] = hidden
    return MoEConfig(num_experts=num_experts, router=RouterConfig(**router),
                     experts=ExpertConfig(**experts), **layer)


def _check_mixtral_jitter(config: Any, drop_jitter: bool) -> None:
    """A ValueError for Mixtral's router jitter, which moelab applies differently, unless dropped."""
    jitter = getattr(config, "router_jitter_noise", 0.0) or 0.0
    if jitter > 0 and not drop_jitter:
        raise ValueError(
            f"mixtral: router_jitter_noise={jitter} is not supported: in training mode "
            "Mixtral scales the input of the router *and the experts* by the noise, and the "
            "moelab layer jitters the router's input only; set router_jitter_noise=0, or "
            "convert with drop_jitter=True (eval-mode outputs are unaffected)")


def _deepseek_v3_router(config: Any, num_experts: int, top_k: int) -> dict[str, Any]:
    """The :class:`RouterConfig` settings of DeepSeek-V3's grouped sigmoid router (``noaux_tc``),
    after checking that its groups, kept groups and ``top_k`` fit together."""
    groups = config.n_group or 1
    top_groups = config.topk_group if groups > 1 else None
    if num_experts % groups:
        raise ValueError(f"deepseek_v3: n_routed_experts={num_experts} must be a multiple of "
                         f"n_group={groups}")
    if top_groups is not None and top_k > top_groups * (num_experts // groups):
        raise ValueError(f"deepseek_v3: num_experts_per_tok={top_k} exceeds the "
                         f"{top_groups} kept group(s) of {num_experts // groups} experts "
                         f"(topk_group={top_groups})")
    method = getattr(config, "topk_method", "noaux_tc")
    if method != "noaux_tc":
        raise ValueError(f"deepseek_v3: topk_method={method!r} is not supported; expected "
                         "'noaux_tc' (the DeepSeek-V3 router of transformers 5.23)")
    if config.norm_topk_prob:
        weighting: dict[str, Any] = dict(weighting="sigmoid", norm_eps=1e-20)
    else:
        weighting = dict(weighting="sigmoid_raw")
    return dict(**weighting, balance_bias=True, scaling=float(config.routed_scaling_factor),
                groups=groups, top_groups=top_groups, float32=True)


# -- tensors ------------------------------------------------------------------------------------------

def state_from_hf(family: Layout, hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A block's state dict (transformers 5.23 names) as the moelab layer's: pure re-layout, no
    arithmetic, so it applies to gradients too. Tensors come back contiguous, sharing no memory
    with the inputs."""
    out: dict[str, Tensor] = {}
    r = family.router
    out["router.scorer.weight"] = hf_state[f"{r}.weight"]
    if family.interleaved:  # GPT-OSS: (E, D, 2H) columns gate0, up0, gate1, up1, ...
        gate_up, gate_up_b = hf_state["experts.gate_up_proj"], hf_state["experts.gate_up_proj_bias"]
        out["router.scorer.bias"] = hf_state[f"{r}.bias"]
        out["experts.weight_gate"] = gate_up[..., 0::2]
        out["experts.weight_down"] = hf_state["experts.down_proj"]
        out["experts.weight_value"] = gate_up[..., 1::2]
        out["experts.bias_gate"] = gate_up_b[..., 0::2]
        out["experts.bias_down"] = hf_state["experts.down_proj_bias"]
        out["experts.bias_value"] = gate_up_b[..., 1::2]
    else:  # (E, 2H, D) gate rows then up rows, applied as x @ W^T
        gate_up = hf_state["experts.gate_up_proj"]
        H = gate_up.shape[1] // 2
        out["experts.weight_gate"] = gate_up[:, :H].transpose(1, 2)
        out["experts.weight_down"] = hf_state["experts.down_proj"].transpose(1, 2)
        out["experts.weight_value"] = gate_up[:, H:].transpose(1, 2)
    if f"{r}.e_score_correction_bias" in hf_state:
        out["router.expert_bias"] = hf_state[f"{r}.e_score_correction_bias"]
    if family.shared is not None and f"{family.shared}.gate_proj.weight" in hf_state:
        out.update(_shared_from_hf(family, hf_state))
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in out.items()}


def state_to_hf(family: Layout, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`state_from_hf`: the moelab layer's state dict with the block's names
    and layouts (bit for bit)."""
    out: dict[str, Tensor] = {}
    r = family.router
    out[f"{r}.weight"] = state["router.scorer.weight"]
    if family.interleaved:
        out[f"{r}.bias"] = state["router.scorer.bias"]
        out["experts.gate_up_proj"] = _interleave(state["experts.weight_gate"],
                                                  state["experts.weight_value"])
        out["experts.gate_up_proj_bias"] = _interleave(state["experts.bias_gate"],
                                                       state["experts.bias_value"])
        out["experts.down_proj"] = state["experts.weight_down"]
        out["experts.down_proj_bias"] = state["experts.bias_down"]
    else:
        out["experts.gate_up_proj"] = torch.cat(
            [state["experts.weight_gate"].transpose(1, 2),
             state["experts.weight_value"].transpose(1, 2)], dim=1)
        out["experts.down_proj"] = state["experts.weight_down"].transpose(1, 2)
    if "router.expert_bias" in state:
        out[f"{r}.e_score_correction_bias"] = state["router.expert_bias"]
    out.update(_shared_to_hf(family, state))
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in out.items()}


def _interleave(gate: Tensor, up: Tensor) -> Tensor:
    """(..., H) gate and up -> (..., 2H) with gate in the even and up in the odd columns."""
    return torch.stack([gate, up], dim=-1).flatten(-2)


#: The shared expert's maps: (moelab name, transformers name); both are ``nn.Linear`` weights.
SHARED_MAPS = (("gate", "gate_proj"), ("value", "up_proj"), ("down", "down_proj"))


def _shared_from_hf(family: Layout, hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    s = family.shared
    out = {f"shared.{m}.weight": hf_state[f"{s}.{h}.weight"] for m, h in SHARED_MAPS}
    if family.shared_gate is not None:
        out["shared_gate.weight"] = hf_state[f"{family.shared_gate}.weight"]
    return out


def _shared_to_hf(family: Layout, state: dict[str, Tensor]) -> dict[str, Tensor]:
    if family.shared is None or "shared.gate.weight" not in state:
        return {}
    s = family.shared
    out = {f"{s}.{h}.weight": state[f"shared.{m}.weight"] for m, h in SHARED_MAPS}
    if family.shared_gate is not None:
        out[f"{family.shared_gate}.weight"] = state["shared_gate.weight"]
    return out


# -- conversion -----------------------------------------------------------------------------------------

def from_hf(block: nn.Module, config: Any = None, *, drop_jitter: bool = False) -> MoELayer:
    """An :class:`~moelab.layers.MoELayer` computing the same function as a transformers MoE block.

    Args:
        block: the sparse MoE block of a transformers 5.23 model, e.g.
            ``model.model.layers[0].mlp`` (one of :data:`LAYOUTS`' block classes).
        config: the model's config; None reads the one the block's experts keep.
        drop_jitter: convert a Mixtral block with ``router_jitter_noise`` > 0 without the jitter.

    Returns:
        a layer with the block's dtype, device and training mode, its tensors copied (not shared),
        and ``layer.source`` recording where it came from (see :func:`source_of`). Selected experts
        come in descending score order (DeepSeek-V3's router returns them unordered).
    """
    family = _BY_BLOCK.get(type(block).__name__)
    if family is None:
        raise TypeError(f"block must be the MoE block of a supported family, one of "
                        f"{sorted(_BY_BLOCK)}; got {type(block).__name__}")
    if config is None:
        config = getattr(getattr(block, "experts", None), "config", None)
        if config is None:
            raise ValueError(f"{type(block).__name__} keeps no config; pass config=")
    if layout_of(config) is not family:
        raise ValueError(f"config.model_type={config.model_type!r} does not match the block "
                         f"{type(block).__name__} ({family.model_type})")
    _check_block(block, family, config)
    layer = build_layer(family, config, block.state_dict(), drop_jitter=drop_jitter)
    return layer.train(block.training)


#: Settings the blocks copy from their config when built: (module, its attribute, config key).
_BLOCK_SETTINGS = (("router", "top_k", "num_experts_per_tok"),
                   ("router", "norm_topk_prob", "norm_topk_prob"),
                   ("router", "routed_scaling_factor", "routed_scaling_factor"),
                   ("router", "num_group", "n_group"), ("router", "topk_group", "topk_group"),
                   ("block", "jitter_noise", "router_jitter_noise"),
                   ("experts", "alpha", "swiglu_alpha"), ("experts", "limit", "swiglu_limit"))


def _check_block(block: nn.Module, family: Layout, config: Any) -> None:
    """A ValueError if ``config`` disagrees with a setting ``block`` was built with (the tensor
    shapes are checked when they are loaded)."""
    modules = {"block": block, "router": getattr(block, family.router),
               "experts": getattr(block, "experts", None)}
    for where, attr, key in _BLOCK_SETTINGS:
        if hasattr(modules[where], attr) and hasattr(config, key):
            mine, theirs = getattr(modules[where], attr), getattr(config, key)
            if mine != theirs:
                raise ValueError(f"config.{key}={theirs!r}, but the {type(block).__name__} was "
                                 f"built with {mine!r} ({where}.{attr}); pass the block's own config")


def build_layer(family: Layout, config: Any, hf_state: dict[str, Tensor], *,
                drop_jitter: bool = False, where: dict[str, Any] | None = None) -> MoELayer:
    """The layer of ``family`` and transformers ``config`` holding the block tensors ``hf_state``
    (in-memory names), with its provenance (``where``: the checkpoint it was read from)."""
    cfg = moe_config(config, drop_jitter=drop_jitter)
    state = state_from_hf(family, hf_state)
    with torch.device("meta"):  # every tensor comes from the block: nothing to initialise
        layer = MoELayer(config.hidden_size, config.hidden_size, cfg)
    layer.load_state_dict(state, strict=True, assign=True)
    layer.source = source_of(family, config, where)
    return layer


def source_of(family: Layout, config: Any, where: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of a converted layer (JSON): ``kind``, ``family`` (model_type),
    ``block_class``, ``config`` (the HF config's full ``to_dict``), ``transformers_version`` and,
    for a layer read from a checkpoint directory, ``checkpoint`` (directory and layer index)."""
    transformers = require_transformers()
    record = {"kind": SOURCE_KIND, "family": family.model_type, "block_class": family.block,
              "config": json.loads(config.to_json_string(use_diff=False)),
              "transformers_version": transformers.__version__}
    if where is not None:
        record["checkpoint"] = where
    return record


def hf_config_from_source(source: dict[str, Any]) -> Any:
    """The transformers config a provenance record (:func:`source_of`) holds."""
    if not isinstance(source, dict) or source.get("kind") != SOURCE_KIND:
        raise ValueError(f"source must be a provenance record of kind {SOURCE_KIND!r} "
                         f"(layer.source of a converted layer), got {source!r:.200}")
    family = LAYOUTS.get(source.get("family"))
    if family is None:
        raise ValueError(f"source['family']={source.get('family')!r} has no moelab conversion; "
                         f"expected one of {sorted(LAYOUTS)}")
    transformers = require_transformers()
    config_cls = transformers.CONFIG_MAPPING[family.model_type]
    return config_cls.from_dict(dict(source["config"]))


def to_hf(layer: MoELayer, config: Any = None) -> nn.Module:
    """The transformers MoE block computing the same function as ``layer`` (its tensors copied
    bit for bit; dtype, device and training mode kept).

    ``config`` is the transformers config of the model the block belongs to; None takes it from
    ``layer.source`` (set by :func:`from_hf` and kept by moelab checkpoints). The layer's
    configuration must be the one ``config`` implies (:func:`moe_config`), else a ValueError
    names the first field that differs.
    """
    if not isinstance(layer, MoELayer):
        raise TypeError(f"layer must be an MoELayer, got {type(layer).__name__}")
    if config is None:
        source = getattr(layer, "source", None)
        if source is None:
            raise ValueError("layer has no record of a Hugging Face source (layer.source); pass "
                             "the transformers config: to_hf(layer, config)")
        config = hf_config_from_source(source)
        if getattr(config, "_experts_implementation", None) is None:
            config._experts_implementation = "eager"
    family = layout_of(config)
    expected = moe_config(config, drop_jitter=True)
    mismatch = _first_mismatch(expected, layer.config)
    if mismatch:
        raise ValueError(f"layer does not match {family.model_type} config: {mismatch}")
    if layer.d_in != config.hidden_size or layer.d_out != config.hidden_size:
        raise ValueError(f"layer maps {layer.d_in} -> {layer.d_out}, the {family.model_type} "
                         f"block {config.hidden_size} -> {config.hidden_size} (hidden_size)")
    module = importlib.import_module(f"transformers.models.{family.module}.modeling_{family.module}")
    with torch.device("meta"):
        block = getattr(module, family.block)(config)
    block.load_state_dict(state_to_hf(family, layer.state_dict()), strict=True, assign=True)
    return block.train(layer.training)


def _first_mismatch(expected: MoEConfig, actual: MoEConfig) -> str | None:
    """The first field (dotted) where ``actual`` differs from ``expected``; dispatch and
    check_finite (how the layer runs, not what it computes) are not compared."""
    for f in dataclasses.fields(MoEConfig):
        if f.name in ("dispatch", "check_finite"):
            continue
        a, b = getattr(expected, f.name), getattr(actual, f.name)
        if dataclasses.is_dataclass(a):
            for g in dataclasses.fields(a):
                x, y = getattr(a, g.name), getattr(b, g.name)
                if x != y:
                    return f"{f.name}.{g.name}={y!r}, expected {x!r}"
        elif a != b:
            return f"{f.name}={b!r}, expected {a!r}"
    return None
