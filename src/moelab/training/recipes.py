"""Training methods that look for the routing, not just the expert weights.

With hard top-1 routing and the paper's weighting a router gets no gradient, so it keeps whatever
partition it starts with. The methods here (configured by
:class:`~moelab.training.method.MethodConfig`, ``TrainConfig.method``) let the routing move; none of
them reads the target's pieces, regions or breakpoints. Each runs for the first ``fraction`` of the
steps, through its own forward pass built from the public pieces of every MoE layer (``router.scorer``
and ``experts.forward_all``); the remaining steps train the model through its own hard-routed
forward pass, which is also what evaluation uses.

* ``anneal`` (soft-to-hard routing): layer output sum_e softmax(logits / T)_e f_e(x), T annealed
  geometrically from ``t_start`` to ``t_end``; as T -> 0 this is hard top-1 routing.
* ``em`` (hard-assignment alternation, in the spirit of hierarchical mixtures of experts trained by
  EM, Jordan & Jacobs 1994): every one of the P = prod_l E_l expert paths is evaluated on the batch
  (E-step: each sample goes to its best path), the experts take a gradient step along the assigned
  paths and every router a cross-entropy step towards its layer's assigned expert (M-step).
* ``straight-through`` (the straight-through estimator, Bengio, Leonard & Courville 2013): the
  forward pass is hard top-1; the chosen output is scaled by 1 + p - stop_gradient(p), which is 1,
  so the router receives the softmax gradient without the output being scaled by p (which is what
  hurts the Switch weighting, docs/experiments.md).
* restarts (any method): candidates from different seeds, trained briefly and scored on a
  separately seeded validation sample; the best one is trained with the full budget.

Shapes: T tokens, E experts, P paths, L MoE layers, I/O layer input/output widths.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab.layers.moe import MoELayer
from moelab.training.loop import (
    Objective,
    RouterGradientWarning,
    Sampler,
    TrainConfig,
    TrainResult,
    train,
)
from moelab.training.method import MethodConfig

#: Offsets that give restart r its own seeds (r = 0 is the run's own seed).
RESTART_SEED_STRIDE = 1_000_033
#: The validation sample's seed is the run's seed plus this (the test set's is + 1_000_003).
VALIDATION_SEED_OFFSET = 4_000_037


# -- forward passes built from the layers' public pieces -------------------------------------------

def _stack(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """The model's layers in order and whether it adds residuals; a TypeError for models that are
    not a stack of layers (``model.layers``)."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"training methods need a DeepMoE-like model with .layers, got "
                        f"{type(model).__name__}")
    return list(layers), bool(getattr(model, "residual", False))


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The model's MoE layers, in order (empty for a dense model)."""
    return [m for m in model.modules() if isinstance(m, MoELayer)]


def _walk(model: nn.Module, x: Tensor, moe: Callable[[int, MoELayer, Tensor], Tensor]) -> Tensor:
    """Run the stack with ``moe(index, layer, x_TI) -> y_TO`` in place of each MoE layer."""
    layers, residual = _stack(model)
    index = 0
    for layer in layers:
        if isinstance(layer, MoELayer):
            h = moe(index, layer, x)
            if layer.shared is not None:
                h = h + layer.shared(x)
            index += 1
        else:
            h = layer(x)
        x = x + h if residual and h.shape == x.shape else h
    return x


def soft_forward(model: nn.Module, x_TI: Tensor, temperature: float) -> Tensor:
    """Every MoE layer as the soft mixture sum_e softmax(logits / T)_e f_e(x): (T, O)."""

    def mix(_i: int, layer: MoELayer, h: Tensor) -> Tensor:
        w_TE = (layer.router.scorer(h) / temperature).softmax(-1)
        y_ETO = layer.experts.forward_all(h).y
        return torch.einsum("te,eto->to", w_TE, y_ETO)

    return _walk(model, x_TI, mix)


def straight_through_forward(model: nn.Module, x_TI: Tensor) -> Tensor:
    """Hard top-1 in value; the router's softmax in the gradient (1 + p - stop_gradient(p))."""

    def pick(_i: int, layer: MoELayer, h: Tensor) -> Tensor:
        logits_TE = layer.router.scorer(h)
        ids_T = _selected(layer, logits_TE)
        p_T = logits_TE.softmax(-1).gather(1, ids_T[:, None])
        y_ETO = layer.experts.forward_all(h).y
        chosen_TO = y_ETO[ids_T, torch.arange(h.shape[0], device=h.device)]
        return chosen_TO + chosen_TO * (p_T - p_T.detach())  # exactly chosen_TO in value

    return _walk(model, x_TI, pick)


