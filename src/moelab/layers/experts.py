"""Banks of E experts with batched weights, and the :class:`ExpertBank` protocol dispatch uses.

An expert is an l-layer feed-forward network R^{d_in} -> R^{d_out} (docs/paper.md Sec. 1: "l-layer, width m"
means l affine maps with m hidden units each). The E experts of a bank share their shapes, so each
affine map's weights are one (E, in, out) parameter and all experts run at once. Each kind of
expert is written once, as a function of an affine-map operation; the bank runs it either on every
token for every expert (:meth:`Experts.forward_all`, batched matmul) or on each expert's own group
of tokens (:meth:`Experts.forward_grouped`, grouped matmul). Shapes: see :mod:`moelab.layers`.

Each kind of bank is registered by name in :data:`BANKS` (:func:`register_bank`), and a config
chooses one by that name (``ExpertConfig.bank``): :class:`Experts` is ``"ffn"``,
:class:`LowDimExperts` ``"lowdim"``. A new kind is a class here and its decorator, nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab._validation import one_of
from moelab.layers.activations import GATED_UNITS, get_activation
from moelab.layers.config import ExpertConfig
from moelab.typed_json import build, holds_default, to_json

#: An affine map applied to a batch: (h, weight, bias or None) -> h'.
Affine = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class ExpertResult:
    """What a bank of experts returns.

    ``y`` is (N, O) from ``forward_grouped`` or (E, T, O) from ``forward_all``; ``recon_error`` has
    the same leading shape (N or (E, T)) and holds the squared reconstruction error
    ||Dec(Enc(x)) - x||^2 of low-dimensional experts, or is None.
    """

    y: Tensor
    recon_error: Tensor | None = None


@runtime_checkable
class ExpertBank(Protocol):
    """What :mod:`moelab.layers.dispatch` needs from a bank of E experts."""

    num_experts: int
    d_in: int
    d_out: int
    #: Multiply-adds one expert spends on one token (weights only); ``"auto"`` dispatch uses it.
    macs_per_token: int

    def forward_all(self, x_TI: Tensor) -> ExpertResult:
        """Every expert on every token: x (T, I), or (E, T, I) per expert, -> y (E, T, O)."""
        ...

    def forward_grouped(self, x_NI: Tensor, counts_E: Tensor) -> ExpertResult:
        """Expert e on its own rows: x (N, I) sorted by expert, ``counts_E`` rows each -> (N, O)."""
        ...

    def forward_mixed(self, x_TI: Tensor, w_TE: Tensor) -> Tensor | None:
        """sum_e w_TE[:, e] * expert_e(x): (T, O), or None where the bank has no fused mix."""
        ...


#: A bank class, as :func:`register_bank` takes and returns it.
BankClass = TypeVar("BankClass", bound=type)

#: The kinds of expert bank a config can name (``ExpertConfig.bank``), by name: ``"ffn"``
#: (:class:`Experts`), ``"lowdim"`` (:class:`LowDimExperts`) and any kind :func:`register_bank` adds.
BANKS: dict[str, type] = {}


def register_bank(name: str) -> Callable[[BankClass], BankClass]:
    """Class decorator: make a bank class choosable by ``ExpertConfig(bank=name)``.

    The class implements :class:`ExpertBank` and is built as ``cls(num_experts, d_in, d_out,
    config)`` with the :class:`~moelab.layers.config.ExpertConfig`; it reads the fields it needs
    (``hidden``, ``depth``, ``activation``, ...) and raises a ValueError naming any setting it does
    not support. Hyperparameters of its own are declared by a class attribute ``Options``, a frozen
    dataclass with a default for each field; the config's ``options`` mapping is checked against
    it when the config is built, and :func:`bank_options` gives them parsed. A class without
    ``Options`` takes no options.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a bank kind's name must be an identifier, got {name!r}")

    def register(cls: BankClass) -> BankClass:
        if BANKS.get(name, cls) is not cls:
            raise ValueError(f"bank kind {name!r} is already registered "
                             f"({BANKS[name].__qualname__}); choose another name")
        options = getattr(cls, "Options", None)
        if options is not None and not (dataclasses.is_dataclass(options)
                                        and options.__dataclass_params__.frozen):
            raise TypeError(f"{cls.__qualname__}.Options must be a frozen dataclass, got {options!r}")
        BANKS[name] = cls
        return cls

    return register


