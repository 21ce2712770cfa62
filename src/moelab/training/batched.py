"""Training many runs of one model shape at once, as one model with a leading model axis.

A step of the paper's models is a few kernels on tiny matrices: alone, its cost is per-operation
overhead, not arithmetic. N runs that share a shape (seeds, learning rates, tasks, output
variants) therefore train as one :class:`StackedMoE` whose every tensor has a leading axis of N
*members*: one batched matmul per affine map for all members, one Adam update for all parameters.
Nothing mixes members: each member's loss is its own mean squared error, the loss minimised is
their sum (so each member's gradient is exactly its own), and Adam is elementwise (so one update
over the stacked parameters is N independent Adams, with a per-member learning rate).

Members may differ in their layer widths: each width is zero-padded to the members' largest.
Padding is exact: a zero input coordinate gives its weights zero gradient, a hidden unit with zero
weights and bias stays at ReLU(0) = 0 with zero gradient, and a padded output channel predicts 0
against a target padded with 0 (the member's mean divides by its own output width). Each member's
data come from its own sampler and generator, drawn exactly as :func:`~moelab.training.train`
draws them; members whose ``stream`` keys are equal draw identical data, so it is drawn once.

What stacks (:func:`alone_reason` says why something does not): :class:`~moelab.layers.DeepMoE`
stacks composed plainly, each layer a linear router with a bias, token-choice top-1 routing with
the paper's or the switch weighting, no noise, no capacity limit, no balance bias, and two-layer
ReLU experts with biases; trained by Adam without weight decay on fresh samples, with no auxiliary
loss. Members may differ in seed, data, learning rate, schedule, warm-up and weighting; they share
steps, batch size and logging. Everything else trains alone, through the ordinary loop.

Equivalence: a member follows the run :func:`~moelab.training.train` makes of the same model,
sampler, config and seed to float32 rounding (the same arithmetic, batched and in another order):
about 1e-7 relative after a few hundred steps; a hard routing decision that such a rounding flips
can move one member further (tests/training/test_batched.py states the tolerances).

Shape legend: N members, B batch rows, I input width, E experts, H hidden width, O output width,
P parameters per member (padded). Activations keep the rows last, (N, width, B) (see
:func:`_maps_backward` for why).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moelab.layers.config import MoEConfig
from moelab.layers.experts import Experts
from moelab.layers.moe import MoELayer
from moelab.layers.stack import DeepMoE
from moelab.training.loop import (
    Metrics,
    Sampler,
    TrainConfig,
    TrainResult,
    _checked_pair,
    _evaluates_after,
    _logs_at,
    _lr_factor,
    _test_pair,
    evaluate,
    warn_if_routers_cannot_learn,
)
from moelab.training.metrics import stacked_router_metrics

#: Fresh batches are drawn this many at a time, as :func:`~moelab.training.train` draws them.
CHUNK = 64
#: Adam's defaults, as torch.optim.Adam has them.
BETAS, EPS = (0.9, 0.999), 1e-8
#: The smallest normal float32.
FLT_MIN = torch.finfo(torch.float32).tiny
#: Set to "1" to compile the batched loss with torch.compile (see docs/experiments.md).
COMPILE_ENV = "MOELAB_COMPILE"


def layer_alone_reason(config: MoEConfig) -> str | None:
    """Why an MoE layer of ``config`` cannot be stacked, or None if it can."""
    r, e = config.router, config.experts
    checks = (
        (r.scorer == "linear" and r.bias, "the router is not linear with a bias"),
        (r.routing == "token_choice" and r.top_k == 1, "routing is not token-choice top-1"),
        (r.weighting in ("paper", "switch"), f"weighting={r.weighting!r}"),
        (r.scaling == 1.0, f"routed scaling {r.scaling}"),
        (r.groups == 1, "group-limited routing"),
        (r.noise == "none", f"router noise {r.noise!r}"),
        (r.capacity_factor is None, "a capacity limit"),
        (not r.balance_bias, "a balance bias"),
        (e.depth == 2 and not e.gated and e.activation == "relu" and e.bias
         and e.latent_dim is None, "experts other than two-layer ReLU with biases"),
        (e.kind == "ffn", f"an expert bank of kind {e.kind!r}"),
        (not config.shared_experts, "shared experts"),
    )
    return next((why for ok, why in checks if not ok), None)


def train_alone_reason(config: TrainConfig) -> str | None:
    """Why a run trained by ``config`` cannot be stacked, or None if it can."""
    checks = (
        (config.optimizer == "adam" and config.weight_decay == 0, "not Adam without weight decay"),
        (not any(config.aux_weights.values()), "auxiliary losses"),
        (config.balance_bias_rate == 0, "balance-bias updates"),
        (config.train_size == 0, "a fixed training set"),
        (config.tensorboard_dir is None and config.jsonl_path is None, "streamed rows"),
        (config.method.is_plain, _method_label(config)),
    )
    return next((why for ok, why in checks if not ok), None)


def _method_label(config: TrainConfig) -> str:
    """The training method of :mod:`moelab.training.recipes` a config asks for, in words."""
    method = config.method
    restarts = f" with {method.restarts} restarts" if method.restarts > 1 else ""
    return f"training method {method.name!r}{restarts}"


def alone_reason(model: nn.Module, config: TrainConfig) -> str | None:
    """Why ``model`` trained by ``config`` must train alone, or None if it can be a member."""
    if not isinstance(model, DeepMoE):
        return f"a {type(model).__name__}, not a DeepMoE"
    if model.residual or model.moe_every != 1:
        return "a residual or dense-interleaved stack"
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return "parameters that are not float32"
    for cfg in model.config.layer_configs:
        if (why := layer_alone_reason(cfg)) is not None:
            return why
    return train_alone_reason(config)


@dataclass(frozen=True)
class Member:
    """One run of a batch: its model (trained in place), data, config and seed, as
    :func:`~moelab.training.train` takes them. Members with equal ``stream`` keys (not None) must
    draw identical data (same sampler and seed); their data are drawn once."""

    model: DeepMoE
    sampler: Sampler
    config: TrainConfig
    seed: int
    stream: Hashable | None = None
    #: The input coordinates the sampler can make nonzero (None: all). The others are always
    #: exactly 0 (e.g. the zero padding of a manifold embedded in R^D): their weights get exactly
    #: zero gradient and never move, so the stacked model leaves them out.
    inputs: Tensor | None = None


@dataclass(frozen=True)
class _Slot:
    """Where one member tensor lives in a row of the flat parameters: columns [start, stop),
    viewed as ``shape`` (without the member axis)."""

    start: int
    shape: tuple[int, ...]

    @property
    def stop(self) -> int:
        return self.start + math.prod(self.shape)


def _maps_forward(x: Tensor, w1: Tensor, w2: Tensor, b2: Tensor, a: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Every member's two expert maps with tokens in the last axis: pre = w1^T x, a = ReLU(pre),
    y = w2 a + b2, for x (N, K, B), w1 (N, K, H), w2 (N, C, H), b2 (N, C) -> y (N, C, B) and the
    hidden units a (N, H, B)."""
    a = torch.bmm(w1.transpose(1, 2), x, out=a).relu_()  # (N, H, B)
    return torch.baddbmm(b2[:, :, None], w2, a), a


