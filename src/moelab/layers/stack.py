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
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from moelab._validation import check_features, check_finite_values, positive_int
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
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths must list at least an input and an output width, got {widths}")
        for i, w in enumerate(widths):
            positive_int(f"widths[{i}]", w)
        self.widths = widths
        n_layers = len(widths) - 1
        self.moe_every = positive_int("moe_every", moe_every)
        configs = self._per_layer(config, n_layers)
        #: The configuration as given: one MoEConfig for every layer, or a tuple of them.
        self.config = configs[0] if config is None else (
            config if isinstance(config, MoEConfig) else tuple(configs))
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(n_layers):
            cfg = configs[i]
            if (i + 1) % moe_every == 0:
                self.layers.append(MoELayer(widths[i], widths[i + 1], cfg))
            else:  # a dense layer shaped like one expert
                e = cfg.experts
                self.layers.append(MLP(widths[i], widths[i + 1], hidden=e.hidden, depth=e.depth,
                                       activation=e.activation, bias=e.bias))
        self.check_finite = configs[0].check_finite

    @staticmethod
    def _per_layer(config, n_layers: int) -> list[MoEConfig]:
        if config is None:
            return [MoEConfig()] * n_layers
        if isinstance(config, MoEConfig):
            return [config] * n_layers
        configs = list(config)
        if len(configs) != n_layers or not all(isinstance(c, MoEConfig) for c in configs):
            raise ValueError(
                f"config must be one MoEConfig or {n_layers} of them (one per layer), "
                f"got {len(configs)} item(s)"
            )
        return configs

    @property
    def d_in(self) -> int:
        return self.widths[0]

    @property
    def d_out(self) -> int:
        return self.widths[-1]

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
