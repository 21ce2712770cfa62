"""The MoE layer: router + dispatch + experts (+ shared experts).

Forward pass (PAPER.md Sec. 1): K = argTopK(g(x)), y = sum_{k in K} alpha_k(x) f^(k)(x), plus, with
shared experts (the paper's suggestion 2(ii)), a dense network applied to every token.

How routing and auxiliary losses are made available: :meth:`MoELayer.run` returns a
:class:`~moelab.layers.outputs.MoEOutput` (output, :class:`~moelab.layers.outputs.Routing`, and the
unweighted auxiliary losses); the plain ``forward`` returns only the output tensor, so the layer
works anywhere an ``nn.Module`` does (``nn.Sequential`` included), and keeps the last
:class:`MoEOutput` on ``layer.last_output`` for code that needs the routing afterwards
(:func:`collect_aux_losses` sums the auxiliary losses of every MoE layer inside a model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from moelab import losses
from moelab._validation import check_features, one_of, positive_float, positive_int
from moelab.layers.activations import get_activation
from moelab.layers.dispatch import DISPATCH_MODES, dispatch_and_combine
from moelab.layers.experts import Experts, LowDimExperts
from moelab.layers.mlp import MLP
from moelab.layers.outputs import LazyLosses, MoEOutput, Routing
from moelab.layers.routers import (
    CAPACITY_PRIORITIES,
    NOISES,
    ROUTINGS,
    SCORERS,
    WEIGHTINGS,
    Router,
)


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """Everything that shapes one MoE layer except its input and output widths.

    Experts: ``num_experts`` E, each ``expert_depth`` affine maps (the paper's l) of hidden width
    ``expert_hidden`` (the paper's m), ``activation``; ``gated`` for SwiGLU-shaped experts;
    ``expert_bias`` for biases in the experts; ``latent_dim`` d > 0 makes low-dimensional experts
    f_low o Enc (suggestion 3), with a decoder and reconstruction loss if ``latent_decoder``.

    Router: see :class:`~moelab.layers.routers.Router` for ``top_k``, ``router`` (``"linear"`` or
    ``"mlp"``), ``router_bias``, ``router_hidden``, ``router_depth``, ``weighting``, ``routing``,
    ``noise``, ``jitter_eps``, ``capacity_factor``, ``capacity_priority`` and ``balance_bias``.

    ``shared_experts`` > 0 adds a dense network of hidden width ``shared_experts * expert_hidden``
    applied to every token. ``dispatch`` is ``"auto"``, ``"grouped"`` or ``"dense"`` (see
    :mod:`moelab.layers.dispatch`). ``check_finite`` rejects NaN/Inf inputs.

    The defaults are the paper's layer (linear router, top-1, two-layer ReLU experts) except for the
    weighting: ``"switch"`` by default, because the paper's weighting gives a top-1 router no
    gradient; ``weighting="paper", router_bias=False`` is the paper's layer exactly.
    """

    num_experts: int = 4
    top_k: int = 1
    expert_hidden: int = 16
    expert_depth: int = 2
    activation: str = "relu"
    gated: bool = False
    expert_bias: bool = True
    latent_dim: int | None = None
    latent_decoder: bool = False
    router: str = "linear"
    router_bias: bool = True
    router_hidden: int = 32
    router_depth: int = 2
    weighting: str = "switch"
    routing: str = "token_choice"
    noise: str = "none"
    jitter_eps: float = 1e-2
    capacity_factor: float | None = None
    capacity_priority: str = "position"
    balance_bias: bool = False
    shared_experts: int = 0
    dispatch: str = "auto"
    check_finite: bool = True

    def __post_init__(self) -> None:
        positive_int("num_experts", self.num_experts)
        positive_int("top_k", self.top_k)
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be <= num_experts={self.num_experts}")
        positive_int("expert_hidden", self.expert_hidden)
        positive_int("expert_depth", self.expert_depth)
        get_activation(self.activation)
        positive_int("router_hidden", self.router_hidden)
        positive_int("router_depth", self.router_depth)
        one_of("router", self.router, SCORERS)
        one_of("weighting", self.weighting, WEIGHTINGS)
        one_of("routing", self.routing, ROUTINGS)
        one_of("noise", self.noise, NOISES)
        one_of("capacity_priority", self.capacity_priority, CAPACITY_PRIORITIES)
        positive_float("jitter_eps", self.jitter_eps, allow_zero=True)
        if self.capacity_factor is not None:
            positive_float("capacity_factor", self.capacity_factor)
        if self.latent_dim is not None:
            positive_int("latent_dim", self.latent_dim)
            if self.gated:
                raise ValueError("gated=True cannot be combined with latent_dim (low-dim experts)")
        elif self.latent_decoder:
            raise ValueError("latent_decoder=True needs latent_dim (low-dimensional experts)")
        if self.shared_experts < 0 or isinstance(self.shared_experts, bool):
            raise ValueError(f"shared_experts must be an int >= 0, got {self.shared_experts!r}")
        one_of("dispatch", self.dispatch, DISPATCH_MODES)

    def replace(self, **changes) -> MoEConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


class MoELayer(nn.Module):
    """A mixture-of-experts layer R^{d_in} -> R^{d_out}; accepts inputs of shape (..., d_in)."""

    def __init__(self, d_in: int, d_out: int, config: MoEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else MoEConfig()
        self.d_in = positive_int("d_in", d_in)
        self.d_out = positive_int("d_out", d_out)
        self.router = Router(
            d_in, config.num_experts, top_k=config.top_k, scorer=config.router,
            bias=config.router_bias, mlp_hidden=config.router_hidden,
            mlp_depth=config.router_depth, weighting=config.weighting, routing=config.routing,
            noise=config.noise, jitter_eps=config.jitter_eps,
            capacity_factor=config.capacity_factor, capacity_priority=config.capacity_priority,
            balance_bias=config.balance_bias,
        )
        if config.latent_dim is not None:
            self.experts: nn.Module = LowDimExperts(
                config.num_experts, d_in, d_out, latent=config.latent_dim,
                hidden=config.expert_hidden, depth=config.expert_depth,
                activation=config.activation, decoder=config.latent_decoder,
                bias=config.expert_bias,
            )
        else:
            self.experts = Experts(
                config.num_experts, d_in, d_out, hidden=config.expert_hidden,
                depth=config.expert_depth, activation=config.activation, gated=config.gated,
                bias=config.expert_bias,
            )
        self.shared = None
        if config.shared_experts:
            self.shared = MLP(
                d_in, d_out, hidden=config.shared_experts * config.expert_hidden,
                depth=config.expert_depth, activation=config.activation, bias=config.expert_bias,
            )
        self.last_output: MoEOutput | None = None

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def run(self, x: Tensor, *, dispatch_mode: str | None = None) -> MoEOutput:
        """Forward pass with routing and auxiliary losses; ``dispatch_mode`` overrides the config."""
        check_features(x, self.d_in, finite=self.config.check_finite)
        lead = x.shape[:-1]
        x_TI = x.reshape(-1, self.d_in)
        routing = self.router(x_TI)
        out = dispatch_and_combine(x_TI, routing, self.experts, mode=dispatch_mode or self.config.dispatch)
        y_TO = out.y if self.shared is None else out.y + self.shared(x_TI)
        aux = self._aux_losses(routing, out.recon_loss)
        result = MoEOutput(y_TO.reshape(*lead, self.d_out), routing, aux)
        self.last_output = result
        return result

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).y

    def _aux_losses(self, routing: Routing, recon: Tensor | None) -> LazyLosses:
        thunks: dict[str, Callable[[], Tensor]] = {}
        if routing.logits.shape[0] > 0:
            thunks["z_loss"] = lambda: losses.router_z_loss(routing.logits)
            if not routing.expert_choice:
                thunks["load_balance"] = lambda: losses.load_balancing_loss(
                    routing.probs, routing.expert_ids, self.num_experts,
                    dispatch_mask_TK=routing.kept,
                )
            if routing.noise_std is not None:
                thunks["importance"] = lambda: losses.importance_loss(routing.combine_weights())
                if self.config.top_k < self.num_experts:
                    thunks["load"] = lambda: losses.load_loss(
                        routing.clean_logits, routing.logits, routing.noise_std, self.config.top_k
                    )
        if recon is not None:
            thunks["reconstruction"] = lambda: recon
        return LazyLosses(thunks)

    def extra_repr(self) -> str:
        return f"{self.d_in} -> {self.d_out}"


def collect_aux_losses(model: nn.Module) -> LazyLosses:
    """Sum each named auxiliary loss over the ``last_output`` of every MoE layer in ``model``."""
    return LazyLosses.sum([m.last_output.aux_losses for m in model.modules()
                           if isinstance(m, MoELayer) and m.last_output is not None])