def _maps_backward(g_y: Tensor, x: Tensor, w1: Tensor, w2: Tensor, a: Tensor, needs_x: bool,
                   g_a: Tensor | None = None) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """The gradients of x (None unless ``needs_x``), w1, w2 and b2 of :func:`_maps_forward` from
    that of y. Every product has the small width (K or C) on its rows: with tokens in the last
    axis each matmul is a short-and-wide product, the shape the CPU's batched GEMM does fastest
    (a tall-and-narrow one, e.g. autograd's (H, B) x (B, K) for w1's gradient, runs several
    times slower for the same arithmetic)."""
    g_w2 = torch.bmm(g_y, a.transpose(1, 2))  # (N, C, H)
    g_a = torch.bmm(w2.transpose(1, 2), g_y, out=g_a)
    # In place: a fresh (N, H, B) buffer costs more than the mask (page faults on CPU).
    g_pre = torch.ops.aten.threshold_backward.grad_input(g_a, a, 0, grad_input=g_a)
    g_w1 = torch.bmm(x, g_pre.transpose(1, 2))  # (N, K, H)
    g_x = torch.bmm(w1, g_pre) if needs_x else None
    return g_x, g_w1, g_w2, g_y.sum(2)


def _layer_forward(h: Tensor, wr: Tensor, br: Tensor, w1: Tensor, w2: Tensor, b2: Tensor,
                   switch: Tensor | None, a: Tensor | None = None
                   ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """One stacked MoE layer (see :class:`StackedMoE`): h (N, I, B) and the layer's parameters
    (wr (N, E, I), br (N, E), w1 (N, E * (I + 1), H), w2 (N, E * O, H), b2 (N, E * O)) -> the
    output (N, O, B), the routes (logits (N, E, B), probs, ids (N, 1, B)) and what
    :func:`_layer_backward` needs. ``switch`` (N, 1, 1), bool: the members whose routers train
    (switch weighting); None if none do."""
    N, _, B = h.shape
    E = wr.shape[1]
    logits = torch.baddbmm(br[:, :, None], wr, h)  # (N, E, B)
    probs = logits.softmax(1)
    ids = probs.topk(1, dim=1, sorted=True).indices  # (N, 1, B)
    onehot = torch.zeros_like(probs).scatter_(1, ids, 1.0)
    if switch is not None:  # switch members weight by the selected probability
        picked = torch.zeros(N, E, B, dtype=torch.bool).scatter_(1, ids, switch.expand(N, 1, B))
        w_NEB = torch.where(picked, probs, onehot)
    else:  # paper weighting (top-1): the weight is exactly 1 and the router gets no gradient
        picked, w_NEB = None, onehot
    h1 = torch.cat([h, h.new_ones(N, 1, B)], 1)  # (N, I + 1, B)
    h_exp = (onehot[:, :, None, :] * h1[:, None]).view(N, -1, B)  # (N, E*(I+1), B)
    y_all, a = _maps_forward(h_exp, w1, w2, b2, a)
    y_all4 = y_all.view(N, E, -1, B)
    out = (y_all4 * w_NEB[:, :, None, :]).sum(1)
    return out, (logits, probs, ids), (h, wr, w1, w2, a, h_exp, y_all4, w_NEB, onehot, probs, picked)


def _layer_backward(g_out: Tensor, saved: Sequence[Tensor | None], needs_h: bool,
                    g_a: Tensor | None = None) -> tuple[Tensor | None, ...]:
    """The gradients of h (None unless ``needs_h``), wr, br (None unless a router trains), w1, w2
    and b2 of :func:`_layer_forward` from that of its output: the operations autograd runs for
    the forward pass written op by op, on the same operands (so the same bits)."""
    h, wr, w1, w2, a, h_exp, y_all4, w_NEB, onehot, probs, picked = saved
    N, E, O, B = y_all4.shape
    g_prod = g_out.unsqueeze(1).expand(N, E, O, B)  # the sum over experts
    g_y = (g_prod * w_NEB[:, :, None, :]).reshape(N, E * O, B)
    g_x, g_w1, g_w2, g_b2 = _maps_backward(g_y, h_exp, w1, w2, a, needs_h, g_a)
    g_h = g_wr = g_br = None
    if needs_h:  # through the expert's input [h, 1], placed in its expert's block
        g_h1 = (g_x.reshape(N, E, -1, B) * onehot[:, :, None, :]).sum(1, keepdim=True)
        g_h = g_h1.squeeze(1).narrow(1, 0, h.shape[1])
    if picked is not None:  # the switch members' routers
        g_w = (g_prod * y_all4).sum(2, keepdim=True).squeeze(2)
        g_logits = torch._softmax_backward_data(torch.where(picked, g_w, 0), probs, 1,
                                                probs.dtype)
        g_br = g_logits.sum(2, keepdim=True).squeeze(2)
        g_wr = g_logits.bmm(h.transpose(1, 2))
        if needs_h:
            g_h = g_h + wr.transpose(1, 2).bmm(g_logits)
    return g_h, g_wr, g_br, g_w1, g_w2, g_b2


def _buffer(workspace: dict | None, name: str, shape: tuple[int, ...], dtype: torch.dtype
            ) -> Tensor | None:
    """The buffer ``workspace`` keeps under ``name``, or None (allocate afresh) without a
    workspace or while torch.compile traces the step. The hidden units (N, H, B) are the step's
    largest tensors: allocated afresh each step, at N = 60 and H = 128 they cost about a thousand
    page faults a step (the allocator hands such blocks back to the system when they are freed)
    and 8% of the step's time."""
    if workspace is None or torch.compiler.is_compiling():
        return None
    key = (name, shape, dtype)
    if key not in workspace:
        workspace[key] = torch.empty(shape, dtype=dtype)
    return workspace[key]


class _Stack(torch.autograd.Function):
    """A :class:`StackedMoE`'s forward pass as one autograd node: x (N, I, B) and the flat
    parameters (N, P) -> y (N, O, B) and, per layer, the routes (no gradient).

    A step of the paper's small models is per-operation overhead: written op by op, each layer
    recorded some thirty autograd nodes (the parameters' views, broadcasts, the routing's where,
    the softmax, the router's baddbmm) whose backward passes cost the engine more than their
    arithmetic. The backward pass here runs, layer by layer, the operations autograd ran for that
    op-by-op forward pass, on the same operands, and gathers the parameters' gradients into one
    (N, P) tensor as autograd's split did: the same bits, without the engine's overhead."""

    @staticmethod
    def forward(ctx, x: Tensor, flat: Tensor, model: StackedMoE, workspace: dict | None):
        ctx.set_materialize_grads(False)
        ctx.model, ctx.workspace = model, workspace
        h, routes, saved = x, [], []
        N, _, B = x.shape
        for i, (p, switch) in enumerate(zip(model.parameter_views(flat), model.switch_masks,
                                            strict=True)):
            a = _buffer(workspace, f"a{i}", (N, p[2].shape[-1], B), x.dtype)
            h, route, keep = _layer_forward(h, *p, switch, a)
            routes += route
            saved += keep
        ctx.per_layer = len(keep)  # tensors saved per layer
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(*routes)
        return (h, *routes)

    @staticmethod
    def backward(ctx, g_y: Tensor | None, *_):
        if g_y is None:  # the output took no part in the loss
            return None, None, None, None
        model, saved = ctx.model, ctx.saved_tensors
        N, layers = g_y.shape[0], len(model.slots)
        grads: list[Tensor | None] = []
        g = g_y
        for i in reversed(range(layers)):
            layer = saved[i * ctx.per_layer:(i + 1) * ctx.per_layer]
            g_a = _buffer(ctx.workspace, "g_a", layer[4].shape, g.dtype)  # like a (N, H, B)
            g, *layer_grads = _layer_backward(g, layer, i > 0 or ctx.needs_input_grad[0], g_a)
            grads = layer_grads + grads
        sizes = model.sizes
        g_flat = torch.cat([g_y.new_zeros(N, size) if t is None else t.reshape(N, size)
                            for t, size in zip(grads, sizes, strict=True)], 1)
        return g, g_flat, None, None


class StackedMoE:
    """N :class:`~moelab.layers.DeepMoE` stacks of one shape as one model with a member axis.

    The parameters of all members are one (N, P) tensor :attr:`flat`; each layer's tensors are
    views of its columns: router ``wr`` (E, I) and ``br`` (E,); first maps ``w1`` (E, I + 1, H),
    expert e's weight (I, H) with its bias as row I; second maps ``w2`` (E, O, H) and ``b2``
    (E, O). Activations keep the tokens in the last axis, (N, width, B) (see
    :func:`_maps_backward`); the whole forward pass is one autograd node (:class:`_Stack`).

    Top-1 routing runs only the chosen expert's hidden units, with two small matmuls per layer:
    the input, with a 1 appended, is placed in its expert's block of an (E * (I + 1))-long column
    (zeros elsewhere), so one matmul with ``w1`` gives the chosen expert's pre-activations (N, H, B);
    the hidden units then go through every expert's second map (E * O rows, few), and the
    chosen expert's rows are kept, times its combine weight. The zeros add exact zeros and give
    the other experts exact zero gradient, so this is the dense mix of
    :meth:`~moelab.layers.experts.Experts.forward_mixed` without its E-fold hidden tensor.
    """

    def __init__(self, models: Sequence[DeepMoE],
                 inputs: Sequence[Tensor | None] | None = None) -> None:
        if not models:
            raise ValueError("models must hold at least one DeepMoE")
        depth = {len(m.layers) for m in models}
        shape = {tuple((l.num_experts, l.experts.hidden) for l in m.moe_layers) for m in models}
        if len(depth) != 1 or len(shape) != 1:
            raise ValueError("members must have the same number of layers and, per layer, the same "
                             f"experts and hidden width; got {sorted(shape)}")
        self.n = len(models)
        inputs = [None] * self.n if inputs is None else list(inputs)
        #: per member, the input coordinates kept (the others are always 0)
        self.inputs = [torch.arange(m.d_in) if a is None else a.long()
                       for m, a in zip(models, inputs, strict=True)]
        self.widths = [max(m.widths[i] for m in models) for i in range(len(models[0].widths))]
        self.widths[0] = max(len(a) for a in self.inputs)
        self.out_widths = torch.tensor([m.d_out for m in models])
        self.switch = torch.tensor([[l.router.weighting == "switch" for l in m.moe_layers]
                                    for m in models])  # (N, layers)
        #: per layer, (N, 1, 1): the members whose routers train, or None if none do
        self.switch_masks = [s[:, None, None] if s.any() else None for s in self.switch.unbind(1)]
        self.experts = [E for E, _ in next(iter(shape))]
        self.slots: list[dict[str, _Slot]] = []
        start = 0
        for i, (E, H) in enumerate(next(iter(shape))):
            I, O = self.widths[i], self.widths[i + 1]
            layer = {}
            for name, s in (("wr", (E, I)), ("br", (E,)), ("w1", (E, I + 1, H)),
                            ("w2", (E, O, H)), ("b2", (E, O))):
                layer[name] = _Slot(start, s)
                start = layer[name].stop
            self.slots.append(layer)
        self.flat = torch.zeros(self.n, start)
        for n, model in enumerate(models):
            self._load(n, model)
        self.flat.requires_grad_(True)

    def _member_views(self, n: int) -> list[dict[str, Tensor]]:
        row = self.flat[n]
        return [{k: row[s.start:s.stop].view(s.shape) for k, s in layer.items()}
                for layer in self.slots]

    def _rows(self, n: int, i: int, layer: MoELayer) -> Tensor:
        """The input coordinates of member n's layer i held in the stacked model."""
        return self.inputs[n] if i == 0 else torch.arange(layer.d_in)

    @torch.no_grad()
    def _load(self, n: int, model: DeepMoE) -> None:
        for i, (v, layer) in enumerate(zip(self._member_views(n), model.moe_layers, strict=True)):
            bank = layer.experts
            assert type(bank) is Experts
            rows, O = self._rows(n, i, layer), layer.d_out
            I = len(rows)
            v["wr"][:, :I] = layer.router.scorer.weight[:, rows]
            v["br"].copy_(layer.router.scorer.bias)
            v["w1"][:, :I] = bank.weight1[:, rows]
            v["w1"][:, -1] = bank.bias1
            v["w2"][:, :O] = bank.weight2.transpose(1, 2)
            v["b2"][:, :O] = bank.bias2

    @torch.no_grad()
    def unstack(self, n: int, model: DeepMoE) -> None:
        """Copy member n's parameters (without padding) into ``model``, a stack of its shape."""
        for i, (v, layer) in enumerate(zip(self._member_views(n), model.moe_layers, strict=True)):
            bank = layer.experts
            rows, O = self._rows(n, i, layer), layer.d_out
            I = len(rows)
            layer.router.scorer.weight[:, rows] = v["wr"][:, :I]
            layer.router.scorer.bias.copy_(v["br"])
            bank.weight1[:, rows] = v["w1"][:, :I]
            bank.bias1.copy_(v["w1"][:, -1])
            bank.weight2.copy_(v["w2"][:, :O].transpose(1, 2))
            bank.bias2.copy_(v["b2"][:, :O])

    @property
    def sizes(self) -> list[int]:
        """The widths of the parameter tensors' column blocks in :attr:`flat`, in order."""
        return [s.stop - s.start for layer in self.slots for s in layer.values()]

    def parameter_views(self, flat: Tensor) -> list[tuple[Tensor, ...]]:
        """Per layer, views of ``flat`` (N, P) as the layer computes with them: wr (N, E, I),
        br (N, E), w1 (N, E * (I + 1), H), w2 (N, E * O, H), b2 (N, E * O)."""
        N, parts, views = flat.shape[0], iter(flat.split(self.sizes, dim=1)), []
        for layer in self.slots:
            p = {name: next(parts).view(N, *s.shape) for name, s in layer.items()}
            E, O = p["w2"].shape[1:3]
            views.append((p["wr"], p["br"], p["w1"].view(N, -1, p["w1"].shape[-1]),
                          p["w2"].view(N, E * O, -1), p["b2"].view(N, E * O)))
        return views

    def forward(self, x_NIB: Tensor, workspace: dict | None = None
                ) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        """x (N, I, B) -> y (N, O, B) and, per layer, (logits (N, B, E), probs, ids (N, B, 1))
        (the routes as views with tokens before experts, as the solo router gives them).
        ``workspace``: a dict whose buffers the hidden units reuse from call to call (training
        runs each call's backward pass before the next call); None allocates them afresh."""
        h, *routes = _Stack.apply(x_NIB, self.flat, self, workspace)
        return h, [tuple(t.transpose(1, 2) for t in routes[i:i + 3])
                   for i in range(0, len(routes), 3)]


def _fitting(pair: tuple[Tensor, Tensor], n: int, model: DeepMoE, what: str
             ) -> tuple[Tensor, Tensor]:
    """(x, y) for member n's ``model``, or a ValueError before any training: x must be
    (rows, d_in) and y (rows, d_out), or (rows,) for d_out = 1 (as the loop accepts it)."""
    x, y = pair
    if x.dim() != 2 or x.shape[1] != model.d_in or y.reshape(len(y), -1).shape[1] != model.d_out:
        bad = f"x of shape {tuple(x.shape)}" if x.dim() != 2 or x.shape[1] != model.d_in \
            else f"y of shape {tuple(y.shape)}"
        raise ValueError(f"{what} {bad}, but member {n}'s model maps {model.d_in} inputs to "
                         f"{model.d_out} outputs")
    return x, y


def _losses(model: StackedMoE, x: Tensor, y: Tensor, denom_N: Tensor, workspace: dict):
    pred, routes = model.forward(x, workspace)
    mse_N = (pred - y).square().sum((1, 2)) / denom_N
    return mse_N, routes


class _Streams:
    """Every member's fresh batches, drawn per distinct stream ``CHUNK`` batches at a time and
    padded to the stacked widths: :meth:`next` gives x (N, I, B) and y (N, O, B)."""

    def __init__(self, members: Sequence[Member], inputs: Sequence[Tensor], in_width: int,
                 out_width: int) -> None:
        keys: dict[Hashable, int] = {}
        self.sources: list[tuple[Sampler, torch.Generator, Tensor, int, DeepMoE]] = []
        index = []
        for n, m in enumerate(members):
            key = ("member", n) if m.stream is None else ("stream", m.stream)
            if key not in keys:
                keys[key] = len(self.sources)
                self.sources.append((m.sampler, torch.Generator().manual_seed(m.seed), inputs[n],
                                     n, m.model))
            index.append(keys[key])
        self.index = torch.tensor(index)
        self.batch = members[0].config.batch_size
        self.widths = (in_width, out_width)
        self.x = self.y = None
        self.k = CHUNK

    def next(self) -> tuple[Tensor, Tensor]:
        if self.k == CHUNK:
            n, B = self.batch * CHUNK, self.batch
            xs = torch.zeros(len(self.sources), CHUNK, B, self.widths[0])
            ys = torch.zeros(len(self.sources), CHUNK, B, self.widths[1])
            for s, (sampler, gen, cols, member, model) in enumerate(self.sources):
                x, y = _fitting(_checked_pair(sampler(n, gen), "the sampler returned"), member,
                                model, "the sampler returned")
                if x.shape[0] != n:
                    raise ValueError(f"the sampler returned {x.shape[0]} rows when asked for {n}")
                x, y = x[:, cols].reshape(CHUNK, B, -1), y.reshape(CHUNK, B, -1)
                xs[s, :, :, : x.shape[-1]] = x
                ys[s, :, :, : y.shape[-1]] = y
            self.x = xs[self.index].permute(1, 0, 3, 2).contiguous()  # (CHUNK, N, I, B)
            self.y = ys[self.index].permute(1, 0, 3, 2).contiguous()
            self.k = 0
        self.k += 1
        return self.x[self.k - 1], self.y[self.k - 1]


def _shared(members: Sequence[Member]) -> TrainConfig:
    if not members:
        raise ValueError("train_batched needs at least one member, got none")
    first = members[0].config
    for name in ("steps", "batch_size", "log_every", "eval_every"):
        values = {getattr(m.config, name) for m in members}
        if len(values) > 1:
            raise ValueError(f"members must share train.{name}; got {sorted(values)}")
    for m in members:
        if (why := alone_reason(m.model, m.config)) is not None:
            raise ValueError(f"a member cannot be batched ({why}); train it alone")
    return first


def _adam_step(flat: Tensor, state: dict[str, Tensor], lr_N1: Tensor, step: int,
               clip_N1: Tensor | None) -> None:
    """One Adam update of every member: torch.optim.Adam's arithmetic, member n at lr_N1[n].
    ``state`` holds the moments ``m`` and ``v`` and two scratch tensors of their shape."""
    grad = flat.grad
    if clip_N1 is not None:  # clip_grad_norm_ per member: its own norm, its own threshold
        norm_N1 = grad.norm(dim=1, keepdim=True)
        grad = grad * (clip_N1 / (norm_N1 + 1e-6)).clamp(max=1.0)
    (b1, b2) = BETAS
    m, v = state["m"], state["v"]
    m.lerp_(grad, 1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    bias1, bias2_sqrt = 1 - b1**step, math.sqrt(1 - b2**step)
    # sqrt(max(v, FLT_MIN)): the CPU's vectorised square root takes a slow path for zeros (a third
    # of v is 0: untrained routers, padding) and subnormals, while sqrt(FLT_MIN) / bias2_sqrt
    # <= 3.5e-18 is below half an ulp of EPS, so denom is bit for bit what sqrt(v) gives.
    denom = torch.clamp_min(v, FLT_MIN, out=state["denom"]).sqrt_().div_(bias2_sqrt).add_(EPS)
    with torch.no_grad():
        flat.addcdiv_(torch.mul(m, lr_N1 / bias1, out=state["scaled"]), denom, value=-1)


def _adam_state(flat: Tensor) -> dict[str, Tensor]:
    return {name: torch.zeros_like(flat) for name in ("m", "v", "denom", "scaled")}


def _aux_rows(routes, experts: list[int]) -> dict[str, Tensor]:
    """Per member, the unweighted auxiliary losses the solo model logs: z_loss and load_balance,
    summed over the layers (see :mod:`moelab.losses`)."""
    z = lb = 0
    for (logits, probs, ids), E in zip(routes, experts, strict=True):
        z = z + torch.logsumexp(logits, -1).square().mean(1)
        f = torch.zeros_like(probs).scatter_(-1, ids, 1.0).mean(1)
        lb = lb + E * (f * probs.mean(1)).sum(-1)
    return {"load_balance": lb, "z_loss": z}


def _compiled(fn):
    """``fn`` compiled with ``torch.compile`` when ``MOELAB_COMPILE=1``, else ``fn`` itself. If
    compiling fails at the first call (no working C++ compiler, an unsupported op, ...), a warning
    says why and ``fn`` runs eagerly from then on; ``fn`` must be free of side effects, so that
    the failed call can be repeated."""
    if os.environ.get(COMPILE_ENV, "0") != "1":
        return fn
    compiled = torch.compile(fn, dynamic=False)
    chosen = None  # which of the two runs, once the first call has said

    def call(*args):
        nonlocal chosen
        if chosen is not None:
            return chosen(*args)
        try:
            out = compiled(*args)
        except Exception as error:  # any failure to compile means: train eagerly, and say why
            warnings.warn(f"{COMPILE_ENV}=1, but torch.compile failed ({type(error).__name__}: "
                          f"{str(error)[:300]}); training eagerly", RuntimeWarning, stacklevel=2)
            chosen = fn
            return fn(*args)
        chosen = compiled
        return out

    return call


def _test_sets(members: Sequence[Member], given: Sequence[tuple[Tensor, Tensor]] | None
               ) -> list[tuple[Tensor, Tensor]]:
    """Each member's test set: ``given[n]``, checked as :func:`~moelab.training.train` checks a
    test set, or drawn as it draws one (once a stream)."""
    if given is not None:
        if len(given) != len(members):
            raise ValueError(f"test_sets must hold one test set per member: {len(members)} "
                             f"members, {len(given)} test set(s)")
        return [_fitting(_test_pair(m.sampler, m.config, m.seed, pair), n, m.model, "test_set is")
                for n, (m, pair) in enumerate(zip(members, given, strict=True))]
    drawn: dict[Hashable, tuple[Tensor, Tensor]] = {}
    sets = []
    for n, m in enumerate(members):
        key = ("member", n) if m.stream is None else ("stream", m.stream, m.config.test_size)
        if key not in drawn:
            drawn[key] = _fitting(_test_pair(m.sampler, m.config, m.seed, None), n, m.model,
                                  "the sampler returned")
        sets.append(drawn[key])
    return sets


def _log_rows(step: int, mse_N: Tensor, lr_N: Tensor, routes, experts: list[int]
              ) -> list[dict[str, float]]:
    """Each member's history row of ``step``, with the keys :func:`~moelab.training.train` logs."""
    with torch.no_grad():
        cols = {"loss": mse_N, "mse": mse_N, "lr": lr_N, **_aux_rows(routes, experts)}
        values = {k: v.tolist() for k, v in cols.items()}
        routers = stacked_router_metrics(routes)
    return [{"step": step, **{k: v[n] for k, v in values.items()}, **routers[n]}
            for n in range(len(routers))]


def train_batched(members: Sequence[Member], *, test_sets: Sequence[tuple[Tensor, Tensor]]
                  | None = None) -> list[TrainResult]:
    """Train every member's model in place as one :class:`StackedMoE`; return one
    :class:`~moelab.training.TrainResult` per member, as :func:`~moelab.training.train` would.

    Test sets default, per member, to ``config.test_size`` samples drawn from a generator seeded
    with ``seed + 1_000_003`` (once per stream). ``seconds`` is each member's share of the wall time.
    Raises ValueError if a member cannot be batched (:func:`alone_reason`) or the members do not
    share steps, batch size and logging.
    """
    config = _shared(members)
    for m in members:
        warn_if_routers_cannot_learn(m.model, m.config)
    test_sets = _test_sets(members, test_sets)
    start = time.perf_counter()
    stacked = StackedMoE([m.model for m in members], [m.inputs for m in members])
    N, B, steps = stacked.n, config.batch_size, config.steps
    streams = _Streams(members, stacked.inputs, stacked.widths[0], stacked.widths[-1])
    denom_N = (stacked.out_widths * B).to(torch.float32)
    lrs = torch.tensor([[m.config.lr * _lr_factor(m.config, s) for m in members]
                        for s in range(steps)], dtype=torch.float64)  # (steps, N), as logged
    lrs_step = lrs.to(torch.float32)
    clips = [m.config.grad_clip for m in members]
    clip_N1 = (None if all(c is None for c in clips)
               else torch.tensor([[math.inf if c is None else c] for c in clips]))
    state = _adam_state(stacked.flat)
    loss_fn = _compiled(_losses)
    workspace: dict = {}  # the hidden units' buffers, reused from step to step
    history: list[list[dict[str, float]]] = [[] for _ in members]
    evals: list[list[dict[str, float]]] = [[] for _ in members]
    for step in range(steps):
        x, y = streams.next()
        mse_N, routes = loss_fn(stacked, x, y, denom_N, workspace)
        loss = mse_N.sum()
        if not math.isfinite(loss.item()):
            bad = [n for n, v in enumerate(mse_N.tolist()) if not math.isfinite(v)]
            raise FloatingPointError(f"training loss of members {bad} became non-finite at "
                                     f"step {step}")
        stacked.flat.grad = None
        loss.backward()
        _adam_step(stacked.flat, state, lrs_step[step, :, None], step + 1, clip_N1)
        if _logs_at(config, step):
            for rows, row in zip(history, _log_rows(step, mse_N, lrs[step], routes,
                                                    stacked.experts), strict=True):
                rows.append(row)
        if _evaluates_after(config, step):
            for n, m in enumerate(members):
                stacked.unstack(n, m.model)
                metrics = evaluate(m.model, *test_sets[n])
                evals[n].append({"step": step + 1, "test_mse": metrics.mse,
                                 "test_sup": metrics.sup_error})
    seconds = (time.perf_counter() - start) / N
    return [TrainResult(final=Metrics(mse=e[-1]["test_mse"], sup_error=e[-1]["test_sup"]),
                        history=h, evals=e, seconds=seconds) for h, e in zip(history, evals,
                                                                             strict=True)]
