"""Capture the routing of every MoE layer of a Hugging Face causal LM, with forward hooks only.

Each supported family's sparse MoE block calls a router submodule that returns
``(router_logits, top_k_weights, top_k_indices)`` (transformers 5.23): Mixtral, Qwen2-MoE,
Qwen3-MoE and OLMoE take the top-k of a softmax (renormalised or not), DeepSeek-V3 a group-limited
top-k of sigmoid scores plus ``e_score_correction_bias`` with weights from the unbiased scores times
``routed_scaling_factor``, GPT-OSS a softmax over the top-k logits. A forward hook on that router
records exactly what it selected and the weights it returned, whatever its rule; a forward
pre-hook on the block records the hidden states the block receives. Nothing in the model changes
and every hook is removed afterwards, also when the forward pass fails.

The records are moelab :class:`~moelab.layers.Routing` objects, so moelab's analysis applies to
them unchanged. Per layer:

* ``expert_ids`` (T, K): the router's selection, slots ordered by weight, largest first (stable;
  DeepSeek-V3's top-k is unsorted, the other routers' already come in that order);
* ``weights`` (T, K): the weights the router returned, in the same slot order;
* ``kept``: all True (these models drop no tokens); ``dropped_fraction``: 0;
* ``logits`` (T, E): the router's logits; ``probs`` (T, E): softmax of the logits in float32 (the
  router's own probabilities for the softmax routers; for DeepSeek-V3's sigmoid router and GPT-OSS
  a distribution with the same ranking of experts).

Shape legend: B batch, S sequence, T = B*S tokens (padding removed), H hidden size, E experts,
K experts per token.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moelab.layers.outputs import Routing

HF_EXTRA = "pip install 'moelab[hf]'"


class HFUnavailableError(ImportError):
    """transformers (the ``hf`` extra) is not installed."""


def require_transformers():
    """The ``transformers`` module, or :class:`HFUnavailableError` naming the extra to install."""
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise HFUnavailableError(
            f"analysing Hugging Face models needs transformers==5.23.0: {HF_EXTRA}"
        ) from exc


@dataclass(frozen=True)
class Family:
    """Where a transformers family keeps its MoE blocks and their routers."""

    model_type: str
    module: str  # transformers.models.<module>.modeling_<module>
    block: str  # the sparse MoE block's class name
    router: str  # the block's attribute holding the router


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("mixtral", "mixtral", "MixtralSparseMoeBlock", "gate"),
        Family("qwen2_moe", "qwen2_moe", "Qwen2MoeSparseMoeBlock", "gate"),
        Family("qwen3_moe", "qwen3_moe", "Qwen3MoeSparseMoeBlock", "gate"),
        Family("olmoe", "olmoe", "OlmoeSparseMoeBlock", "gate"),
        Family("deepseek_v3", "deepseek_v3", "DeepseekV3MoE", "gate"),
        Family("gpt_oss", "gpt_oss", "GptOssMLP", "router"),
    )
}


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a transformers model, from ``model.config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise TypeError(f"model must be a transformers model with a config, got {type(model).__name__}")
    if model_type not in FAMILIES:
        raise ValueError(
            f"model_type={model_type!r} is not supported; expected one of {sorted(FAMILIES)}"
        )
    return FAMILIES[model_type]


@dataclass(frozen=True)
class LayerCapture:
    """One MoE layer's routing on the captured tokens.

    Attributes:
        layer: index of the decoder layer holding the block (dense layers count too).
        name: the block's module path, e.g. ``model.layers.3.mlp``.
        routing: the router's decisions as a :class:`~moelab.layers.Routing` (see the module doc).
        hidden: (T, H) the hidden states the block received (float32, CPU); None when not kept.
    """

    layer: int
    name: str
    routing: Routing
    hidden: Tensor | None


@dataclass(frozen=True)
class ModelCapture:
    """Every MoE layer's routing for one forward pass of a model.

    Attributes:
        model_type: the family, e.g. ``"mixtral"``.
        layers: the MoE layers, in the order the model runs them.
        dense_layers: (decoder layer index, module path) of the layers whose MLP is dense (e.g.
            DeepSeek-V3's first ``first_k_dense_replace`` layers); they are skipped.
        num_tokens: T, the tokens routed in every layer.
    """

    model_type: str
    layers: tuple[LayerCapture, ...]
    dense_layers: tuple[tuple[int, str], ...]
    num_tokens: int

    @property
    def routings(self) -> tuple[Routing, ...]:
        return tuple(c.routing for c in self.layers)


def _decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every decoder layer: the entries of the model's ``layers`` ModuleList."""
    found = [
        (f"{name}.{i}", layer)
        for name, module in model.named_modules()
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList)
        for i, layer in enumerate(module)
    ]
    if not found:
        raise ValueError(f"found no decoder layers (a ModuleList named 'layers') in {type(model).__name__}")
    return found


