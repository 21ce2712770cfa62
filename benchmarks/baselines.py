"""What moelab's MoE layer is timed against, each built to compute the same function as a given layer.

* :func:`hf_mixtral_block`: Hugging Face's ``MixtralSparseMoeBlock`` holding a gated layer's weights.
* :func:`torchtitan_moe`: torchtitan's ``MoE`` (router, local token dispatcher, grouped experts),
  configured to Mixtral's routing, holding a gated layer's weights.
* :class:`LoopMoE`: the common eager MoE, a Python loop over ``nn.Linear`` experts, holding a
  two-layer ReLU layer's weights.
* :func:`dense_active`: one MLP of the experts' shape, to be run on all T*K routed rows at once (the
  compute floor of a top-K layer; its weights are its own, since it computes another function).

The only code that reads moelab's parameter names is :func:`mixtral_state_dict`,
:func:`torchtitan_state_dict` and :func:`loop_state_dict`; each returns the other implementation's
state dict built from the layer's parameters by differentiable reshapes, so it serves both to load
weights (``load_state_dict``) and, through ``torch.func.functional_call``, to carry gradients back
to the moelab layer's parameters.
tests/layers/test_peer_parity.py holds each baseline to moelab's layer in outputs and gradients.

Shape legend: E experts, D model width, H expert hidden width, I/O in/out widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab.layers import MoELayer


def mixtral_state_dict(layer: MoELayer) -> dict[str, Tensor]:
    """``MixtralSparseMoeBlock``'s state dict holding a gated, bias-free ``layer``'s weights.

    moelab's SwiGLU expert is W2 (act(W1 x) * W3 x) with weights (in, out) per expert; HF stores
    ``F.linear`` weights (out, in), the gate's and the value's ("up") rows stacked in ``gate_up_proj``.
    """
    gate_EDH, down_EHD, value_EDH = layer.experts.weights  # moelab's W1, W2, W3
    return {
        "gate.weight": layer.router.scorer.weight,  # (E, D)
        "experts.gate_up_proj": torch.cat([gate_EDH, value_EDH], dim=2).transpose(1, 2),  # (E, 2H, D)
        "experts.down_proj": down_EHD.transpose(1, 2),  # (E, D, H)
    }


def hf_mixtral_block(layer: MoELayer, *, implementation: str) -> nn.Module:
    """HF's ``MixtralSparseMoeBlock`` with ``experts_implementation=implementation`` (``"grouped_mm"``,
    ``"eager"``) holding ``layer``'s weights; it takes (B, S, D) and returns (B, S, D)."""
    from transformers.models.mixtral.modeling_mixtral import MixtralConfig, MixtralSparseMoeBlock

    config = MixtralConfig(
        hidden_size=layer.d_in, intermediate_size=layer.experts.hidden,
        num_local_experts=layer.num_experts, num_experts_per_tok=layer.config.router.top_k,
        experts_implementation=implementation,
    )
    block = MixtralSparseMoeBlock(config)
    block.load_state_dict(mixtral_state_dict(layer))  # strict: every entry present, shapes checked
    return block


def torchtitan_state_dict(layer: MoELayer) -> dict[str, Tensor]:
    """torchtitan ``MoE``'s state dict holding a gated, bias-free ``layer``'s weights.

    torchtitan's grouped experts are w2 (silu(w1 x) * w3 x) with ``F.linear``-shaped weights per
    expert: w1, w3 (E, H, D) and w2 (E, D, H); its router's gate is an ``nn.Linear`` (E, D).
    """
    gate_EDH, down_EHD, value_EDH = layer.experts.weights  # moelab's W1, W2, W3
    return {
        "router.gate.weight": layer.router.scorer.weight,  # (E, D)
        "routed_experts.inner_experts.w1_EFD": gate_EDH.transpose(1, 2),  # (E, H, D)
        "routed_experts.inner_experts.w2_EDF": down_EHD.transpose(1, 2),  # (E, D, H)
        "routed_experts.inner_experts.w3_EFD": value_EDH.transpose(1, 2),  # (E, H, D)
    }