def _parse_options(kind: str, options: Mapping[str, Any]) -> Any:
    """``options`` parsed into the ``Options`` dataclass of the bank kind ``kind`` (None for a
    kind without options). Errors name the unknown kind, the unknown option or the ill-typed one
    (``experts.options.rank must be int, got 'four' (str)``)."""
    one_of("experts.bank", kind, BANKS)
    if not isinstance(options, Mapping):
        raise TypeError(f"experts.options must be a mapping of option names to values, got "
                        f"{options!r} ({type(options).__name__})")
    options_cls = getattr(BANKS[kind], "Options", None)
    known = [] if options_cls is None else [f.name for f in dataclasses.fields(options_cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"experts.options has unknown key(s) {unknown} for "
                         f"experts.bank={kind!r}; known: {known}")
    return None if options_cls is None else build(options_cls, dict(options), "experts.options")


def canonical_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against the bank kind ``kind`` (:func:`bank_options`) and reduced to
    the JSON values of those that differ from their defaults: spelling a default out gives the
    same config, and so the same run id."""
    parsed = _parse_options(kind, options)
    if parsed is None:
        return {}
    values = to_json(parsed)
    return {f.name: values[f.name] for f in dataclasses.fields(parsed)
            if not holds_default(f, getattr(parsed, f.name))}


def bank_options(config: ExpertConfig) -> Any:
    """The options of ``config``'s bank kind, parsed into its ``Options`` dataclass (None for a
    kind without options): what a registered bank reads in its constructor."""
    return _parse_options(config.kind, config.options)


def _grouped_mm_ok(x_NI: Tensor, w_EIO: Tensor) -> bool:
    """Whether torch's grouped_mm kernel takes these operands (dtype and 16-byte row strides)."""
    if not hasattr(F, "grouped_mm") or x_NI.dtype not in (torch.float32, torch.bfloat16):
        return False
    if x_NI.dtype != w_EIO.dtype:
        return False
    step = 16 // x_NI.element_size()
    return w_EIO.shape[1] % step == 0 and w_EIO.shape[2] % step == 0


