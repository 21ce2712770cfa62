"""The configurations of the models, nested the way their modules are.

:class:`MoEConfig` holds the MoE layer's own settings and one :class:`RouterConfig` and one
:class:`ExpertConfig`; :class:`~moelab.layers.routers.Router` and the expert banks take their part
as-is. :class:`DeepMoEConfig` holds a stack's widths and per-layer MoEConfigs, and
:class:`DenseMLPConfig` the dense baseline's shape; each model keeps its config on ``self.config``
and is rebuilt from it alone by ``from_config``. Each config checks its fields once, when it is
built; choice fields are ``Literal`` types, so the typed-JSON parser (:mod:`moelab.typed_json`)
and ``--set`` overrides check them by their type.

The flat spelling of moelab 0.1, ``MoEConfig(num_experts=4, top_k=1, expert_hidden=10)``, still
works and warns (:data:`LEGACY_NAMES` maps each old name to its nested place).
"""

from __future__ import annotations

import dataclasses
import re
import typing
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from moelab._validation import one_of, positive_float, positive_int
from moelab.layers.activations import ACTIVATIONS, GATED_UNITS
from moelab.typed_json import ADDED_LATER

Scorer = Literal["linear", "mlp"]
#: How the selected experts' outputs are weighted (token choice).
#:  - ``"paper"``: softmax over the K selected logits (the paper's alpha). With K = 1 the weight is
#:    exactly 1: hard routing, and the router receives **no gradient** from the task loss.
#:  - ``"switch"`` (default): the full softmax probability of each selected expert, not renormalised
#:    (Switch Transformer). With K = 1 the router is trained through the weight p_i(x).
#:  - ``"sigmoid"``: sigmoid scores normalised over the selected experts (DeepSeek-V3).
#:  - ``"unweighted"``: weight 1 for every selected expert (the outputs are summed).
#:  - ``"softmax_renorm"``: the full softmax probabilities of the selected experts divided by their
#:    sum (Mixtral; Qwen2/3-MoE and OLMoE with ``norm_topk_prob=True``). The same function as
#:    ``"paper"``, computed the way those models compute it.
#:  - ``"sigmoid_raw"``: the sigmoid scores of the selected experts, not normalised (DeepSeek-V3
#:    with ``norm_topk_prob=False``).
Weighting = Literal["paper", "switch", "sigmoid", "unweighted", "softmax_renorm", "sigmoid_raw"]
RoutingKind = Literal["token_choice", "expert_choice"]
Noise = Literal["none", "jitter", "noisy_topk"]
#: Which assignments an over-full expert keeps. ``"position"`` (default; Switch, GShard): all first
#: choices before any second choice, then earlier tokens first. ``"score"`` (batch-prioritised
#: routing, Riquelme et al. 2021): higher combine weight first.
CapacityPriority = Literal["position", "score"]
#: The experts' activation: a name in :data:`~moelab.layers.activations.ACTIVATIONS`. The choice
#: type is built from that table, so a new activation is added there alone.
Activation = Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]
#: The gated unit of gated experts: a name in :data:`~moelab.layers.activations.GATED_UNITS`
#: (``"swiglu"``, ``"clamped"``: GPT-OSS's), which defines each; built from that table.
GatedForm = Literal[tuple(GATED_UNITS)]  # type: ignore[valid-type]
DispatchMode = Literal["auto", "grouped", "dense", "reference"]


