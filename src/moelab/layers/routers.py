"""Routers (gating networks): score the experts, select them, weight them, enforce capacity.

The paper's router is linear, g(x) = W_R x, with top-1 selection and weights given by a softmax over
the selected logits (docs/paper.md Sec. 1). This module offers that and the common alternatives:

* scorers: ``"linear"`` (W x, bias optional) or ``"mlp"`` (a small ReLU network; the paper's
  suggestion 1: a nonlinear router can realise the partition of unity itself);
* selection: token choice (each token its top-K experts) or expert choice (each expert its top-C
  tokens, Zhou et al. 2022);
* weightings (token choice), see :data:`WEIGHTINGS`;
* noise: input jitter (Switch) or learned noisy top-k (Shazeer et al. 2017), in training mode only;
* capacity: at most C = ceil(capacity_factor * T * K / E) assignments per expert, the rest dropped;
* auxiliary-loss-free balancing (DeepSeek-V3): a per-expert bias added to the scores for selection
  only, moved by :meth:`Router.update_balance_bias`;
* the options of published models (see :class:`~moelab.layers.config.RouterConfig`): renormalised
  softmax or raw sigmoid weights with an epsilon, a routed scaling factor, group-limited top-k,
  and a router computed in float32 inside a lower-precision model.

Token choice, for one token x with logits l = g(x) (in float32 with ``float32``):

1. scores s = sigmoid(l) for the sigmoid weightings, else p = softmax(l) over all E experts;
2. selection scores c = s + b with the selection bias b (``balance_bias``), else c = s;
3. group-limited top-k (``groups`` G > 1): group score = sum of the two largest c in each group of
   E / G contiguous experts; the experts outside the ``top_groups`` best groups get c = -inf;
4. the K experts of largest c, best first;
5. weights from the unbiased scores of the selected experts (see
   :data:`~moelab.layers.config.Weighting`), then times ``scaling``;
6. capacity, if any, drops assignments (their weight becomes 0).

The router takes its :class:`~moelab.layers.config.RouterConfig` as-is (the config checked its
fields when it was built). Shapes: see :mod:`moelab.layers`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab._validation import positive_int
from moelab.layers.config import (
    CapacityPriority,
    Noise,
    RouterConfig,
    RoutingKind,
    Scorer,
    Weighting,
    choices,
)
from moelab.layers.mlp import MLP
from moelab.layers.outputs import Routing

WEIGHTINGS = choices(Weighting)
SCORERS = choices(Scorer)
ROUTINGS = choices(RoutingKind)
NOISES = choices(Noise)
CAPACITY_PRIORITIES = choices(CapacityPriority)


def _fraction(mask: Tensor) -> Tensor:
    """The fraction of True entries (0 for an empty mask)."""
    return mask.float().mean() if mask.numel() else mask.new_zeros((), dtype=torch.float32)


class Router(nn.Module):
    """Scores E experts for each token and decides the routing.

    Args:
        d_in: input width D.
        num_experts: E.
        config: the :class:`~moelab.layers.config.RouterConfig` (top_k <= E).
        generator: the random source of the noise (None: torch's default generator).
    """

    def __init__(self, d_in: int, num_experts: int, config: RouterConfig | None = None, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        config = RouterConfig() if config is None else config
        if not isinstance(config, RouterConfig):
            raise TypeError(f"config must be a RouterConfig, got {type(config).__name__}")
        self.d_in = positive_int("d_in", d_in)
        self.num_experts = positive_int("num_experts", num_experts)
        config.check_experts(num_experts)
        self.config = config
        self.top_k = config.top_k
        self.scorer_kind = config.scorer
        self.weighting = config.weighting
        self.routing = config.routing
        self.noise = config.noise
        self.jitter_eps = config.jitter_eps
        self.capacity_factor = config.capacity_factor
        self.capacity_priority = config.capacity_priority
        self.generator = generator
        if config.scorer == "linear":
            self.scorer: nn.Module = nn.Linear(d_in, num_experts, bias=config.bias)
        else:
            self.scorer = MLP(d_in, num_experts, hidden=config.hidden, depth=config.depth,
                              bias=config.bias)
        # Noisy top-k: W_noise starts at zero, so the noise scale starts at softplus(0) everywhere.
        self.noise_proj = (
            nn.Linear(d_in, num_experts, bias=False) if config.noise == "noisy_topk" else None
        )
        if self.noise_proj is not None:
            nn.init.zeros_(self.noise_proj.weight)
        self.balance_bias = config.balance_bias
        self.register_buffer(
            "expert_bias", torch.zeros(num_experts) if config.balance_bias else None,
            persistent=True
        )

    @property
    def scorer_weight(self) -> Tensor:
        """The scorer's first weight: the router's dtype and device."""
        scorer = self.scorer
        return scorer.weight if isinstance(scorer, nn.Linear) else scorer.linears[0].weight

    def _apply(self, fn, recurse=True):
        # A float32 router keeps its selection bias in float32 or wider when the module is cast to
        # a narrower dtype (as HF keeps DeepSeek-V3's e_score_correction_bias in float32): bf16
        # would round away small bias updates.
        keep = self.expert_bias if self.config.float32 else None
        super()._apply(fn, recurse)
        bias = self.expert_bias
        if keep is not None and bias.is_floating_point() and bias.dtype.itemsize < 4:
            self.expert_bias = keep.to(device=bias.device,
                                       dtype=torch.promote_types(keep.dtype, torch.float32))
        return self

    # -- scores -------------------------------------------------------------------------------
    def _call(self, module: nn.Module, x: Tensor) -> Tensor:
        """``module(x)``; for a float32 router in a lower-precision model, with the parameters
        cast to x's dtype (gradients flow back to them)."""
        if not self.config.float32 or self.scorer_weight.dtype == x.dtype:
            return module(x)
        params = {name: p.to(x.dtype) for name, p in module.named_parameters()}
        return torch.func.functional_call(module, params, (x,))

    def _logits(self, x_TD: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(logits used for routing, clean logits, noise std); the last two only for noisy top-k."""
        if self.training and self.noise == "jitter" and self.jitter_eps > 0:
            u = torch.rand(x_TD.shape, generator=self.generator, dtype=x_TD.dtype,
                           device=x_TD.device)
            x_TD = x_TD * (1 - self.jitter_eps + 2 * self.jitter_eps * u)
        logits_TE = self._call(self.scorer, x_TD)
        if self.noise_proj is None:
            return logits_TE, None, None
        std_TE = F.softplus(self._call(self.noise_proj, x_TD))
        if not self.training:
            return logits_TE, logits_TE, std_TE
        eps_TE = torch.randn(logits_TE.shape, generator=self.generator, dtype=logits_TE.dtype,
                             device=logits_TE.device)
        return logits_TE + eps_TE * std_TE, logits_TE, std_TE

    def capacity(self, num_tokens: int) -> int | None:
        """C, the most assignments one expert takes from ``num_tokens`` tokens (None: unbounded)."""
        factor = self.capacity_factor
        if factor is None:
            if self.routing == "token_choice":
                return None
            factor = 1.0
        c = math.ceil(factor * num_tokens * self.top_k / self.num_experts)
        return min(c, num_tokens) if self.routing == "expert_choice" else c

    # -- routing ------------------------------------------------------------------------------
    def forward(self, x_TD: Tensor) -> Routing:
        """Route a (T, D) batch of tokens; see :class:`~moelab.layers.outputs.Routing`.

        The combine weights have x's dtype; with ``float32`` the rest of the routing is float32.
        """
        dtype = x_TD.dtype
        if self.config.float32:
            x_TD = x_TD.to(torch.promote_types(dtype, torch.float32))
        logits_TE, clean_TE, std_TE = self._logits(x_TD)
        probs_TE = logits_TE.softmax(dim=-1)
        if self.routing == "expert_choice":
            routing = self._expert_choice(logits_TE, probs_TE, clean_TE, std_TE)
        else:
            routing = self._token_choice(logits_TE, probs_TE, clean_TE, std_TE)
        if routing.weights.dtype != dtype:
            routing = dataclasses.replace(routing, weights=routing.weights.to(dtype))
        return routing

    def _token_choice(self, logits_TE, probs_TE, clean_TE, std_TE) -> Routing:
        T, E = logits_TE.shape
        config = self.config
        sigmoid = self.weighting in ("sigmoid", "sigmoid_raw")
        scores_TE = logits_TE.sigmoid() if sigmoid else probs_TE
        select_TE = scores_TE.detach()
        if self.expert_bias is not None:
            select_TE = select_TE + self.expert_bias
        if config.groups > 1 and (config.top_groups or config.groups) < config.groups:
            select_TE = self._in_top_groups(select_TE)
        ids_TK = select_TE.topk(self.top_k, dim=-1, sorted=True).indices
        picked_TK = scores_TE.gather(1, ids_TK)
        if self.weighting in ("switch", "sigmoid_raw"):
            weights_TK = picked_TK
        elif self.weighting == "unweighted":
            weights_TK = torch.ones_like(picked_TK)
        elif self.weighting in ("sigmoid", "softmax_renorm"):
            total_TK = picked_TK.sum(-1, keepdim=True)
            if config.norm_eps:
                total_TK = total_TK + config.norm_eps
            weights_TK = picked_TK / total_TK
        elif self.top_k == 1:  # paper, K = 1: the softmax over one logit is exactly 1
            weights_TK = torch.ones_like(picked_TK)
        else:  # paper: softmax over the selected logits
            weights_TK = logits_TE.gather(1, ids_TK).softmax(dim=-1)
        if config.scaling != 1.0:
            weights_TK = weights_TK * config.scaling

        kept_TK = torch.ones_like(ids_TK, dtype=torch.bool)
        capacity = self.capacity(T)
        limited = capacity is not None and capacity < T * self.top_k
        if limited:
            kept_TK = self._within_capacity(ids_TK, weights_TK.detach(), capacity)
            weights_TK = weights_TK * kept_TK
            counts_E = torch.bincount(ids_TK[kept_TK], minlength=E)
            dropped = _fraction(~kept_TK)
        else:
            counts_E = torch.bincount(ids_TK.reshape(-1), minlength=E)
            dropped = torch.zeros((), device=ids_TK.device)
        return Routing(expert_ids=ids_TK, weights=weights_TK, kept=kept_TK, logits=logits_TE,
                       probs=probs_TE, tokens_per_expert=counts_E, dropped_fraction=dropped,
                       clean_logits=clean_TE, noise_std=std_TE, all_kept=not limited)

    def _in_top_groups(self, select_TE: Tensor) -> Tensor:
        """Group-limited top-k: the selection scores with -inf for every expert outside the
        ``top_groups`` groups whose two best selection scores have the largest sum (T, E)."""
        T, E = select_TE.shape
        G = self.config.groups
        n = E // G  # experts per group
        group_TG = select_TE.view(T, G, n).topk(min(2, n), dim=-1).values.sum(-1)
        top_TG = group_TG.topk(self.config.top_groups, dim=-1).indices
        keep_TG = torch.zeros_like(group_TG, dtype=torch.bool).scatter(1, top_TG, True)
        return select_TE.masked_fill(~keep_TG.repeat_interleave(n, dim=1), float("-inf"))

    def _within_capacity(self, ids_TK: Tensor, weights_TK: Tensor, capacity: int) -> Tensor:
        """Which assignments fit: each expert keeps its first ``capacity`` by priority order."""
        T, K = ids_TK.shape
        if self.capacity_priority == "position":
            order_N = torch.arange(T * K, device=ids_TK.device)  # slot-major: k * T + t
            ids_N = ids_TK.t().reshape(-1)
        else:
            order_N = weights_TK.t().reshape(-1).argsort(descending=True, stable=True)
            ids_N = ids_TK.t().reshape(-1)[order_N]
        onehot_NE = F.one_hot(ids_N, self.num_experts)
        position_N = (onehot_NE.cumsum(0) * onehot_NE).sum(-1) - 1  # place in its expert's queue
        kept_N = torch.empty_like(position_N, dtype=torch.bool)
        kept_N[order_N] = position_N < capacity
        return kept_N.view(K, T).t()

    def _expert_choice(self, logits_TE, probs_TE, clean_TE, std_TE) -> Routing:
        T, E = logits_TE.shape
        capacity = self.capacity(T)
        select_ET = probs_TE.detach().t()
        if self.expert_bias is not None:
            select_ET = select_ET + self.expert_bias[:, None]
        top_EC = select_ET.topk(capacity, dim=-1).indices
        kept_TE = torch.zeros(T, E, dtype=torch.bool, device=logits_TE.device)
        kept_TE[top_EC, torch.arange(E, device=logits_TE.device)[:, None]] = True
        weights_TE = probs_TE * kept_TE
        if self.config.scaling != 1.0:
            weights_TE = weights_TE * self.config.scaling
        ids_TE = torch.arange(E, device=logits_TE.device).expand(T, E)
        counts_E = kept_TE.sum(0)
        dropped = _fraction(~kept_TE.any(-1))
        return Routing(expert_ids=ids_TE, weights=weights_TE, kept=kept_TE, logits=logits_TE,
                       probs=probs_TE, tokens_per_expert=counts_E, dropped_fraction=dropped,
                       clean_logits=clean_TE, noise_std=std_TE, expert_choice=True)

    # -- auxiliary-loss-free balancing -------------------------------------------------------------
    @torch.no_grad()
    def update_balance_bias(self, tokens_per_expert: Tensor, rate: float = 1e-3) -> None:
        """DeepSeek-V3's bias update (Liu et al. 2024, Sec. 2.1.2): b_i += rate * sign(mean - load_i).

        Overloaded experts become less likely to be selected, underloaded ones more; the bias only
        changes which experts are selected, never the combine weights. ``tokens_per_expert`` is the
        (E,) load of the last step(s), e.g. ``routing.tokens_per_expert``.
        """
        if self.expert_bias is None:
            raise ValueError("update_balance_bias needs a router built with balance_bias=True")
        load_E = tokens_per_expert.to(self.expert_bias.dtype)
        if load_E.shape != self.expert_bias.shape:
            raise ValueError(
                f"tokens_per_expert must have shape ({self.num_experts},), got {tuple(load_E.shape)}"
            )
        self.expert_bias += rate * torch.sign(load_E.mean() - load_E)

    def extra_repr(self) -> str:
        return (
            f"{self.scorer_kind}, d_in={self.d_in}, num_experts={self.num_experts}, "
            f"top_k={self.top_k}, weighting={self.weighting}, routing={self.routing}, "
            f"noise={self.noise}, capacity_factor={self.capacity_factor}"
            + (f", scaling={self.config.scaling}" if self.config.scaling != 1.0 else "")
            + (f", groups={self.config.groups}, top_groups={self.config.top_groups}"
               if self.config.groups > 1 else "")
            + (", float32" if self.config.float32 else "")
        )
