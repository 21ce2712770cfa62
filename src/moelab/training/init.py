"""Data-dependent initialisation: routers start as a balanced Voronoi partition of the data, expert
hidden units start with their ReLU kinks on the data they will see.

:func:`data_init` is moelab's "best recipe" initialisation (docs/experiments.md explains how it was
chosen). Every step is defined from the data and from a generator that does not depend on the input
width, so on zero-padded inputs (the paper's embedding of the circle in R^D) the initial network —
and, because padded coordinates receive exactly zero gradient, the whole training run — is the
same for every D.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from moelab._validation import positive_float, positive_int
from moelab.layers.experts import Experts
from moelab.layers.mlp import MLP
from moelab.layers.moe import MoELayer


def kmeans(x: Tensor, k: int, *, iters: int = 50, generator: torch.Generator | None = None
           ) -> tuple[Tensor, Tensor]:
    """k-means of the rows of x (n, D): (centroids (k, D), labels (n,)). k-means++ seeding, then
    Lloyd steps until the centroids stop moving; an empty cluster keeps its previous centroid."""
    k = positive_int("k", k)
    if x.dim() != 2 or x.shape[0] < k:
        raise ValueError(f"x must have shape (n, D) with n >= k={k}, got {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    centroids = x[torch.randint(x.shape[0], (1,), generator=generator)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centroids).square().min(dim=1).values
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        centroids = torch.cat([centroids, x[torch.multinomial(probs, 1, generator=generator)]])
    labels = torch.cdist(x, centroids).argmin(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        labels = torch.cdist(x, moved).argmin(dim=1)
        if torch.allclose(moved, centroids):
            break
        centroids = moved
    return centroids, labels


def _layer_inputs(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """What ``layer`` receives when ``model`` runs on x (eval mode, no gradient)."""
    seen: list[Tensor] = []
    hook = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        hook.remove()
        model.train(was_training)
    return seen[0].reshape(-1, seen[0].shape[-1])


def _voronoi_router(layer: MoELayer, h: Tensor, scale: float, generator) -> Tensor:
    """Set a linear router to logit_e(h) = s (c_e . h - |c_e|^2 / 2), s = scale / mean within-cluster
    squared distance, whose argmax is the nearest k-means centroid; return the cluster labels."""
    centroids, labels = kmeans(h, layer.num_experts, generator=generator)
    scorer = layer.router.scorer
    spread = (h.double() - centroids[labels]).square().sum(1).mean().clamp_min(1e-12)
    s = scale / spread
    scorer.weight.copy_((s * centroids).to(scorer.weight.dtype))
    scorer.bias.copy_((-s * centroids.square().sum(1) / 2).to(scorer.bias.dtype))
    return labels


def _data_hidden_layer(w_IM: Tensor, b_M: Tensor, h_all: Tensor, h_own: Tensor, generator) -> None:
    """Hidden unit j: a Gaussian direction in the span of the centred data (h_all^T g / sqrt(n)),
    scaled to unit spread over the expert's own points h_own, with its kink at one of them."""
    n, m = h_all.shape[0], w_IM.shape[1]
    hc = (h_all - h_all.mean(0)).double()
    w = hc.t() @ torch.randn(n, m, generator=generator, dtype=torch.float64) / math.sqrt(n)
    z = h_own.double() @ w
    sd = z.std(0).clamp_min(1e-8)
    w, z = w / sd, z / sd
    pick = torch.randint(h_own.shape[0], (m,), generator=generator)
    w_IM.copy_(w.to(w_IM.dtype))
    b_M.copy_((-z[pick, torch.arange(m)]).to(b_M.dtype))


def _uniform_(t: Tensor, fan_in: int, generator) -> None:
    bound = 1 / math.sqrt(fan_in)
    t.copy_((torch.rand(t.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)


def _pass_through(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, width: int) -> None:
    """Output channels i < width carry input coordinate i through hidden units 2i, 2i + 1:
    x_i = relu(x_i) - relu(-x_i) (the paper's constructions carry state this way)."""
    w1[:, : 2 * width] = 0
    b1[: 2 * width] = 0
    w2[: 2 * width, :] = 0
    w2[:, :width] = 0
    b2[:width] = 0
    for i in range(width):
        w1[i, 2 * i], w1[i, 2 * i + 1] = 1.0, -1.0
        w2[2 * i, i], w2[2 * i + 1, i] = 1.0, -1.0


def _two_layer_relu(bank: nn.Module) -> bool:
    """Whether ``bank`` is a bank of two-layer, ungated ReLU experts with biases."""
    return (type(bank) is Experts and bank.depth == 2 and not bank.gated
            and bank.biases is not None and bank.activation == "relu")


@torch.no_grad()
def data_init(model: nn.Module, x: Tensor, *, generator: torch.Generator,
              router_scale: float = 4.0, pass_through: bool = True) -> None:
    """Initialise ``model`` from a batch of its inputs x (n, d_in), layer by layer (in place).

    * Linear routers with a bias: the Voronoi partition of k-means centroids of the layer's inputs
      (balanced by construction; with ``weighting="paper"`` top-1 routing the router receives no
      gradient and keeps this partition).
    * Two-layer ReLU experts (and two-layer dense MLPs): each hidden unit gets a Gaussian direction
      in the span of the data, unit spread over the points routed to that expert, and its kink at
      one of them; the read-out is U(+-1/sqrt(m)) from ``generator``.
    * With ``pass_through``, experts of every MoE layer but the last also carry the layer's first
      d_in input coordinates to their first d_in outputs (needs d_out >= d_in and m >= 2 d_in), so
      a deep stack starts by passing its input on (state carrying as in the paper's constructions).
    Other layers (MLP routers, gated or deeper experts, low-dimensional experts) keep their default
    initialisation. Layers are initialised in order, each on what it receives from those before.
    """
    router_scale = positive_float("router_scale", router_scale)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (n, d_in), got {tuple(x.shape)}")
    layers = [m for m in model.modules() if isinstance(m, (MoELayer, MLP))]
    layers = [m for m in layers if not any(m is r.router.scorer for r in layers
                                           if isinstance(r, MoELayer))]
    moe_layers = [m for m in layers if isinstance(m, MoELayer)]
    for layer in layers:
        h = _layer_inputs(model, layer, x)
        if isinstance(layer, MLP):
            if layer.depth == 2 and layer.linears[0].bias is not None and layer.activation == "relu":
                first, second = layer.linears
                _data_hidden_layer(first.weight.t(), first.bias, h, h, generator)
                _uniform_(second.weight, layer.hidden, generator)
                _uniform_(second.bias, layer.hidden, generator)
            continue
        scorer = layer.router.scorer
        if isinstance(scorer, nn.Linear) and scorer.bias is not None:
            labels = _voronoi_router(layer, h, router_scale, generator)
        else:
            labels = layer.router(h).top1()
        bank = layer.experts
        if not _two_layer_relu(bank):
            continue
        carry = pass_through and layer is not moe_layers[-1]
        for e in range(bank.num_experts):
            own = h[labels == e]
            own = own if own.shape[0] >= 8 else h
            w1, b1 = bank.weights[0][e], bank.biases[0][e]
            w2, b2 = bank.weights[1][e], bank.biases[1][e]
            _data_hidden_layer(w1, b1, h, own, generator)
            _uniform_(w2, bank.hidden, generator)
            _uniform_(b2, bank.hidden, generator)
            if carry and bank.d_out >= bank.d_in and bank.hidden >= 2 * bank.d_in:
                _pass_through(w1, b1, w2, b2, bank.d_in)
