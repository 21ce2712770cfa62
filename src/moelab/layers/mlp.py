"""Dense feed-forward networks: the dense baseline, shared experts, MLP routers, dense layers."""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn

from moelab._validation import check_features, check_finite_values, positive_int
from moelab.layers.activations import get_activation
from moelab.layers.config import DenseMLPConfig, ExpertConfig
from moelab.layers.experts import gated_unit
from moelab.layers.outputs import ModelOutput


class MLP(nn.Module):
    """A ``depth``-layer feed-forward network d_in -> d_out with hidden width ``hidden``.

    ``depth`` counts affine maps, as in the paper ("l-layer, width m"): depth 2 is
    A2 act(A1 x + b1) + b2, depth 1 a single affine map. Accepts inputs of shape (..., d_in).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        hidden: int,
        depth: int = 2,
        activation: str = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.d_in = positive_int("d_in", d_in)
        self.d_out = positive_int("d_out", d_out)
        self.hidden = positive_int("hidden", hidden)
        self.depth = positive_int("depth", depth)
        act = get_activation(activation)
        self.activation = activation
        self.bias = bias
        widths = [d_in] + [hidden] * (depth - 1) + [d_out]
        self.linears = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in pairwise(widths)
        )
        self._act = act

    def forward(self, x: Tensor) -> Tensor:
        for k, linear in enumerate(self.linears):
            x = linear(x)
            if k < self.depth - 1:
                x = self._act(x)
        return x


class GatedMLP(nn.Module):
    """One gated expert as a dense network d_in -> d_out: down(unit(gate x, value x)).

    The unit is :func:`~moelab.layers.experts.gated_unit` of ``config`` (its ``gated_form``,
    ``activation`` and ``bias``; its ``hidden`` is replaced by ``hidden``): the SwiGLU shared
    expert of Qwen2-MoE and DeepSeek-V3. ``gate`` and ``value`` are ``nn.Linear(d_in, hidden)``
    (HF's ``gate_proj`` and ``up_proj``), ``down`` is ``nn.Linear(hidden, d_out)`` (``down_proj``).
    Accepts inputs of shape (..., d_in).
    """

    def __init__(self, d_in: int, d_out: int, *, hidden: int, config: ExpertConfig) -> None:
        super().__init__()
        self.d_in = positive_int("d_in", d_in)
        self.d_out = positive_int("d_out", d_out)
        self.hidden = positive_int("hidden", hidden)
        if not isinstance(config, ExpertConfig):
            raise TypeError(f"config must be an ExpertConfig, got {type(config).__name__}")
        self.config = config
        self.gate = nn.Linear(d_in, hidden, bias=config.bias)
        self.value = nn.Linear(d_in, hidden, bias=config.bias)
        self.down = nn.Linear(hidden, d_out, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(gated_unit(self.gate(x), self.value(x), self.config))

    def extra_repr(self) -> str:
        return f"{self.config.gated_form}, activation={self.config.activation}"


class DenseMLP(MLP):
    """The dense baseline: an :class:`MLP` with the model interface of the MoE stacks.

    ``run`` returns a :class:`~moelab.layers.outputs.ModelOutput` with no routing and no auxiliary
    losses, so training and analysis code treats dense and MoE models alike. The arguments are
    kept as one :class:`~moelab.layers.config.DenseMLPConfig` on ``config``; :meth:`from_config`
    rebuilds the network from it.
    """

    def __init__(self, d_in: int, d_out: int, *, hidden: int, depth: int = 2,
                 activation: str = "relu", bias: bool = True, check_finite: bool = True) -> None:
        config = DenseMLPConfig(d_in=d_in, d_out=d_out, hidden=hidden, depth=depth,
                                activation=activation, bias=bias, check_finite=check_finite)
        super().__init__(d_in, d_out, hidden=hidden, depth=depth, activation=activation, bias=bias)
        #: The model's configuration, checked once (when it was built).
        self.config = config

    @classmethod
    def from_config(cls, config: DenseMLPConfig) -> DenseMLP:
        """A new network (freshly initialised) of the shape ``config`` describes."""
        if not isinstance(config, DenseMLPConfig):
            raise TypeError(f"config must be a DenseMLPConfig, got {type(config).__name__}")
        return cls(config.d_in, config.d_out, hidden=config.hidden, depth=config.depth,
                   activation=config.activation, bias=config.bias, check_finite=config.check_finite)

    @property
    def check_finite(self) -> bool:
        return self.config.check_finite

    def run(self, x: Tensor) -> ModelOutput:
        check_features(x, self.d_in, finite=False, like=self.linears[0].weight, owner="the model")
        y = super().forward(x)
        if self.check_finite:
            check_finite_values(x, y, owner="the model")
        return ModelOutput(y=y, aux_losses={}, layers=())

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).y
