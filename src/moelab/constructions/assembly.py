"""Writing hand-set weights into ordinary moelab layers.

A construction describes each expert as a sum of ReLU units: unit k computes relu(<w_k, x> + b_k)
and adds v_k times that to the output, on top of an output bias (a two-layer net,
A2 relu(A1 x + b1) + b2). :class:`Net` collects the units of one expert, including the pass-through
channels that carry a value unchanged through a ReLU layer (docs/paper.md Sec. 1):

* ``z = relu(z) - relu(-z)``: two units, exact for every z;
* ``z = relu(z - lo) + lo``: one unit, exact for z >= lo (used where a lower bound is known).

:class:`LayerSpec` holds a layer's experts (each a list of affine maps) and its router;
:func:`build_layer` and :func:`build_stack` create a :class:`~moelab.layers.MoELayer` or
:class:`~moelab.layers.DeepMoE` with top-1 routing and the paper's weighting (the selected expert's
weight is exactly 1), pad the experts of a layer to a common hidden width with zero units, and copy
the weights in. Nothing here is trained.

Shape legend: U units, I/O input/output widths, H hidden width, E experts. Affine maps are stored
as (W (I, O), b (O,)), the layout of :class:`~moelab.layers.Experts`; routers likewise as
(W (I, E), b (E,) or None), transposed when written into ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moelab.layers import DeepMoE, ExpertConfig, MoEConfig, MoELayer, RouterConfig

_F64 = torch.float64
#: one affine map (W (I, O), b (O,))
Affine = tuple[Tensor, Tensor]


class Net:
    """The units of one two-layer ReLU expert R^{d_in} -> R^{d_out}, collected one block at a time."""

    def __init__(self, d_in: int, d_out: int) -> None:
        self.d_in, self.d_out = d_in, d_out
        self._w: list[Tensor] = []  # (U_block, d_in)
        self._b: list[Tensor] = []  # (U_block,)
        self._v: list[Tensor] = []  # (U_block, d_out)
        self.bias = torch.zeros(d_out, dtype=_F64)

    @property
    def hidden(self) -> int:
        return sum(w.shape[0] for w in self._w)

    def units(self, w_UI: Tensor, b_U: Tensor, v_UO: Tensor) -> Net:
        """Add units relu(x w_u + b_u), each adding v_u (d_out,) times its value to the output."""
        w_UI, b_U, v_UO = (torch.as_tensor(t, dtype=_F64) for t in (w_UI, b_U, v_UO))
        if w_UI.shape[1] != self.d_in or v_UO.shape[1] != self.d_out or len({
            w_UI.shape[0], b_U.shape[0], v_UO.shape[0]
        }) != 1:
            raise ValueError(
                f"units need w (U, {self.d_in}), b (U,), v (U, {self.d_out}); got "
                f"{tuple(w_UI.shape)}, {tuple(b_U.shape)}, {tuple(v_UO.shape)}"
            )
        self._w.append(w_UI)
        self._b.append(b_U)
        self._v.append(v_UO)
        return self

    def read(self, w_UI: Tensor, b_U: Tensor, v_U: Tensor, dst: int, bias: float = 0.0) -> Net:
        """Add units relu(x w_u + b_u) feeding output ``dst`` with weights v_u, plus ``bias`` there."""
        v_UO = torch.zeros(len(v_U), self.d_out, dtype=_F64)
        v_UO[:, dst] = torch.as_tensor(v_U, dtype=_F64)
        self.bias[dst] += bias
        return self.units(w_UI, b_U, v_UO)

    def carry(self, src: int, dst: int, width: int = 1, *, lower: float | None = None) -> Net:
        """Pass inputs src..src+width-1 through to outputs dst..dst+width-1 unchanged.

        ``lower=None`` uses z = relu(z) - relu(-z) (two units each, exact everywhere); a number
        uses z = relu(z - lower) + lower (one unit each, exact for z >= lower).
        """
        eye = torch.zeros(width, self.d_in, dtype=_F64)
        eye[:, src:src + width] = torch.eye(width, dtype=_F64)
        out = torch.zeros(width, self.d_out, dtype=_F64)
        out[:, dst:dst + width] = torch.eye(width, dtype=_F64)
        if lower is None:
            zero = torch.zeros(width, dtype=_F64)
            return self.units(eye, zero, out).units(-eye, zero, -out)
        self.bias[dst:dst + width] += lower
        return self.units(eye, torch.full((width,), -float(lower), dtype=_F64), out)

    def affine_maps(self, hidden: int | None = None) -> list[Affine]:
        """[(W1 (d_in, H), b1 (H,)), (W2 (H, d_out), b2 (d_out,))], padded with zero units to H."""
        H = self.hidden if hidden is None else hidden
        if H < self.hidden:
            raise ValueError(f"hidden={H} is smaller than the {self.hidden} units of this net")
        w = torch.cat(self._w) if self._w else torch.zeros(0, self.d_in, dtype=_F64)
        b = torch.cat(self._b) if self._b else torch.zeros(0, dtype=_F64)
        v = torch.cat(self._v) if self._v else torch.zeros(0, self.d_out, dtype=_F64)
        pad = H - self.hidden
        w = torch.cat([w, torch.zeros(pad, self.d_in, dtype=_F64)])
        b = torch.cat([b, torch.zeros(pad, dtype=_F64)])
        v = torch.cat([v, torch.zeros(pad, self.d_out, dtype=_F64)])
        return [(w.T.contiguous(), b), (v, self.bias.clone())]

    def __call__(self, x_nI: Tensor) -> Tensor:
        """Evaluate the net (float64) on (n, d_in) inputs: the reference for the written weights."""
        (w1, b1), (w2, b2) = self.affine_maps()
        return torch.relu(x_nI.to(_F64) @ w1 + b1) @ w2 + b2


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One MoE layer: its widths, each expert's affine maps, and its router.

    ``experts[e]`` is expert e's list of affine maps (all experts the same depth; hidden widths may
    differ and are padded). ``router`` is a linear router (W (I, E), b (E,) or None for the paper's
    bias-free g(x) = W_R x); ``mlp_router``, if given instead, is the list of affine maps of a ReLU
    network router (the paper's suggestion 1).
    """

    d_in: int
    d_out: int
    experts: tuple[list[Affine], ...]
    router: tuple[Tensor, Tensor | None] | None = None
    mlp_router: list[Affine] | None = field(default=None)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def expert_depth(self) -> int:
        return len(self.experts[0])

    @property
    def hidden(self) -> int:
        return max(max((w.shape[1] for w, _ in maps[:-1]), default=1) for maps in self.experts)

    def config(self) -> MoEConfig:
        experts = ExpertConfig(depth=self.expert_depth, hidden=max(self.hidden, 1))
        if self.mlp_router is not None:
            router = RouterConfig(top_k=1, weighting="paper", scorer="mlp", bias=True,
                                  depth=len(self.mlp_router), hidden=self.mlp_router[0][0].shape[1])
        else:
            bias = self.router is not None and self.router[1] is not None
            router = RouterConfig(top_k=1, weighting="paper", scorer="linear", bias=bias)
        return MoEConfig(num_experts=self.num_experts, router=router, experts=experts)