def moe_blocks(model: nn.Module) -> tuple[list[tuple[int, str, nn.Module]], list[tuple[int, str]]]:
    """The MoE blocks of ``model`` as (decoder layer index, path, block), and its dense layers as
    (index, path of the MLP)."""
    family = family_of(model)
    require_transformers()
    modeling = importlib.import_module(f"transformers.models.{family.module}.modeling_{family.module}")
    block_cls = getattr(modeling, family.block)
    blocks, dense = [], []
    for i, (path, layer) in enumerate(_decoder_layers(model)):
        mlp = getattr(layer, "mlp", None)
        if isinstance(mlp, block_cls):
            blocks.append((i, f"{path}.mlp", mlp))
        else:
            dense.append((i, f"{path}.mlp"))
    return blocks, dense


class _Recorder:
    """Per-block lists of what the hooks saw, one entry per call of the block."""

    def __init__(self, keep_hidden: bool) -> None:
        self.keep_hidden = keep_hidden
        self.calls = 0
        self.hidden: list[Tensor] = []
        self.outputs: list[tuple[Tensor, Tensor, Tensor]] = []

    def block_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        if self.keep_hidden:
            x = args[0] if args else kwargs["hidden_states"]
            self.hidden.append(x.detach().reshape(-1, x.shape[-1]).float().cpu())

    def router_output(self, module: nn.Module, args: tuple, output: tuple) -> None:
        logits, weights, ids = output[:3]
        self.outputs.append((logits.detach().cpu(), weights.detach().cpu(), ids.detach().cpu()))


def _routing(logits_TE: Tensor, weights_TK: Tensor, ids_TK: Tensor) -> Routing:
    order_TK = weights_TK.float().argsort(dim=1, descending=True, stable=True)
    ids_TK = ids_TK.gather(1, order_TK).long()
    weights_TK = weights_TK.gather(1, order_TK)
    E = logits_TE.shape[-1]
    return Routing(
        expert_ids=ids_TK,
        weights=weights_TK,
        kept=torch.ones_like(ids_TK, dtype=torch.bool),
        logits=logits_TE,
        probs=torch.softmax(logits_TE.float(), dim=-1),
        tokens_per_expert=torch.bincount(ids_TK.reshape(-1), minlength=E),
        dropped_fraction=torch.zeros(()),
    )


def capture_routing(
    model: nn.Module,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    keep_hidden: bool = True,
) -> ModelCapture:
    """Run ``model`` once on ``input_ids`` (B, S) and record every MoE layer's routing.

    The model runs as it is, under ``torch.no_grad()`` (call ``model.eval()`` first to switch off
    Mixtral's router jitter). Tokens where ``attention_mask`` (B, S) is 0 are left out of the
    records. ``keep_hidden=False`` skips the (T, H) hidden states of each layer (they take
    T * H * 4 bytes per layer).

    Raises:
        ValueError: an unsupported ``model_type`` (named), a model without MoE layers, bad
            ``input_ids`` or ``attention_mask``, or a block whose router did not run exactly once
            per call (e.g. a hub kernel replaced the block's forward).
    """
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(
            f"input_ids must be a (B, S) int64 tensor, got "
            f"{getattr(input_ids, 'shape', type(input_ids).__name__)} {getattr(input_ids, 'dtype', '')}"
        )
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    family = family_of(model)
    blocks, dense = moe_blocks(model)
    if not blocks:
        raise ValueError(f"the {family.model_type} model has no MoE layers (all {len(dense)} are dense)")
    device = getattr(model, "device", None)  # a transformers model's first device
    if device is not None:
        input_ids = input_ids.to(device)
        attention_mask = None if attention_mask is None else attention_mask.to(device)
    recorders = [_Recorder(keep_hidden) for _ in blocks]
    handles = []
    try:
        for rec, (_, _, block) in zip(recorders, blocks, strict=True):
            handles.append(block.register_forward_pre_hook(rec.block_input, with_kwargs=True))
            handles.append(getattr(block, family.router).register_forward_hook(rec.router_output))
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()

    keep_T = None if attention_mask is None else attention_mask.reshape(-1).cpu().bool()
    layers = []
    for rec, (index, path, _) in zip(recorders, blocks, strict=True):
        if len(rec.outputs) != rec.calls or not rec.outputs:
            raise ValueError(
                f"{path}: the router ran {len(rec.outputs)} time(s) for {rec.calls} call(s) of "
                f"the block; its forward was replaced or bypasses the router module"
            )
        logits_TE, weights_TK, ids_TK = (torch.cat(parts) for parts in zip(*rec.outputs, strict=True))
        hidden_TH = torch.cat(rec.hidden) if keep_hidden else None
        if keep_T is not None:
            logits_TE, weights_TK, ids_TK = (t[keep_T] for t in (logits_TE, weights_TK, ids_TK))
            hidden_TH = None if hidden_TH is None else hidden_TH[keep_T]
        layers.append(LayerCapture(index, path, _routing(logits_TE, weights_TK, ids_TK), hidden_TH))
    num_tokens = int(layers[0].routing.logits.shape[0])
    return ModelCapture(family.model_type, tuple(layers), tuple(dense), num_tokens)