def torchtitan_moe(layer: MoELayer) -> nn.Module:
    """torchtitan's ``MoE`` holding a gated, bias-free ``layer``'s weights; (B, S, D) -> (B, S, D).

    Configured to Mixtral's routing, which is moelab's ``weighting="paper"``: softmax over all E
    logits, top-K, then the K probabilities renormalised to sum to 1 (``route_norm``), which is the
    softmax over the K selected logits; no route scale, no load-balancing expert bias
    (``load_balance_coeff=None``), no shared experts, the local (single-process) token dispatcher.
    What remains different is fixed in torchtitan's code: its grouped experts cast the routed tokens
    and the expert weights to bfloat16 and run all three grouped matmuls in bfloat16, casting only
    the experts' output back to float32 (the routing scores multiply it after the experts, in float32).
    Building it leaves the global random state as it was (its own initial weights are overwritten).
    """
    from torchtitan.models.common.linear import Linear
    from torchtitan.models.common.moe import GroupedExperts, MoE, RoutedExperts, TokenChoiceTopKRouter
    from torchtitan.models.common.token_dispatcher import LocalTokenDispatcher

    d, num_experts, top_k = layer.d_in, layer.num_experts, layer.config.router.top_k
    config = MoE.Config(
        num_experts=num_experts,
        router=TokenChoiceTopKRouter.Config(
            num_experts=num_experts, gate=Linear.Config(in_features=d, out_features=num_experts),
            top_k=top_k, score_func="softmax", route_norm=True, route_scale=1.0,
        ),
        routed_experts=RoutedExperts.Config(
            inner_experts=GroupedExperts.Config(
                dim=d, hidden_dim=layer.experts.hidden, num_experts=num_experts
            ),
            token_dispatcher=LocalTokenDispatcher.Config(num_experts=num_experts, top_k=top_k),
        ),
        load_balance_coeff=None,
        shared_experts=None,
    )
    with torch.random.fork_rng(devices=[]):  # nn.Linear's initialiser draws from the global generator
        moe = config.build()
    moe.load_state_dict(torchtitan_state_dict(layer))  # strict: every entry present, shapes checked
    return moe


def loop_state_dict(layer: MoELayer) -> dict[str, Tensor]:
    """:class:`LoopMoE`'s state dict holding a two-layer ReLU ``layer``'s weights (linear router with
    bias, experts with biases; moelab holds each expert layer's weights as (E, in, out))."""
    (w1_EIH, w2_EHO), (b1_EH, b2_EO) = layer.experts.weights, layer.experts.biases
    state = {"router.weight": layer.router.scorer.weight, "router.bias": layer.router.scorer.bias}
    for e in range(layer.num_experts):
        state |= {
            f"experts.{e}.0.weight": w1_EIH[e].t(), f"experts.{e}.0.bias": b1_EH[e],
            f"experts.{e}.2.weight": w2_EHO[e].t(), f"experts.{e}.2.bias": b2_EO[e],
        }
    return state


class LoopMoE(nn.Module):
    """The common eager MoE: a linear softmax router, top-1, a Python loop over ``nn.Linear`` experts.

    Weighting is Switch's (the selected expert's full softmax probability), as moelab's default.
    """

    def __init__(self, d_in: int, d_out: int, *, num_experts: int, hidden: int) -> None:
        super().__init__()
        self.router = nn.Linear(d_in, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
            for _ in range(num_experts)
        )
        self.d_out = d_out

    @classmethod
    def like(cls, layer: MoELayer) -> LoopMoE:
        """A loop holding ``layer``'s weights."""
        loop = cls(layer.d_in, layer.d_out, num_experts=layer.num_experts, hidden=layer.experts.hidden)
        loop.load_state_dict(loop_state_dict(layer))
        return loop

    def forward(self, x_TI: Tensor) -> Tensor:
        probs_TE = self.router(x_TI).softmax(-1)
        weight_T, top1_T = probs_TE.max(-1)
        y_TO = x_TI.new_zeros(x_TI.shape[0], self.d_out)
        for e, expert in enumerate(self.experts):
            idx = torch.where(top1_T == e)[0]
            y_TO = y_TO.index_add(0, idx, weight_T[idx, None] * expert(x_TI[idx]))
        return y_TO


class GatedMLP(nn.Module):
    """One SwiGLU MLP, W2 (silu(W1 x) * W3 x), no biases."""

    def __init__(self, d_in: int, d_out: int, *, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_in, hidden, bias=False)
        self.w3 = nn.Linear(d_in, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def dense_active(layer: MoELayer) -> nn.Module:
    """One MLP of the shape of ``layer``'s experts, as the benchmark's regimes have them: SwiGLU
    without biases if they are gated, else ReLU with biases."""
    d_in, d_out, hidden = layer.d_in, layer.d_out, layer.experts.hidden
    if layer.config.experts.gated:
        return GatedMLP(d_in, d_out, hidden=hidden)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