def _kernel_weight(x_NI: Tensor, w_EIO: Tensor) -> Tensor | None:
    """``w_EIO`` as the grouped_mm kernel takes it: itself, or with zero output columns appended
    up to the kernel's 16-byte row alignment (d_out = 1, say); None where it takes neither."""
    pad = -w_EIO.shape[2] % (16 // x_NI.element_size())
    w_EIO = F.pad(w_EIO, (0, pad)) if pad else w_EIO
    return w_EIO if _grouped_mm_ok(x_NI, w_EIO) else None


def grouped_linear(
    x_NI: Tensor, w_EIO: Tensor, b_EO: Tensor | None, counts_E: Tensor, offsets_E: Tensor
) -> Tensor:
    """Apply expert e's affine map to its contiguous group of rows: (N, I) -> (N, O).

    Rows must be sorted by expert with ``counts_E[e]`` rows for expert e; ``offsets_E`` is the
    int32 cumulative sum of ``counts_E``. Uses ``torch.nn.functional.grouped_mm`` where the kernel
    accepts the operands, if need be with the weight's output columns padded with zeros to the
    kernel's 16-byte row alignment (d_out = 1, say), and one matmul per non-empty group otherwise
    (same result; that fallback reads the group sizes on the host). Under ``torch.compile``, where
    the kernel takes only bfloat16 and the host read would break the graph, each row is multiplied
    by its own expert's gathered weight instead (no sync, static shapes; memory N * I * O).
    """
    if torch.compiler.is_compiling() and x_NI.dtype != torch.bfloat16:
        expert_N = torch.arange(w_EIO.shape[0], device=x_NI.device).repeat_interleave(
            counts_E, output_size=x_NI.shape[0])
        y_NO = torch.bmm(x_NI[:, None, :], w_EIO[expert_N]).squeeze(1)
        return y_NO if b_EO is None else y_NO + b_EO[expert_N]
    kernel_w_EIO = _kernel_weight(x_NI, w_EIO)
    if kernel_w_EIO is not None:
        y_NO = F.grouped_mm(x_NI.contiguous(), kernel_w_EIO, offs=offsets_E)
        if kernel_w_EIO is not w_EIO:  # drop the padding columns
            y_NO = y_NO[:, :w_EIO.shape[2]]
        if b_EO is not None:
            y_NO = y_NO + b_EO.repeat_interleave(counts_E, dim=0, output_size=x_NI.shape[0])
        return y_NO
    outs = []
    for e, x_nI in enumerate(x_NI.split(counts_E.tolist())):
        if b_EO is None:
            outs.append(x_nI @ w_EIO[e])
        else:
            outs.append(torch.addmm(b_EO[e], x_nI, w_EIO[e]))
    return torch.cat(outs) if outs else x_NI.new_zeros(0, w_EIO.shape[2])


def batched_linear(h: Tensor, w_EIO: Tensor, b_EO: Tensor | None) -> Tensor:
    """Every expert's affine map on every row: h (T, I) or (E, T, I) -> (E, T, O)."""
    if h.dim() == 2:
        h = h.expand(w_EIO.shape[0], *h.shape)
    return torch.bmm(h, w_EIO) if b_EO is None else torch.baddbmm(b_EO[:, None, :], h, w_EIO)


def gated_unit(gate: Tensor, value: Tensor, config: ExpertConfig) -> Tensor:
    """The gated unit ``config.gated_form`` names (see
    :data:`~moelab.layers.activations.GATED_UNITS`) on the gate's and the value's pre-activations
    (same shape)."""
    return GATED_UNITS[config.gated_form](gate, value, config)


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    # nn.Linear's default init, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


@register_bank("ffn")
class Experts(nn.Module):
    """E independent feed-forward experts shaped by an :class:`~moelab.layers.config.ExpertConfig`.

    ``depth=2`` is the paper's two-layer expert A2 act(A1 x + b1) + b2; ``depth=1`` is a single
    affine map. Parameters, for depth l and widths d_0 = I, d_1 = ... = d_{l-1} = H, d_l = O:
    ``weight1`` ... ``weight{l}`` of shape (E, d_{k-1}, d_k) and ``bias1`` ... ``bias{l}`` of shape
    (E, d_k) (no biases with ``bias=False``); expert e computes ``h @ weight{k}[e] + bias{k}[e]``.

    ``gated=True`` gives the gated expert down(unit(gate x, value x)) (:func:`gated_unit`: SwiGLU
    act(g) * v for Mixtral, Qwen, OLMoE and DeepSeek-V3 with ``activation="silu"``, or GPT-OSS's
    clamped form): ``weight_gate`` (E, I, H), ``weight_down`` (E, H, O), ``weight_value`` (E, I, H)
    and the biases ``bias_gate`` (E, H), ``bias_down`` (E, O), ``bias_value`` (E, H). State dicts
    with the names of moelab 0.1 (``weights.0`` ..., ``biases.0`` ...; the gated value branch at
    index 2) still load.
    """

    def __init__(self, num_experts: int, d_in: int, d_out: int, config: ExpertConfig) -> None:
        super().__init__()
        self.num_experts, self.d_in, self.d_out = num_experts, d_in, d_out
        self.config = config
        self.hidden, self.depth, self.gated = config.hidden, config.depth, config.gated
        self.activation = config.activation
        self._act = get_activation(config.activation)
        widths = [d_in] + [config.hidden] * (config.depth - 1) + [d_out]
        shapes = list(pairwise(widths))
        if config.gated:  # the gate's value branch, applied to the input beside the gate
            shapes.append((d_in, config.hidden))
            self.map_names: tuple[str, ...] = ("_gate", "_down", "_value")
        else:
            self.map_names = tuple(str(k + 1) for k in range(config.depth))
        # Draw order (every weight, then its bias) is moelab 0.1's, so seeded banks are unchanged.
        drawn = [(_uniform((num_experts, i, o), i),
                  _uniform((num_experts, o), i) if config.bias else None) for i, o in shapes]
        for name, (w, _) in zip(self.map_names, drawn, strict=True):
            self.register_parameter(f"weight{name}", w)
        for name, (_, b) in zip(self.map_names, drawn, strict=True):
            self.register_parameter(f"bias{name}", b)
        self.macs_per_token = sum(i * o for i, o in shapes)
        self._register_load_state_dict_pre_hook(self._rename_legacy_keys)

    @property
    def weights(self) -> tuple[Tensor, ...]:
        """The weights in the order of the affine maps (gated: gate, down, value)."""
        return tuple(getattr(self, f"weight{n}") for n in self.map_names)

    @property
    def biases(self) -> tuple[Tensor, ...] | None:
        """The biases in the order of :attr:`weights`, or None without biases."""
        if not self.config.bias:
            return None
        return tuple(getattr(self, f"bias{n}") for n in self.map_names)

    def expert(self, x: Tensor, affine: Affine) -> Tensor:
        """The expert function, written once: ``affine(h, weight, bias)`` applies one map."""
        params = self._parameters  # plain dict reads: this runs in every forward pass
        maps = [(params[f"weight{n}"], params[f"bias{n}"]) for n in self.map_names]
        if self.gated:
            (w_gate, b_gate), (w_down, b_down), (w_value, b_value) = maps
            h = gated_unit(affine(x, w_gate, b_gate), affine(x, w_value, b_value), self.config)
            return affine(h, w_down, b_down)
        h = x
        for k, (w, b) in enumerate(maps):
            h = affine(h, w, b)
            if k < self.depth - 1:
                h = self._act(h)
        return h

    def forward_all(self, x_TI: Tensor) -> ExpertResult:
        """Every expert on every token: x (T, I), or (E, T, I) per expert, -> y (E, T, O).

        This is the plain reference computation (no sorting, no grouping).
        """
        return ExpertResult(self.expert(x_TI, batched_linear))

    def forward_grouped(self, x_NI: Tensor, counts_E: Tensor) -> ExpertResult:
        """Expert e on its own rows: x (N, I) sorted by expert, ``counts_E`` rows each -> y (N, O)."""
        offsets_E = counts_E.cumsum(0).to(torch.int32)

        def affine(h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            return grouped_linear(h, w, b, counts_E, offsets_E)

        return ExpertResult(self.expert(x_NI, affine))

    def forward_mixed(self, x_TI: Tensor, w_TE: Tensor) -> Tensor | None:
        """sum_e w_TE[:, e] * expert_e(x) for two-layer, ungated experts as two flat matmuls,
        (T, I) -> (T, O); None for other shapes (use :meth:`forward_all`).

        :meth:`expert` with a mixing affine map: the first maps of all experts are one (I, E*H)
        matmul; the weighted mix of the second maps is one (E*H, O) matmul of the weighted hidden
        units, since the mix is linear.
        """
        if self.depth != 2 or self.gated:
            return None
        T, E, H = x_TI.shape[0], self.num_experts, self.hidden

        def mixing(h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            if h.dim() == 2:  # first map, every expert at once: (T, I) -> (T, E, H)
                w_IF = w.transpose(0, 1).reshape(self.d_in, E * H)
                h_TF = h @ w_IF if b is None else torch.addmm(b.reshape(-1), h, w_IF)
                return h_TF.view(T, E, H)
            # second map, mixed: (T, E, H) weighted by w_TE -> (T, O)
            h_TF = (h * w_TE[:, :, None]).view(T, E * H)
            w_FO = w.reshape(E * H, self.d_out)
            return h_TF @ w_FO if b is None else torch.addmm(w_TE @ b, h_TF, w_FO)

        return self.expert(x_TI, mixing)

    def _rename_legacy_keys(self, state_dict, prefix, *args) -> None:
        """load_state_dict pre-hook: moelab 0.1's ``weights.k`` / ``biases.k`` -> today's names."""
        for k, name in enumerate(self.map_names):
            for old, new in ((f"weights.{k}", f"weight{name}"), (f"biases.{k}", f"bias{name}")):
                if prefix + old in state_dict:
                    state_dict[prefix + new] = state_dict.pop(prefix + old)

    def extra_repr(self) -> str:
        kind = f"gated ({self.config.gated_form}) " if self.gated else ""
        return (
            f"num_experts={self.num_experts}, {self.d_in} -> {self.d_out}, {kind}depth={self.depth}, "
            f"hidden={self.hidden}, activation={self.activation}"
        )


def legacy_names(model: nn.Module) -> dict[str, str]:
    """moelab 0.1's state-dict name of every expert tensor of ``model`` whose name has changed:
    {old name: new name} (``experts.weights.0`` -> ``experts.weight1``, ...)."""
    renames = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Experts):
            dot = f"{prefix}." if prefix else ""
            for k, name in enumerate(module.map_names):
                renames[f"{dot}weights.{k}"] = f"{dot}weight{name}"
                if module.config.bias:
                    renames[f"{dot}biases.{k}"] = f"{dot}bias{name}"
    return renames


@register_bank("lowdim")
class LowDimExperts(nn.Module):
    """Low-dimensional experts f_low o Enc (docs/paper.md Sec. 4, suggestion 3).

    Enc: R^{d_in} -> R^{latent} is a per-expert affine map (it stands for the chart map phi_i), and
    f_low: R^{latent} -> R^{d_out} is a small :class:`Experts` bank. With ``latent_decoder`` each
    expert also has an affine Dec: R^{latent} -> R^{d_in}, and the squared reconstruction error
    ||Dec(Enc(x)) - x||^2 of every routed row is returned for the reconstruction loss.
    Parameters per expert: (d_in + 1) * latent for Enc plus those of f_low, instead of O(d_in * hidden).
    """

    def __init__(self, num_experts: int, d_in: int, d_out: int, config: ExpertConfig) -> None:
        super().__init__()
        if config.latent_dim is None:
            raise ValueError("LowDimExperts needs an ExpertConfig with latent_dim set")
        self.num_experts, self.d_in, self.d_out = num_experts, d_in, d_out
        self.config = config
        self.latent = latent = config.latent_dim
        affine = ExpertConfig(hidden=latent, depth=1, bias=config.bias)
        self.encoder = Experts(num_experts, d_in, latent, affine)
        self.f_low = Experts(num_experts, latent, d_out, ExpertConfig(
            hidden=config.hidden, depth=config.depth, activation=config.activation,
            bias=config.bias))
        self.decoder = Experts(num_experts, latent, d_in, affine) if config.latent_decoder else None
        self.macs_per_token = sum(m.macs_per_token for m in self.children())

    def _run(self, x: Tensor, run: Callable[[Experts, Tensor], Tensor]) -> ExpertResult:
        z = run(self.encoder, x)
        y = run(self.f_low, z)
        recon = None
        if self.decoder is not None:
            recon = (run(self.decoder, z) - x).square().sum(-1)
        return ExpertResult(y, recon)

    def forward_all(self, x_TI: Tensor) -> ExpertResult:
        return self._run(x_TI, lambda bank, h: bank.forward_all(h).y)

    def forward_grouped(self, x_NI: Tensor, counts_E: Tensor) -> ExpertResult:
        return self._run(x_NI, lambda bank, h: bank.forward_grouped(h, counts_E).y)

    def forward_mixed(self, x_TI: Tensor, w_TE: Tensor) -> None:
        """No fused mix: the reconstruction error needs every expert's own output."""
        return None


def build_experts(num_experts: int, d_in: int, d_out: int, config: ExpertConfig) -> ExpertBank:
    """The bank ``config`` describes: the kind ``config.kind`` names in :data:`BANKS`
    (:class:`Experts` by default, :class:`LowDimExperts` when ``latent_dim`` is set)."""
    one_of("experts.bank", config.kind, BANKS)
    cls = BANKS[config.kind]
    bank = cls(num_experts, d_in, d_out, config)
    what = f"expert bank kind {config.kind!r} ({cls.__qualname__})"
    missing = sorted(name for name in _BANK_MEMBERS if not hasattr(bank, name))
    if missing:
        raise TypeError(f"{what} is not an ExpertBank: it lacks {missing} (see "
                        "moelab.layers.experts.ExpertBank)")
    if not isinstance(bank, nn.Module):
        raise TypeError(f"{what} is not an nn.Module, so its parameters would not be the layer's")
    return bank


#: What a bank must have: the :class:`ExpertBank` protocol's attributes and methods.
_BANK_MEMBERS = (*ExpertBank.__annotations__,
                 *(name for name in vars(ExpertBank) if callable(getattr(ExpertBank, name))
                   and not name.startswith("_")))