def _selected(layer: MoELayer, logits_TE: Tensor) -> Tensor:
    """The top-1 expert the layer's router selects (its balance bias included)."""
    select_TE = logits_TE.detach().softmax(-1)
    if layer.router.expert_bias is not None:
        select_TE = select_TE + layer.router.expert_bias
    return select_TE.argmax(-1)


def forced_forward(model: nn.Module, x_TI: Tensor, path_TL: Tensor
                   ) -> tuple[Tensor, list[Tensor]]:
    """The model with MoE layer l sending token t to expert ``path_TL[t, l]``: (output (T, O),
    each MoE layer's input (T, I_l))."""
    inputs: list[Tensor] = []
    rows = torch.arange(x_TI.shape[0], device=x_TI.device)

    def force(i: int, layer: MoELayer, h: Tensor) -> Tensor:
        inputs.append(h)
        return layer.experts.forward_all(h).y[path_TL[:, i], rows]

    return _walk(model, x_TI, force), inputs


def path_radices(model: nn.Module) -> list[int]:
    """E_l of each MoE layer: a path's code is mixed radix over these, first layer most significant."""
    return [layer.num_experts for layer in moe_layers(model)]


def decode_paths(code_T: Tensor, radices: list[int]) -> Tensor:
    """Path codes (T,) -> expert ids per MoE layer (T, L)."""
    digits = []
    for radix in reversed(radices):
        digits.append(code_T % radix)
        code_T = code_T // radix
    return torch.stack(digits[::-1], dim=1)


def all_path_outputs(model: nn.Module, x_TI: Tensor) -> tuple[Tensor, Tensor]:
    """The model's output along every expert path, (P, T, O), and each path's log prior
    log prod_l softmax(router_l)_{e_l}, (P, T) (layer l's router reads the layer's input along the
    path's prefix). Path p is the mixed-radix code of its experts (:func:`decode_paths`); shared
    prefixes are computed once."""
    layers, residual = _stack(model)
    h_PTI, logp_PT = x_TI[None], x_TI.new_zeros(1, x_TI.shape[0])
    for layer in layers:
        P, T, _ = h_PTI.shape
        if isinstance(layer, MoELayer):
            E = layer.num_experts
            logq_PTE = F.log_softmax(layer.router.scorer(h_PTI), dim=-1)
            logp_PT = (logp_PT[..., None] + logq_PTE).permute(0, 2, 1).reshape(P * E, T)
            y_EPTO = layer.experts.forward_all(h_PTI.reshape(P * T, -1)).y.reshape(E, P, T, -1)
            y_PTO = y_EPTO.transpose(0, 1).reshape(P * E, T, -1)
            if layer.shared is not None:
                y_PTO = y_PTO + layer.shared(h_PTI).repeat_interleave(E, dim=0)
            h_PTI = h_PTI.repeat_interleave(E, dim=0)
        else:
            y_PTO = layer(h_PTI)
        h_PTI = h_PTI + y_PTO if residual and y_PTO.shape == h_PTI.shape else y_PTO
    return h_PTI, logp_PT


@torch.no_grad()
def assign_paths(model: nn.Module, x_TI: Tensor, y_TO: Tensor, *, prior: bool = True) -> Tensor:
    """The E-step: each token's path code (T,), the path that fits its target best (squared error
    averaged over outputs); with ``prior``, the MAP path, -err / (2 sigma^2) + log prior(path),
    sigma^2 the batch's mean best error."""
    y_PTO, logp_PT = all_path_outputs(model, x_TI)
    err_PT = (y_PTO - y_TO.reshape(y_TO.shape[0], -1)[None]).square().mean(-1)
    if not prior:
        return err_PT.argmin(0)
    sigma2 = err_PT.min(0).values.mean().clamp(min=1e-12)
    return (-err_PT / (2 * sigma2) + logp_PT).argmax(0)


# -- the methods as loop objectives -----------------------------------------------------------------

def _mse(pred: Tensor, y: Tensor) -> Tensor:
    n = y.shape[0]
    return (pred.reshape(n, -1) - y.reshape(n, -1)).square().mean()


def temperature(config: TrainConfig, step: int) -> float:
    """The annealing temperature at ``step`` (geometric from t_start to t_end over the method's
    steps); 0.0 once the method's phase is over (hard routing)."""
    method, end = config.method, method_steps(config)
    if step >= end:
        return 0.0
    progress = step / max(1, end - 1)
    return method.t_start * (method.t_end / method.t_start) ** progress


