"""The MoE layer: router + dispatcher + experts (+ shared experts), wired by a thin module.

Forward pass (docs/paper.md Sec. 1): K = argTopK(g(x)), y = sum_{k in K} alpha_k(x) f^(k)(x), plus, with
shared experts (the paper's suggestion 2(ii)), a dense network applied to every token.

The layer keeps no state between calls. :meth:`MoELayer.run` returns a
:class:`~moelab.layers.outputs.MoEOutput` (output, :class:`~moelab.layers.outputs.Routing`, and the
unweighted auxiliary losses); the plain ``forward`` returns only the output tensor, so the layer
works anywhere an ``nn.Module`` does (``nn.Sequential``, ``deepcopy``, ``AveragedModel``, pickling,
``torch.compile``). To see the routing of layers called through ``forward``, record it:
:func:`moelab.layers.record_routing`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from moelab import losses
from moelab._validation import check_features, check_finite_values, positive_int
from moelab.layers.config import ExpertConfig, MoEConfig, RouterConfig
from moelab.layers.dispatch import Dispatcher, LocalDispatcher
from moelab.layers.experts import ExpertBank, build_experts
from moelab.layers.mlp import MLP, GatedMLP
from moelab.layers.outputs import LazyLosses, MoEOutput, Routing
from moelab.layers.routers import Router

__all__ = ["ExpertConfig", "MoEConfig", "MoELayer", "RouterConfig", "aux_losses",
           "collect_aux_losses"]

#: Called with (layer, output) after every forward pass of a layer; see ``record_routing``.
Recorder = Callable[["MoELayer", MoEOutput], None]


class MoELayer(nn.Module):
    """A mixture-of-experts layer R^{d_in} -> R^{d_out}; accepts inputs of shape (..., d_in).

    Components, built in this order from ``config`` (so seeded layers are reproducible):
    ``router`` (:class:`~moelab.layers.routers.Router`), ``experts`` (an
    :class:`~moelab.layers.experts.ExpertBank`), ``shared`` (an :class:`MLP`, a
    :class:`~moelab.layers.mlp.GatedMLP` with ``shared_gated``, or None), ``shared_gate`` (an
    ``nn.Linear(d_in, 1, bias=False)`` with ``config.shared_gate``, else None), and
    ``dispatcher``, which runs the experts on their tokens (a
    :class:`~moelab.layers.dispatch.LocalDispatcher`; expert parallelism swaps in an all-to-all
    one and a slice of the experts).
    """

    def __init__(self, d_in: int, d_out: int, config: MoEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else MoEConfig()
        if not isinstance(config, MoEConfig):
            raise TypeError(f"config must be a MoEConfig, got {type(config).__name__}")
        self.d_in = positive_int("d_in", d_in)
        self.d_out = positive_int("d_out", d_out)
        latent = config.experts.latent_dim
        if latent is not None and latent > d_in:
            raise ValueError(f"experts.latent_dim={latent} must be <= d_in={d_in}: low-dimensional "
                             "experts encode their input into fewer dimensions, not more")
        self.router = Router(d_in, config.num_experts, config.router)
        self.experts: ExpertBank = build_experts(config.num_experts, d_in, d_out, config.experts)
        self.shared: nn.Module | None = None
        if config.shared_gated:
            self.shared = GatedMLP(d_in, d_out, hidden=config.shared_width, config=config.experts)
        elif config.shared_experts:
            e = config.experts
            self.shared = MLP(d_in, d_out, hidden=config.shared_width, depth=e.depth,
                              activation=e.activation, bias=e.bias)
        self.shared_gate = nn.Linear(d_in, 1, bias=False) if config.shared_gate else None
        self.dispatcher: Dispatcher = LocalDispatcher()
        self._recorders: list[Recorder] = []

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def run(self, x: Tensor, *, dispatch_mode: str | None = None,
            check_finite: bool | None = None) -> MoEOutput:
        """The forward pass with routing and auxiliary losses.

        1. Check x: shape (..., d_in), the parameters' dtype and device (finite values are
           checked with the output, step 5).
        2. Flatten the leading dimensions into T tokens: x (T, I).
        3. Route: the router scores, selects and weights K experts per token (a ``Routing``).
        4. Dispatch: the dispatcher runs each expert on its tokens and sums the weighted outputs,
           y (T, O), by ``dispatch_mode`` (None: ``config.dispatch``).
        5. Add the shared experts' output, if any; if ``config.check_finite`` and ``check_finite``
           is not False, x must be finite and then y too (else the arithmetic overflowed), read
           in one host sync. Restore the leading dimensions.
        6. Attach the auxiliary losses (computed lazily, when read) and hand the output to any
           routing recorder.
        """
        check_features(x, self.d_in, finite=False, like=self.router.scorer_weight)
        lead = x.shape[:-1]
        x_TI = x.reshape(-1, self.d_in)
        routing = self.router(x_TI)
        out = self.dispatcher(x_TI, routing, self.experts, mode=dispatch_mode or self.config.dispatch)
        y_TO = out.y if self.shared is None else out.y + self._shared(x_TI)
        if self.config.check_finite and check_finite is not False:
            check_finite_values(x, y_TO)
        result = MoEOutput(y_TO.reshape(*lead, self.d_out), routing,
                           aux_losses(routing, out.recon_loss, self.config.router.top_k))
        for record in self._recorders:
            record(self, result)
        return result

    def _shared(self, x_TI: Tensor) -> Tensor:
        """The shared expert's output (T, O), scaled by sigmoid(w_g . x) with a shared gate."""
        y_TO = self.shared(x_TI)
        if self.shared_gate is not None:
            y_TO = self.shared_gate(x_TI).sigmoid() * y_TO
        return y_TO

    def forward(self, x: Tensor, *, dispatch_mode: str | None = None,
                check_finite: bool | None = None) -> Tensor:
        """The output only, (..., d_out); see :meth:`run`."""
        return self.run(x, dispatch_mode=dispatch_mode, check_finite=check_finite).y

    def extra_repr(self) -> str:
        return f"{self.d_in} -> {self.d_out}"


