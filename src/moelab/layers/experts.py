"""Banks of E experts with batched weights.

An expert is an l-layer feed-forward network R^{d_in} -> R^{d_out} (PAPER.md Sec. 1: "l-layer, width m"
means l affine maps with m hidden units each). The E experts of a bank share their shapes, so each
layer's weights are held as one (E, in, out) tensor and all experts run at once: either every expert on
every token (:meth:`forward_all`, batched matmul) or each expert on its own contiguous group of tokens
(:meth:`forward_grouped`, grouped matmul).

Shape legend: E experts, T tokens, N routed rows (tokens sorted by expert), I/O in/out widths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab._validation import positive_int
from moelab.layers.activations import get_activation


@dataclass(frozen=True)
class ExpertResult:
    """What a bank of experts returns.

    ``y`` is (N, O) from :meth:`forward_grouped` or (E, T, O) from :meth:`forward_all`;
    ``recon_error`` has the same leading shape (N or (E, T)) and holds the squared reconstruction
    error ||Dec(Enc(x)) - x||^2 of low-dimensional experts, or is None.
    """

    y: Tensor
    recon_error: Tensor | None = None


def _grouped_mm_ok(x_NI: Tensor, w_EIO: Tensor) -> bool:
    """Whether torch's grouped_mm kernel takes these operands (dtype and 16-byte row strides)."""
    if not hasattr(F, "grouped_mm") or x_NI.dtype not in (torch.float32, torch.bfloat16):
        return False
    if x_NI.dtype != w_EIO.dtype:
        return False
    step = 16 // x_NI.element_size()
    return w_EIO.shape[1] % step == 0 and w_EIO.shape[2] % step == 0


def grouped_linear(
    x_NI: Tensor, w_EIO: Tensor, b_EO: Tensor | None, counts_E: Tensor, offsets_E: Tensor
) -> Tensor:
    """Apply expert e's affine map to its contiguous group of rows: (N, I) -> (N, O).

    Rows must be sorted by expert with ``counts_E[e]`` rows for expert e; ``offsets_E`` is the
    int32 cumulative sum of ``counts_E``. Uses ``torch.nn.functional.grouped_mm`` where the kernel
    accepts the operands and one matmul per non-empty group otherwise (same result).
    """
    if _grouped_mm_ok(x_NI, w_EIO):
        y_NO = F.grouped_mm(x_NI.contiguous(), w_EIO, offs=offsets_E)
        if b_EO is not None:
            y_NO = y_NO + b_EO.repeat_interleave(counts_E, dim=0, output_size=x_NI.shape[0])
        return y_NO
    outs = []
    for e, x_nI in enumerate(x_NI.split(counts_E.tolist())):
        if b_EO is None:
            outs.append(x_nI @ w_EIO[e])
        else:
            outs.append(torch.addmm(b_EO[e], x_nI, w_EIO[e]))
    return torch.cat(outs) if outs else x_NI.new_zeros(0, w_EIO.shape[2])