def method_steps(config: TrainConfig) -> int:
    """How many of the first steps the method trains through its own forward pass."""
    return math.ceil(config.method.fraction * config.steps)


def objective(model: nn.Module, config: TrainConfig) -> Objective | None:
    """The loop objective of ``config.method`` for ``model``; None for the plain method and for
    models without MoE layers (a dense model trains plainly under every method)."""
    method = config.method
    if method.name == "plain" or not moe_layers(model):
        return None
    end = method_steps(config)
    radices = path_radices(model)

    def step_loss(model: nn.Module, x: Tensor, y: Tensor, step: int):
        if step >= end:
            return None
        if method.name == "anneal":
            t = temperature(config, step)
            mse = _mse(soft_forward(model, x, t), y)
            return mse, mse, {"temperature": t}
        if method.name == "straight-through":
            mse = _mse(straight_through_forward(model, x), y)
            return mse, mse, {}
        # em
        code_T = assign_paths(model, x, y, prior=method.em_prior)
        path_TL = decode_paths(code_T, radices)
        pred, inputs = forced_forward(model, x, path_TL)
        mse = _mse(pred, y)
        ce = sum(F.cross_entropy(layer.router.scorer(h.detach()), path_TL[:, i])
                 for i, (layer, h) in enumerate(zip(moe_layers(model), inputs, strict=True)))
        paths_used = float(torch.unique(code_T).numel())
        return mse + method.router_weight * ce, mse, {"router_ce": ce, "paths_assigned": paths_used}

    return step_loss


# -- restarts and the entry point ---------------------------------------------------------------------

@dataclass(frozen=True)
class Fitted:
    """A trained model: the :class:`TrainResult` of its final training, which restart it came from
    and every candidate's validation MSE (empty without restarts)."""

    model: nn.Module
    result: TrainResult
    restart: int
    validation_mse: tuple[float, ...]


def validation_set(sampler: Sampler, config: TrainConfig, seed: int) -> tuple[Tensor, Tensor]:
    """``config.method.validation_size`` samples from their own seed (the test set's differs)."""
    gen = torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)
    return sampler(config.method.validation_size, gen)


def fit(build: Callable[[int], nn.Module], sampler: Sampler, config: TrainConfig, *,
        seed: int = 0, progress: bool = False, description: str = "train") -> Fitted:
    """Build a model with ``build(restart)`` and train it with ``config.method``.

    Without restarts: ``build(0)`` trained for ``config.steps``. With R restarts: ``build(r)`` for
    r < R, each trained for ``ceil(restart_fraction * steps)`` steps on its own seed and scored on
    the validation sample (:func:`validation_set`, never the test set); the candidate with the
    lowest validation MSE (the first on ties) trains on from its weights for the full
    ``config.steps`` (a fresh optimiser and schedule, the run's own seed) and is evaluated on the
    test set, as a single run would be.
    """
    method = config.method
    if method.name != "plain":  # the method's own phase trains the routers
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RouterGradientWarning)
            return _fit(build, sampler, config, seed=seed, progress=progress,
                        description=description)
    return _fit(build, sampler, config, seed=seed, progress=progress, description=description)


def _fit(build: Callable[[int], nn.Module], sampler: Sampler, config: TrainConfig, *, seed: int,
         progress: bool, description: str) -> Fitted:
    method = config.method
    loop = config.replace(method=MethodConfig())  # the loop runs the method's objective
    if method.restarts == 1:
        model = build(0)
        result = train(model, sampler, loop, seed=seed, progress=progress,
                       description=description, objective=objective(model, config))
        return Fitted(model, result, 0, ())
    val = validation_set(sampler, config, seed)
    screen = config.replace(steps=math.ceil(method.restart_fraction * config.steps))
    candidates, scores = [], []
    for r in range(method.restarts):
        model = build(r)
        try:
            res = train(model, sampler, screen.replace(method=MethodConfig()),
                        seed=seed + r * RESTART_SEED_STRIDE, test_set=val,
                        progress=progress, description=f"{description} restart {r}",
                        objective=objective(model, screen))
            score = res.final.mse if math.isfinite(res.final.mse) else math.inf
        except FloatingPointError:
            score = math.inf
        candidates.append(model)
        scores.append(score)
    best = min(range(len(scores)), key=lambda r: scores[r])
    model = candidates[best]
    result = train(model, sampler, loop, seed=seed, progress=progress, description=description,
                   objective=objective(model, config))
    return Fitted(model, result, best, tuple(scores))