def aux_losses(routing: Routing, recon: Tensor | None, top_k: int) -> LazyLosses:
    """The unweighted auxiliary losses of one layer's routing, each computed when first read:
    ``z_loss``, ``load_balance`` (token choice), ``importance`` and ``load`` (noisy top-k) and
    ``reconstruction`` (low-dimensional experts with a decoder); see :mod:`moelab.losses`."""
    thunks: dict[str, Callable[[], Tensor]] = {}
    num_experts = routing.num_experts
    if routing.logits.shape[0] > 0:
        thunks["z_loss"] = lambda: losses.router_z_loss(routing.logits)
        if not routing.expert_choice:
            thunks["load_balance"] = lambda: losses.load_balancing_loss(
                routing.probs, routing.expert_ids, num_experts, dispatch_mask_TK=routing.kept,
            )
        if routing.noise_std is not None:
            thunks["importance"] = lambda: losses.importance_loss(routing.combine_weights())
            if top_k < num_experts:
                thunks["load"] = lambda: losses.load_loss(
                    routing.clean_logits, routing.logits, routing.noise_std, top_k
                )
    if recon is not None:
        thunks["reconstruction"] = lambda: recon
    return LazyLosses(thunks)


def detached(layer: MoELayer, out: MoEOutput) -> MoEOutput:
    """``out`` cut from the autograd graph: detached output and routing, and auxiliary losses
    recomputed (lazily) from the detached routing, so nothing keeps the step's graph alive."""
    routing = out.routing.detach()
    recon = out.aux_losses["reconstruction"].detach() if "reconstruction" in out.aux_losses else None
    return MoEOutput(out.y.detach(), routing, aux_losses(routing, recon, layer.config.router.top_k))


def collect_aux_losses(model: nn.Module) -> LazyLosses:
    """Removed with the layers' stored last output: raises, naming the replacement
    (:func:`moelab.layers.record_routing`)."""
    raise RuntimeError(
        "collect_aux_losses(model) read each layer's stored last output, which MoE layers no "
        "longer keep (it held the step's graph alive and broke deepcopy and pickling). Record the "
        "forward pass instead: `with moelab.layers.record_routing(model, detach=False) as rec: "
        "y = model(x)`, then `rec.aux_losses`."
    )

