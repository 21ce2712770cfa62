"""Data-dependent initialisation of routers: start top-1 routing as a balanced Voronoi partition."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moelab._validation import positive_float, positive_int
from moelab.layers.moe import MoELayer


def kmeans(x: Tensor, k: int, *, iters: int = 30, generator: torch.Generator | None = None
           ) -> Tensor:
    """k-means centroids (k, D) of the rows of x (n, D): k-means++ seeding, then Lloyd steps.

    An empty cluster keeps its previous centroid.
    """
    k = positive_int("k", k)
    if x.dim() != 2 or x.shape[0] < k:
        raise ValueError(f"x must have shape (n, D) with n >= k={k}, got {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    first = torch.randint(x.shape[0], (1,), generator=generator)
    centroids = x[first]
    for _ in range(1, k):
        d2 = torch.cdist(x, centroids).square().min(dim=1).values
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        nxt = torch.multinomial(probs, 1, generator=generator)
        centroids = torch.cat([centroids, x[nxt]])
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        if torch.allclose(moved, centroids):
            break
        centroids = moved
    return centroids


@torch.no_grad()
def init_routers_kmeans(model: nn.Module, x: Tensor, *, scale: float = 1.0,
                        generator: torch.Generator | None = None) -> None:
    """Set every linear router in ``model`` so that top-1 routing starts as the Voronoi partition of
    k-means centroids of that layer's inputs: logit_e(h) = scale * (c_e . h - |c_e|^2 / 2), whose
    argmax is the nearest centroid. Layers are initialised in order, each on the inputs it receives
    after the layers before it were initialised. Needs linear routers with a bias.
    """
    scale = positive_float("scale", scale)
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    for layer in layers:
        scorer = layer.router.scorer
        if not isinstance(scorer, nn.Linear) or scorer.bias is None:
            raise ValueError("init_routers_kmeans needs linear routers with a bias "
                             f"(router='linear', router_bias=True), got {layer.router.scorer_kind}")
        captured: list[Tensor] = []
        hook = layer.register_forward_pre_hook(lambda _m, args, seen=captured: seen.append(args[0]))
        was_training = model.training
        model.eval()
        try:
            model(x)
        finally:
            hook.remove()
            model.train(was_training)
        h = captured[0].reshape(-1, layer.d_in)
        c = kmeans(h, layer.num_experts, generator=generator)
        scorer.weight.copy_((scale * c).to(scorer.weight.dtype))
        scorer.bias.copy_((-scale * c.square().sum(1) / 2).to(scorer.bias.dtype))
