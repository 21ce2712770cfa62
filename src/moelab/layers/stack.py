"""Deep MoE stacks: the paper's class H^{L,E}_{l,m} (Eq. 1) and its suggested variants.

``DeepMoE(widths=[d_0, ..., d_L], config)`` composes L layers, layer i mapping R^{d_i} -> R^{d_{i+1}}:
with the defaults every layer is an MoE layer and they are composed plainly,
h^(L) o ... o h^(1) — no residuals, no norms, nothing in between (paper-exact). Options:

* ``residual=True``: a residual stream, x <- x + h(x), at every layer whose input and output widths
  are equal (other layers stay plain);
* ``moe_every=2``: alternate dense and MoE layers (dense first; GShard / GLaM, suggestion 2(i)); the
  dense layers are MLPs shaped like one expert;
* per-layer configs: pass a list of :class:`~moelab.layers.moe.MoEConfig`, e.g. shared experts or an
  MLP router in chosen layers only (suggestions 1 and 2(ii)).

All of it is one :class:`~moelab.layers.config.DeepMoEConfig`, kept on ``DeepMoE.config``;
``DeepMoE.from_config(config)`` builds the same stack.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from moelab._validation import check_features, check_finite_values
from moelab.layers.config import DeepMoEConfig
from moelab.layers.mlp import MLP
from moelab.layers.moe import MoEConfig, MoELayer
from moelab.layers.outputs import LazyLosses, ModelOutput, MoEOutput


class DeepMoE(nn.Module):
    """L stacked layers with per-layer widths; see the module docstring for the options.

    Args:
        widths: [d_0, ..., d_L], the input width, the L - 1 inner widths and the output width.
        config: one :class:`MoEConfig` for every MoE layer, or a sequence with one per layer.
        residual: add each layer's input to its output where the widths match.
        moe_every: 1 for all-MoE; k > 1 makes layers k-1, 2k-1, ... MoE and the others dense.

    The arguments are checked and kept as one :class:`DeepMoEConfig` on :attr:`config` (its
    ``moe`` field holds the MoE config(s) as given); :meth:`from_config` rebuilds the stack from it.
    """

    def __init__(
        self,
        widths: Sequence[int],
        config: MoEConfig | Sequence[MoEConfig] | None = None,
        *,
        residual: bool = False,
        moe_every: int = 1,
    ) -> None:
        super().__init__()
        #: The whole stack's configuration: widths, MoE config(s), residual, moe_every.
        self.config = DeepMoEConfig(widths=widths, moe=MoEConfig() if config is None else config,
                                    residual=residual, moe_every=moe_every)
        self.layers = nn.ModuleList()
        for i, cfg in enumerate(self.config.layer_configs):
            d_in, d_out = self.config.widths[i], self.config.widths[i + 1]
            if (i + 1) % self.config.moe_every == 0:
                self.layers.append(MoELayer(d_in, d_out, cfg))
            else:  # a dense layer shaped like one expert
                e = cfg.experts
                self.layers.append(MLP(d_in, d_out, hidden=e.hidden, depth=e.depth,
                                       activation=e.activation, bias=e.bias))

    @classmethod
    def from_config(cls, config: DeepMoEConfig) -> DeepMoE:
        """A new stack (freshly initialised) of the shape ``config`` describes."""
        if not isinstance(config, DeepMoEConfig):
            raise TypeError(f"config must be a DeepMoEConfig, got {type(config).__name__}")
        return cls(config.widths, config.moe, residual=config.residual, moe_every=config.moe_every)

    @property
    def widths(self) -> list[int]:
        return list(self.config.widths)

    @property
    def residual(self) -> bool:
        return self.config.residual

    @property
    def moe_every(self) -> int:
        return self.config.moe_every

    @property
    def check_finite(self) -> bool:
        """The first layer's ``check_finite``: whether the model rejects NaN/Inf inputs."""
        return self.config.layer_configs[0].check_finite

    @property
    def d_in(self) -> int:
        return self.config.widths[0]

    @property
    def d_out(self) -> int:
        return self.config.widths[-1]

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [layer for layer in self.layers if isinstance(layer, MoELayer)]

    def run(self, x: Tensor, *, dispatch_mode: str | None = None) -> ModelOutput:
        """Forward pass returning every MoE layer's routing and the summed auxiliary losses.

        The input is checked once here (shape, dtype, device and, with ``check_finite``, finite
        values, read together with the output's in one host sync); the layers inside do not check
        again. ``dispatch_mode`` overrides every MoE
        layer's ``config.dispatch`` (``"auto"``, ``"grouped"``, ``"dense"`` or ``"reference"``).
        """
        first = self.layers[0]
        like = first.router.scorer_weight if isinstance(first, MoELayer) else first.linears[0].weight
        check_features(x, self.d_in, finite=False, like=like, owner="the model")
        x_in = x
        outputs: list[MoEOutput] = []

        def capture(_layer: MoELayer, out: MoEOutput) -> None:
            outputs.append(out)

        for layer in self.layers:
            if isinstance(layer, MoELayer):
                # Through __call__, so module hooks see every layer; the layer hands its full
                # output to ``capture``.
                layer._recorders.append(capture)
                try:
                    layer(x, dispatch_mode=dispatch_mode, check_finite=False)
                finally:
                    layer._recorders.remove(capture)
                h = outputs[-1].y
            else:
                h = layer(x)
            x = x + h if self.residual and h.shape == x.shape else h
        if self.check_finite:  # the input, then the output: one host sync per forward pass
            check_finite_values(x_in, x, owner="the model")
        aux = LazyLosses.sum([out.aux_losses for out in outputs])
        return ModelOutput(y=x, aux_losses=aux, layers=tuple(outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).y