def choices(kind: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` choice type."""
    return typing.get_args(kind)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    """How a :class:`~moelab.layers.routers.Router` scores, selects and weights the experts.

    ``top_k`` K experts per token (under expert choice K only sets the capacity); ``scorer``
    ``"linear"`` (``bias`` False is the paper's g(x) = W_R x) or ``"mlp"`` of ``hidden`` width and
    ``depth`` affine maps; ``weighting`` (see :data:`Weighting`); ``routing`` token or expert
    choice; ``noise`` (training mode only): ``"jitter"`` multiplies the router input by
    U(1 - jitter_eps, 1 + jitter_eps), ``"noisy_topk"`` adds N(0, softplus(W_noise x)^2) to the
    logits; ``capacity_factor`` None for dropless token choice, else C = ceil(factor * T * K / E)
    assignments per expert, kept by ``capacity_priority``; ``balance_bias`` keeps DeepSeek-V3's
    per-expert selection bias (its ``e_score_correction_bias``, buffer ``expert_bias``): added to
    the scores for selection only, never to the combine weights.

    The options of published models:

    * ``norm_eps`` is added to the denominator where the weights are renormalised
      (``"softmax_renorm"``, ``"sigmoid"``; DeepSeek-V3 1e-20); the other weightings ignore it.
    * ``scaling`` multiplies the combine weights after any normalisation (DeepSeek-V3's
      ``routed_scaling_factor``, 2.5).
    * ``groups`` > 1 is group-limited top-k (DeepSeek-V3 ``n_group``, ``topk_group``): the E
      experts form ``groups`` equal contiguous groups; a group's score is the sum of its two best
      selection scores (scores + selection bias); only the experts of the ``top_groups`` best
      groups (None: all) can be selected. Token choice only.
    * ``float32`` computes the router (scorer, scores, selection, weights) in float32 (or the
      model's dtype where that is wider), with the scorer's parameters cast at use and the
      selection bias kept in float32; the combine weights are cast back to the model's dtype.
      ``Routing.logits`` and ``probs`` stay float32. DeepSeek-V3's router does the same; Mixtral,
      Qwen and OLMoE compute only the softmax in float32, after a matmul in the model's dtype.
    """

    top_k: int = 1
    scorer: Scorer = "linear"
    bias: bool = True
    hidden: int = 32
    depth: int = 2
    weighting: Weighting = "switch"
    routing: RoutingKind = "token_choice"
    noise: Noise = "none"
    jitter_eps: float = 1e-2
    capacity_factor: float | None = None
    capacity_priority: CapacityPriority = "position"
    balance_bias: bool = False
    norm_eps: float = field(default=0.0, metadata=ADDED_LATER)
    scaling: float = field(default=1.0, metadata=ADDED_LATER)
    groups: int = field(default=1, metadata=ADDED_LATER)
    top_groups: int | None = field(default=None, metadata=ADDED_LATER)
    float32: bool = field(default=False, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        positive_int("router.top_k", self.top_k)
        one_of("router.scorer", self.scorer, choices(Scorer))
        positive_int("router.hidden", self.hidden)
        positive_int("router.depth", self.depth)
        one_of("router.weighting", self.weighting, choices(Weighting))
        one_of("router.routing", self.routing, choices(RoutingKind))
        one_of("router.noise", self.noise, choices(Noise))
        positive_float("router.jitter_eps", self.jitter_eps, allow_zero=True)
        if self.capacity_factor is not None:
            positive_float("router.capacity_factor", self.capacity_factor)
        one_of("router.capacity_priority", self.capacity_priority, choices(CapacityPriority))
        positive_float("router.norm_eps", self.norm_eps, allow_zero=True)
        positive_float("router.scaling", self.scaling)
        positive_int("router.groups", self.groups)
        if self.top_groups is not None:
            positive_int("router.top_groups", self.top_groups)
            if self.top_groups > self.groups:
                raise ValueError(f"router.top_groups={self.top_groups} must be <= "
                                 f"router.groups={self.groups}")
        if self.groups > 1 and self.routing != "token_choice":
            raise ValueError(f"router.groups={self.groups} (group-limited top-k) needs "
                             f"router.routing='token_choice', got {self.routing!r}")
        _flag("router.float32", self.float32)

    def check_experts(self, num_experts: int) -> None:
        """Check that this router fits E = ``num_experts`` experts: top_k <= E, E divisible by
        ``groups``, and top_k <= top_groups * E / groups (the experts the kept groups hold)."""
        if self.top_k > num_experts:
            raise ValueError(f"top_k={self.top_k} must be <= num_experts={num_experts}")
        if num_experts % self.groups:
            raise ValueError(f"router.groups={self.groups} must divide num_experts={num_experts} "
                             "(the experts form equal contiguous groups)")
        if self.top_groups is not None:
            reachable = self.top_groups * (num_experts // self.groups)
            if self.top_k > reachable:
                raise ValueError(
                    f"router.top_k={self.top_k} must be <= router.top_groups * num_experts / "
                    f"router.groups = {self.top_groups} * {num_experts // self.groups} = "
                    f"{reachable}, the experts of the kept groups")


@dataclass(frozen=True, kw_only=True)
class ExpertConfig:
    """The shape of one expert: ``depth`` affine maps (the paper's l) of ``hidden`` width (the
    paper's m) with ``activation``; ``gated`` for the gated shape (depth 2): down(unit(gate x,
    value x)), whose unit is ``gated_form`` (see :data:`GatedForm`; ``"clamped"`` is GPT-OSS's,
    with ``clamp_limit`` and ``glu_alpha``, and ignores ``activation``); ``bias`` for biases (on
    every map, gated or not: GPT-OSS); ``latent_dim`` d makes low-dimensional experts f_low o Enc
    (suggestion 3), with a decoder and a reconstruction loss if ``latent_decoder``.

    ``bank`` names the kind of expert bank, a key of :data:`moelab.layers.experts.BANKS`: None
    (default) is ``"lowdim"`` when ``latent_dim`` is set and ``"ffn"`` (plain feed-forward experts)
    otherwise, and a name that this rule gives is stored as None, so :attr:`kind` has one spelling
    per config. ``options`` holds the chosen kind's own hyperparameters, checked against its
    ``Options`` dataclass and kept as the values that differ from their defaults (the built-in
    kinds take none). Both are left out of run ids at their defaults."""

    hidden: int = 16
    depth: int = 2
    activation: Activation = "relu"
    gated: bool = False
    bias: bool = True
    latent_dim: int | None = None
    latent_decoder: bool = False
    gated_form: GatedForm = field(default="swiglu", metadata=ADDED_LATER)
    clamp_limit: float = field(default=7.0, metadata=ADDED_LATER)
    glu_alpha: float = field(default=1.702, metadata=ADDED_LATER)
    bank: str | None = field(default=None, metadata=ADDED_LATER)
    options: dict[str, Any] = field(default_factory=dict, metadata=ADDED_LATER)

    @property
    def kind(self) -> str:
        """The kind of bank built: ``bank``, or ``"lowdim"`` when ``latent_dim`` is set, else
        ``"ffn"``."""
        return self.bank if self.bank is not None else self._implied_kind

    @property
    def _implied_kind(self) -> str:
        """The kind ``bank=None`` means: ``"lowdim"`` when ``latent_dim`` is set, else ``"ffn"``."""
        return "ffn" if self.latent_dim is None else "lowdim"

    def __hash__(self) -> int:  # ``options`` is a dict: equal configs still hash alike
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)
                          if f.name != "options"))

    def __post_init__(self) -> None:
        positive_int("experts.hidden", self.hidden)
        positive_int("experts.depth", self.depth)
        one_of("experts.activation", self.activation, choices(Activation))
        if self.gated and self.depth != 2:
            raise ValueError(f"gated experts have experts.depth=2, got experts.depth={self.depth}")
        if self.latent_dim is not None:
            positive_int("experts.latent_dim", self.latent_dim)
            if self.gated:
                raise ValueError("gated=True cannot be combined with latent_dim (low-dim experts)")
        elif self.latent_decoder:
            raise ValueError("latent_decoder=True needs latent_dim (low-dimensional experts)")
        one_of("experts.gated_form", self.gated_form, choices(GatedForm))
        positive_float("experts.clamp_limit", self.clamp_limit)
        positive_float("experts.glu_alpha", self.glu_alpha)
        if self.gated_form != "swiglu" and not self.gated:
            raise ValueError(f"experts.gated_form={self.gated_form!r} shapes the gated unit and "
                             "needs experts.gated=True")
        self._check_bank()

    def _check_bank(self) -> None:
        """Check ``bank`` and ``options`` against the registered kinds; store both canonically."""
        from moelab.layers.experts import canonical_options  # that module imports this one

        if self.bank is not None and not isinstance(self.bank, str):
            raise TypeError(f"experts.bank must be a str or None, got {self.bank!r} "
                            f"({type(self.bank).__name__})")
        object.__setattr__(self, "options", canonical_options(self.kind, self.options))
        if self.kind == "lowdim" and self.latent_dim is None:
            raise ValueError("experts.bank='lowdim' (low-dimensional experts) needs "
                             "experts.latent_dim")
        if self.kind != "lowdim" and self.latent_dim is not None:
            raise ValueError(f"experts.latent_dim={self.latent_dim} is read by the 'lowdim' bank "
                             f"only, got experts.bank={self.bank!r}")
        if self.bank == self._implied_kind:
            object.__setattr__(self, "bank", None)


@dataclass(frozen=True, kw_only=True, init=False)
class MoEConfig:
    """Everything that shapes one MoE layer except its input and output widths.

    ``num_experts`` E; ``router`` and ``experts`` (see :class:`RouterConfig`,
    :class:`ExpertConfig`); ``shared_experts`` > 0 adds a shared expert, a dense network applied
    to every token, of hidden width ``shared_hidden`` (None: ``shared_experts * experts.hidden``):
    by default an :class:`~moelab.layers.mlp.MLP` of the experts' depth, activation and bias;
    with ``shared_gated`` a gated unit of the experts' ``gated_form`` (Qwen2-MoE's and
    DeepSeek-V3's SwiGLU shared experts: :class:`~moelab.layers.mlp.GatedMLP`);
    ``shared_gate`` scales it per token by sigmoid(w_g . x) (Qwen2-MoE's
    ``shared_expert_gate``, the layer's ``shared_gate``); ``dispatch`` is ``"auto"``,
    ``"grouped"``, ``"dense"`` or ``"reference"`` (see :mod:`moelab.layers.dispatch`);
    ``check_finite`` rejects NaN/Inf inputs at the model's entry (one device sync per forward
    pass of the model, none inside the layers; False skips it).

    The defaults are the paper's layer (linear router, top-1, two-layer ReLU experts) except for the
    weighting: ``"switch"`` by default, because the paper's weighting gives a top-1 router no
    gradient; ``router=RouterConfig(weighting="paper", bias=False)`` is the paper's layer exactly.
    """

    num_experts: int = 4
    router: RouterConfig = field(default_factory=RouterConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    shared_experts: int = 0
    shared_hidden: int | None = field(default=None, metadata=ADDED_LATER)
    shared_gated: bool = field(default=False, metadata=ADDED_LATER)
    shared_gate: bool = field(default=False, metadata=ADDED_LATER)
    dispatch: DispatchMode = "auto"
    check_finite: bool = True

    def __init__(self, **kwargs: Any) -> None:
        legacy = {name: kwargs.pop(name) for name in list(kwargs) if _is_legacy(name, kwargs[name])}
        if legacy:
            warnings.warn(
                f"MoEConfig({', '.join(f'{k}=...' for k in legacy)}) is the flat spelling of "
                "moelab 0.1; use the nested one: "
                + ", ".join(f"{k} -> {'.'.join(LEGACY_NAMES[k])}" for k in legacy)
                + " (e.g. MoEConfig(num_experts=4, router=RouterConfig(top_k=1), "
                "experts=ExpertConfig(hidden=10)))",
                DeprecationWarning, stacklevel=2,
            )
            kwargs = _nest(kwargs, legacy)
        _init_fields(self, **kwargs)

    def __post_init__(self) -> None:
        positive_int("num_experts", self.num_experts)
        if not isinstance(self.router, RouterConfig):
            raise TypeError(f"router must be a RouterConfig, got {type(self.router).__name__}")
        if not isinstance(self.experts, ExpertConfig):
            raise TypeError(f"experts must be an ExpertConfig, got {type(self.experts).__name__}")
        self.router.check_experts(self.num_experts)
        if isinstance(self.shared_experts, bool) or not isinstance(self.shared_experts, int) or (
                self.shared_experts < 0):
            raise ValueError(f"shared_experts must be an int >= 0, got {self.shared_experts!r}")
        if self.shared_hidden is not None:
            positive_int("shared_hidden", self.shared_hidden)
        for name in ("shared_gated", "shared_gate"):
            _flag(name, getattr(self, name))
        for name in ("shared_hidden", "shared_gated", "shared_gate"):
            if getattr(self, name) not in (None, False) and not self.shared_experts:
                raise ValueError(f"{name}={getattr(self, name)!r} shapes the shared expert and "
                                 "needs shared_experts >= 1, got shared_experts=0")
        one_of("dispatch", self.dispatch, choices(DispatchMode))

    @property
    def shared_width(self) -> int:
        """The shared expert's hidden width (0 without a shared expert)."""
        if not self.shared_experts:
            return 0
        return self.shared_hidden or self.shared_experts * self.experts.hidden

    def replace(self, **changes: Any) -> MoEConfig:
        """A copy with some fields changed (``dataclasses.replace``; flat names are nested)."""
        legacy = {k: changes.pop(k) for k in list(changes) if _is_legacy(k, changes[k])}
        if legacy:
            warnings.warn(f"MoEConfig.replace({', '.join(legacy)}=...): flat names are deprecated; "
                          "use the nested ones", DeprecationWarning, stacklevel=2)
            changes = _nest({"router": self.router, "experts": self.experts, **changes}, legacy)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> MoEConfig:
        """A config from the flat field names of moelab 0.1 (as in version-1 checkpoints)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return cls(**values)


@dataclass(frozen=True, kw_only=True)
class DenseMLPConfig:
    """The dense baseline :class:`~moelab.layers.mlp.DenseMLP`: ``d_in`` -> ``d_out`` through
    ``depth`` affine maps (the paper's l) of ``hidden`` width (m) with ``activation``; ``bias`` for
    biases; ``check_finite`` rejects NaN/Inf inputs (one device sync per forward pass)."""

    d_in: int
    d_out: int
    hidden: int
    depth: int = 2
    activation: Activation = "relu"
    bias: bool = True
    check_finite: bool = True

    def __post_init__(self) -> None:
        positive_int("d_in", self.d_in)
        positive_int("d_out", self.d_out)
        positive_int("hidden", self.hidden)
        positive_int("depth", self.depth)
        one_of("activation", self.activation, choices(Activation))


@dataclass(frozen=True, kw_only=True)
class DeepMoEConfig:
    """A :class:`~moelab.layers.stack.DeepMoE` stack of L = len(widths) - 1 layers.

    ``widths`` [d_0, ..., d_L]; ``moe`` one :class:`MoEConfig` for every layer or a tuple of L,
    one per layer (a sequence given is kept as a tuple); ``residual`` adds each layer's input to its
    output where the widths match; ``moe_every`` 1 for all-MoE, k > 1 makes layers k-1, 2k-1, ...
    MoE and the others dense (each shaped like one expert of its layer's config).
    """

    widths: tuple[int, ...]
    moe: MoEConfig | tuple[MoEConfig, ...] = field(default_factory=MoEConfig)
    residual: bool = False
    moe_every: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.widths, Sequence) or isinstance(self.widths, str):
            raise TypeError(f"widths must be a sequence of ints, got {self.widths!r}")
        widths = tuple(self.widths)
        if len(widths) < 2:
            raise ValueError(f"widths must list at least an input and an output width, "
                             f"got {list(widths)}")
        for i, w in enumerate(widths):
            positive_int(f"widths[{i}]", w)
        object.__setattr__(self, "widths", widths)
        positive_int("moe_every", self.moe_every)
        if not isinstance(self.moe, MoEConfig):
            n_layers = len(widths) - 1
            if isinstance(self.moe, (str, bytes)) or not isinstance(self.moe, Iterable):
                raise TypeError(f"moe (DeepMoE's config) must be a MoEConfig or a sequence of "
                                f"them, got {type(self.moe).__name__}")
            configs = tuple(self.moe)
            if len(configs) != n_layers or not all(isinstance(c, MoEConfig) for c in configs):
                raise ValueError(
                    f"moe (DeepMoE's config) must be one MoEConfig or {n_layers} of them "
                    f"(one per layer), got {len(configs)} item(s)"
                )
            object.__setattr__(self, "moe", configs)

    @property
    def layer_configs(self) -> tuple[MoEConfig, ...]:
        """One MoEConfig per layer (a dense layer takes its expert shape from its own)."""
        if isinstance(self.moe, MoEConfig):
            return (self.moe,) * (len(self.widths) - 1)
        return self.moe


def _init_fields(self: MoEConfig, **kwargs: Any) -> None:
    names = {f.name for f in dataclasses.fields(MoEConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"MoEConfig got unexpected keyword argument(s) {unknown}; known: "
                        f"{sorted(names)} (and the deprecated flat names {sorted(LEGACY_NAMES)})")
    for f in dataclasses.fields(MoEConfig):
        if f.name in kwargs:
            value = kwargs[f.name]
        else:
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        object.__setattr__(self, f.name, value)
    self.__post_init__()


#: The flat names of moelab 0.1 and where each now lives, e.g. ``expert_hidden`` ->
#: ``experts.hidden`` (the dotted ``--set`` key ``model.moe.expert_hidden`` becomes
#: ``model.moe.experts.hidden``).
LEGACY_NAMES: dict[str, tuple[str, str]] = {
    "top_k": ("router", "top_k"),
    "router_bias": ("router", "bias"),
    "router_hidden": ("router", "hidden"),
    "router_depth": ("router", "depth"),
    "weighting": ("router", "weighting"),
    "routing": ("router", "routing"),
    "noise": ("router", "noise"),
    "jitter_eps": ("router", "jitter_eps"),
    "capacity_factor": ("router", "capacity_factor"),
    "capacity_priority": ("router", "capacity_priority"),
    "balance_bias": ("router", "balance_bias"),
    "expert_hidden": ("experts", "hidden"),
    "expert_depth": ("experts", "depth"),
    "activation": ("experts", "activation"),
    "gated": ("experts", "gated"),
    "expert_bias": ("experts", "bias"),
    "latent_dim": ("experts", "latent_dim"),
    "latent_decoder": ("experts", "latent_decoder"),
    # "router" as a string was the scorer's name; as a RouterConfig it is the nested router.
    "router": ("router", "scorer"),
}


def _flat_property(name: str, part: str, field_name: str) -> property:
    def read(self: MoEConfig) -> Any:
        warnings.warn(f"MoEConfig.{name} is deprecated: read MoEConfig.{part}.{field_name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(getattr(self, part), field_name)
    read.__doc__ = f"Deprecated flat name of ``{part}.{field_name}``."
    return property(read)


for _name, (_part, _field) in LEGACY_NAMES.items():
    if _name != "router":  # MoEConfig.router is the nested RouterConfig itself
        setattr(MoEConfig, _name, _flat_property(_name, _part, _field))


def _is_legacy(name: str, value: Any) -> bool:
    if name == "router":  # the scorer's name in moelab 0.1
        return isinstance(value, str)
    return name in LEGACY_NAMES


def _nest(kwargs: dict[str, Any], legacy: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the flat ``legacy`` values moved into the nested router and experts configs;
    errors name the flat argument the caller wrote."""
    parts: dict[str, dict[str, Any]] = {"router": {}, "experts": {}}
    for name, value in legacy.items():
        part, field_name = LEGACY_NAMES[name]
        parts[part][field_name] = value
    out = dict(kwargs)
    for part, cls in (("router", RouterConfig), ("experts", ExpertConfig)):
        if not parts[part]:
            continue
        base = out.get(part, cls())
        try:
            out[part] = dataclasses.replace(base, **parts[part])
        except (TypeError, ValueError) as exc:
            raise type(exc)(_flat_message(str(exc))) from None
    return out


_NESTED_TO_FLAT = {f"{part}.{name}": flat for flat, (part, name) in LEGACY_NAMES.items()}


def _flat_message(message: str) -> str:
    """An error about a nested field, reworded with the flat name the caller used."""
    return re.sub(r"\b(router|experts)\.(\w+)",
                  lambda m: _NESTED_TO_FLAT.get(m.group(0), m.group(0)), message)