def _pad(maps: list[Affine], hidden: int) -> list[Affine]:
    """Pad every hidden width of one expert's affine maps to ``hidden`` with zero units."""
    out = []
    for k, (w, b) in enumerate(maps):
        rows = w.shape[0] if k == 0 else hidden
        cols = w.shape[1] if k == len(maps) - 1 else hidden
        w_pad = torch.zeros(rows, cols, dtype=_F64)
        w_pad[: w.shape[0], : w.shape[1]] = w
        b_pad = torch.zeros(cols, dtype=_F64)
        b_pad[: b.shape[0]] = b
        out.append((w_pad, b_pad))
    return out


@torch.no_grad()
def write_layer(layer: MoELayer, spec: LayerSpec) -> MoELayer:
    """Copy ``spec``'s expert and router weights into ``layer`` (built from ``spec.config()``)."""
    H = layer.config.experts.hidden
    for e, maps in enumerate(spec.experts):
        for k, (w, b) in enumerate(_pad(maps, H)):
            layer.experts.weights[k][e].copy_(w)
            layer.experts.biases[k][e].copy_(b)
    scorer = layer.router.scorer
    if spec.mlp_router is not None:
        for linear, (w, b) in zip(scorer.linears, spec.mlp_router, strict=True):
            linear.weight.copy_(w.T)
            linear.bias.copy_(b)
        return layer
    if spec.router is None:  # a dense layer written as MoE: every expert is the same, any choice does
        scorer.weight.zero_()
        if scorer.bias is not None:
            scorer.bias.zero_()
        return layer
    w, b = spec.router
    scorer.weight.copy_(w.T)
    if b is not None:
        scorer.bias.copy_(b)
    return layer


def build_layer(spec: LayerSpec, dtype: torch.dtype = _F64) -> MoELayer:
    """A :class:`MoELayer` with the weights of ``spec``, in ``dtype``."""
    layer = MoELayer(spec.d_in, spec.d_out, spec.config()).to(_F64)
    return write_layer(layer, spec).to(dtype).eval()


def build_stack(specs: Sequence[LayerSpec], dtype: torch.dtype = _F64) -> DeepMoE:
    """A plain :class:`DeepMoE` (no residuals) whose layer i has the weights of ``specs[i]``."""
    for a, b in zip(specs, specs[1:], strict=False):
        if a.d_out != b.d_in:
            raise ValueError(f"layer widths do not chain: {a.d_out} -> {b.d_in}")
    widths = [specs[0].d_in] + [s.d_out for s in specs]
    model = DeepMoE(widths, [s.config() for s in specs]).to(_F64)
    for layer, spec in zip(model.layers, specs, strict=True):
        write_layer(layer, spec)
    return model.to(dtype).eval()


def dense_spec(net: Net, copies: int = 1) -> LayerSpec:
    """A layer whose ``copies`` experts all equal ``net``: routing there changes nothing."""
    maps = net.affine_maps()
    return LayerSpec(net.d_in, net.d_out, tuple(maps for _ in range(copies)), router=None)


def choice_layers(L: int) -> list[int]:
    """The choice layers 2l + 1 (l < L) of a depth-2L construction: the layers whose routers pick a
    piece or chart of block l (layer 2l computes the routing features)."""
    return list(range(1, 2 * L, 2))


def choice_spec(width: int, d_out: int, experts: tuple[list[Affine], ...]) -> LayerSpec:
    """A choice layer: its input is a state of width ``width`` followed by E = len(experts) routing
    scores, and its router picks the expert of the largest score, the paper's bias-free
    W_R = [0 | I] (logits are inputs width..width+E-1)."""
    E = len(experts)
    w = torch.zeros(width + E, E, dtype=_F64)
    w[width:] = torch.eye(E, dtype=_F64)
    return LayerSpec(width + E, d_out, experts, router=(w, None))