class Experts(nn.Module):
    """E independent feed-forward experts, each ``depth`` affine maps of hidden width ``hidden``.

    ``depth=2`` is the paper's two-layer expert A2 act(A1 x + b1) + b2; ``depth=1`` is a single affine
    map. ``gated=True`` gives the SwiGLU-shaped expert of Mixtral, W2 (act(W1 x) * (W3 x)) (depth 2
    only; use ``activation="silu"`` for the Mixtral shape). Layer k's weight is a parameter of shape
    (E, in_k, out_k) named ``weight{k}``; biases are (E, out_k).
    """

    def __init__(
        self,
        num_experts: int,
        d_in: int,
        d_out: int,
        *,
        hidden: int,
        depth: int = 2,
        activation: str = "relu",
        gated: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_experts = positive_int("num_experts", num_experts)
        self.d_in = positive_int("d_in", d_in)
        self.d_out = positive_int("d_out", d_out)
        self.hidden = positive_int("expert_hidden", hidden)
        self.depth = positive_int("expert_depth", depth)
        self.activation = activation
        self._act = get_activation(activation)
        if gated and depth != 2:
            raise ValueError(f"gated experts have expert_depth=2, got expert_depth={depth}")
        self.gated = gated
        widths = [d_in] + [hidden] * (depth - 1) + [d_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList() if bias else None
        for fan_in, fan_out in pairwise(widths):
            self._add_layer(fan_in, fan_out)
        if gated:  # the gate's value branch W3, applied to the input beside W1
            self._add_layer(d_in, hidden)

    def _add_layer(self, fan_in: int, fan_out: int) -> None:
        # nn.Linear's default init, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(fan_in)
        w = torch.empty(self.num_experts, fan_in, fan_out).uniform_(-bound, bound)
        self.weights.append(nn.Parameter(w))
        if self.biases is not None:
            b = torch.empty(self.num_experts, fan_out).uniform_(-bound, bound)
            self.biases.append(nn.Parameter(b))

    def _bias(self, k: int) -> Tensor | None:
        return None if self.biases is None else self.biases[k]

    def forward_all(self, x_TI: Tensor) -> ExpertResult:
        """Every expert on every token: x (T, I), or (E, T, I) per expert, -> y (E, T, O).

        This is the plain reference computation (no sorting, no grouping).
        """
        def affine(h, k):  # h: (T, I) or (E, T, I)
            w, b = self.weights[k], self._bias(k)
            if h.dim() == 2:
                h = h.expand(w.shape[0], *h.shape)
            return torch.bmm(h, w) if b is None else torch.baddbmm(b[:, None, :], h, w)

        if self.gated:
            h = self._act(affine(x_TI, 0)) * affine(x_TI, 2)
            return ExpertResult(affine(h, 1))
        h = x_TI
        for k in range(self.depth):
            h = affine(h, k)
            if k < self.depth - 1:
                h = self._act(h)
        return ExpertResult(h)

    def forward_mixed(self, x_TI: Tensor, w_TE: Tensor) -> Tensor | None:
        """sum_e w_TE[:, e] * expert_e(x) for two-layer, ungated experts as two flat matmuls,
        (T, I) -> (T, O); None for other shapes (use :meth:`forward_all`).

        The first layers of all experts are one (I, E*H) matmul; the weighted mix of the second
        layers is one (E*H, O) matmul of the weighted hidden units, since the mix is linear.
        """
        if self.depth != 2 or self.gated:
            return None
        T, E, H = x_TI.shape[0], self.num_experts, self.hidden
        w1_IF = self.weights[0].transpose(0, 1).reshape(self.d_in, E * H)
        b1 = self._bias(0)
        h_TF = x_TI @ w1_IF if b1 is None else torch.addmm(b1.reshape(-1), x_TI, w1_IF)
        h_TF = (self._act(h_TF).view(T, E, H) * w_TE[:, :, None]).view(T, E * H)
        w2_FO = self.weights[1].reshape(E * H, self.d_out)
        b2 = self._bias(1)
        return h_TF @ w2_FO if b2 is None else torch.addmm(w_TE @ b2, h_TF, w2_FO)

    def forward_grouped(self, x_NI: Tensor, counts_E: Tensor) -> ExpertResult:
        """Expert e on its own rows: x (N, I) sorted by expert, ``counts_E`` rows each -> y (N, O)."""
        offsets_E = counts_E.cumsum(0).to(torch.int32)
        if self.gated:
            gate = grouped_linear(x_NI, self.weights[0], self._bias(0), counts_E, offsets_E)
            value = grouped_linear(x_NI, self.weights[2], self._bias(2), counts_E, offsets_E)
            h = self._act(gate) * value
            return ExpertResult(grouped_linear(h, self.weights[1], self._bias(1), counts_E, offsets_E))
        h = x_NI
        for k in range(self.depth):
            h = grouped_linear(h, self.weights[k], self._bias(k), counts_E, offsets_E)
            if k < self.depth - 1:
                h = self._act(h)
        return ExpertResult(h)

    def extra_repr(self) -> str:
        kind = "gated " if self.gated else ""
        return (
            f"num_experts={self.num_experts}, {self.d_in} -> {self.d_out}, {kind}depth={self.depth}, "
            f"hidden={self.hidden}, activation={self.activation}"
        )


class LowDimExperts(nn.Module):
    """Low-dimensional experts f_low o Enc (PAPER.md Sec. 4, suggestion 3).

    Enc: R^{d_in} -> R^{latent} is a per-expert affine map (it stands for the chart map phi_i), and
    f_low: R^{latent} -> R^{d_out} is a small :class:`Experts` bank. With ``decoder=True`` each expert
    also has an affine Dec: R^{latent} -> R^{d_in}, and the squared reconstruction error
    ||Dec(Enc(x)) - x||^2 of every routed row is returned for the reconstruction loss.
    Parameters per expert: (d_in + 1) * latent for Enc plus those of f_low, instead of O(d_in * hidden).
    """

    def __init__(
        self,
        num_experts: int,
        d_in: int,
        d_out: int,
        *,
        latent: int,
        hidden: int,
        depth: int = 2,
        activation: str = "relu",
        decoder: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_experts = positive_int("num_experts", num_experts)
        self.d_in, self.d_out = d_in, d_out
        self.latent = positive_int("latent_dim", latent)
        self.encoder = Experts(num_experts, d_in, latent, hidden=latent, depth=1, bias=bias)
        self.f_low = Experts(
            num_experts, latent, d_out, hidden=hidden, depth=depth, activation=activation, bias=bias
        )
        self.decoder = (
            Experts(num_experts, latent, d_in, hidden=latent, depth=1, bias=bias) if decoder else None
        )

    def forward_all(self, x_TI: Tensor) -> ExpertResult:
        z_ETL = self.encoder.forward_all(x_TI).y
        y_ETO = self.f_low.forward_all(z_ETL).y
        recon = None
        if self.decoder is not None:
            xhat_ETI = self.decoder.forward_all(z_ETL).y
            recon = (xhat_ETI - x_TI).square().sum(-1)
        return ExpertResult(y_ETO, recon)

    def forward_grouped(self, x_NI: Tensor, counts_E: Tensor) -> ExpertResult:
        z_NL = self.encoder.forward_grouped(x_NI, counts_E).y
        y_NO = self.f_low.forward_grouped(z_NL, counts_E).y
        recon = None
        if self.decoder is not None:
            xhat_NI = self.decoder.forward_grouped(z_NL, counts_E).y
            recon = (xhat_NI - x_NI).square().sum(-1)
        return ExpertResult(y_NO, recon)
