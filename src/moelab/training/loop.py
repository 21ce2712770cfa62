"""Training and evaluation for any ``nn.Module``.

Models with ``run(x) -> output with .y and .aux_losses`` (the moelab models) are run through it;
any other module (e.g. an ``nn.Sequential`` holding MoE layers) is run through ``forward`` while
:func:`~moelab.layers.record_routing` gathers the auxiliary losses of every MoE layer inside it.
The loop knows nothing about a particular model or task: it draws batches from a *sampler*
``sampler(n, generator) -> (x, y)`` (fresh samples every step, as in the paper, or a fixed training
set), minimises the squared loss plus the weighted auxiliary losses (weighted here and nowhere
else), calls the routers' auxiliary-loss-free bias update when asked, evaluates on an independent
test set, and records a per-step history.

Determinism: given the same model weights, sampler, config and ``seed``, two runs on CPU give the
same bits. The data come from a ``torch.Generator`` seeded with ``seed``; router noise draws from
torch's default generator, which is seeded inside a forked RNG state so the caller's is untouched.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from moelab._validation import one_of, positive_float, positive_int
from moelab.layers.moe import MoELayer
from moelab.layers.recording import RoutingRecord, record_routing
from moelab.training.method import MethodConfig
from moelab.training.metrics import router_metrics
from moelab.training.streams import MetricsStream
from moelab.typed_json import ADDED_LATER, NOT_IDENTITY

Sampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
#: ``objective(model, x, y, step)``: (loss, mse, values to log) from a method's own forward pass
#: (:mod:`moelab.training.recipes`), or None to train through the model's own forward pass.
Objective = Callable[[nn.Module, Tensor, Tensor, int],
                     "tuple[Tensor, Tensor, Mapping[str, Tensor]] | None"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
AUX_LOSSES = ("load_balance", "z_loss", "importance", "load", "reconstruction")
#: The auxiliary losses that reach the router's parameters.
ROUTER_LOSSES = ("load_balance", "z_loss", "importance", "load")


#: Weightings whose combine weight over one selected expert is exactly 1 (renormalised or unit):
#: a top-1 router with one of them gets no gradient from the task loss.
UNIT_WEIGHT_AT_TOP1 = ("paper", "softmax_renorm", "sigmoid", "unweighted")


class RouterGradientWarning(UserWarning):
    """A training setup in which some router can never learn (no gradient, no bias update)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train. The defaults are the paper's (Sec. 6): Adam, lr 1e-3, batch 128, squared loss,
    fresh samples every step, no auxiliary losses.

    ``aux_weights`` maps auxiliary-loss names (:data:`AUX_LOSSES`) to weights; ``balance_bias_rate``
    > 0 calls :meth:`~moelab.layers.routers.Router.update_balance_bias` after every step on routers
    built with ``balance_bias=True``. ``schedule="cosine"`` decays the learning rate to
    ``lr * final_lr_fraction`` after ``warmup_steps`` of linear warm-up. ``train_size`` > 0 trains on
    a fixed set of that many samples instead of fresh ones. ``eval_every`` > 0 evaluates on the test
    set every that many steps (and always at the end). ``method`` names a training method of
    :mod:`moelab.training.recipes` (run by :func:`moelab.training.recipes.fit`; :func:`train`
    itself trains plainly).
    """

    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0
    grad_clip: float | None = None
    aux_weights: dict[str, float] = field(default_factory=dict)
    balance_bias_rate: float = 0.0
    train_size: int = 0
    test_size: int = 10_000
    eval_every: int = 0
    log_every: int = 10
    # Where logged rows are also streamed as training runs (off by default; see
    # moelab.training.streams). Where, not what: these two are not part of a run's identity.
    tensorboard_dir: str | None = field(default=None, metadata=NOT_IDENTITY)
    jsonl_path: str | None = field(default=None, metadata=NOT_IDENTITY)
    method: MethodConfig = field(default_factory=MethodConfig, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        positive_int("steps", self.steps)
        positive_int("batch_size", self.batch_size)
        positive_float("lr", self.lr)
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("schedule", self.schedule, SCHEDULES)
        positive_int("test_size", self.test_size)
        positive_int("log_every", self.log_every)
        for name in ("weight_decay", "final_lr_fraction", "balance_bias_rate"):
            positive_float(name, getattr(self, name), allow_zero=True)
        for name in ("warmup_steps", "train_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.grad_clip is not None:
            positive_float("grad_clip", self.grad_clip)
        for name, weight in self.aux_weights.items():
            one_of("aux_weights key", name, AUX_LOSSES)
            positive_float(f"aux_weights[{name!r}]", weight, allow_zero=True)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Metrics:
    """Test metrics: mean squared error (averaged over outputs too) and sup (max abs) error."""

    mse: float
    sup_error: float


@dataclass(frozen=True)
class TrainResult:
    """``history`` rows: {"step", "loss", "mse", "lr", each auxiliary loss, and each MoE layer's
    router metrics (:mod:`moelab.training.metrics`)}, every ``log_every`` steps; ``evals`` rows:
    {"step", "test_mse", "test_sup"}; ``final`` the last evaluation; ``seconds`` the wall time of
    training."""

    final: Metrics
    history: list[dict[str, float]]
    evals: list[dict[str, float]]
    seconds: float


def _run(model: nn.Module, x: Tensor):
    return model.run(x) if hasattr(model, "run") else _Plain(model(x))


@dataclass(frozen=True)
class _Plain:
    y: Tensor
    aux_losses: Mapping[str, Tensor] = field(default_factory=dict)


def _train_forward(model: nn.Module, x: Tensor, *, record: bool) -> tuple[Any, RoutingRecord | None]:
    """The model's output (with ``.y`` and ``.aux_losses``) and, if asked or needed, the record of
    its MoE layers. A model without ``run`` gets the auxiliary losses of every MoE layer inside
    it, gathered by recording the forward pass (not detached: they are trained on)."""
    if hasattr(model, "run"):
        if not record:
            return model.run(x), None
        with record_routing(model, detach=True) as rec:
            out = model.run(x)
        return out, rec
    with record_routing(model, detach=False) as rec:
        y = model(x)
    return _Plain(y, rec.aux_losses), rec


def _checked_pair(pair: Any, what: str) -> tuple[Tensor, Tensor]:
    """A sampler's (x, y), or a TypeError saying what it returned instead; ``what`` names the
    source ("the sampler returned", "test_set is")."""
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(t, Tensor) for t in pair)):
        kinds = (f"({', '.join(type(t).__name__ for t in pair)})"
                 if isinstance(pair, (tuple, list)) else type(pair).__name__)
        raise TypeError(
            f"{what} {kinds}, not a pair (x, y) of torch tensors; convert numpy "
            "arrays with torch.as_tensor (e.g. lambda n, g: tuple(map(torch.as_tensor, f(n, g))))"
        )
    x, y = pair
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what} x of shape {tuple(x.shape)} and y of shape "
                         f"{tuple(y.shape)}: they must have the same number of rows")
    return x, y


def _flat_pair(pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Prediction and target as (n, out); a ValueError naming both shapes if they differ
    (a target of shape (n,) matches an output of shape (n, 1))."""
    n = y.shape[0]
    pred_f, y_f = pred.reshape(n, -1), y.reshape(n, -1)
    if pred_f.shape != y_f.shape:
        raise ValueError(
            f"the model's output has shape {tuple(pred.shape)} but the sampler's targets have "
            f"shape {tuple(y.shape)}; they must match (no broadcasting)"
        )
    return pred_f, y_f


def warn_if_routers_cannot_learn(model: nn.Module, config: TrainConfig) -> None:
    """Warn once when a top-1 router whose weight is always 1 gets no gradient and no bias update."""
    if any(config.aux_weights.get(name, 0) for name in ROUTER_LOSSES):
        return
    stuck = {name or type(model).__name__: m.router.weighting for name, m in model.named_modules()
             if isinstance(m, MoELayer) and m.router.top_k == 1
             and m.router.weighting in UNIT_WEIGHT_AT_TOP1 and m.router.routing == "token_choice"
             and not (m.router.expert_bias is not None and config.balance_bias_rate)}
    if stuck:
        weightings = ", ".join(f"weighting={w!r}" for w in sorted(set(stuck.values())))
        warnings.warn(
            f"the router(s) of {list(stuck)} will not learn: top-1 routing with {weightings} has "
            "combine weight exactly 1 (no gradient to the router), and no router auxiliary loss "
            f"{list(ROUTER_LOSSES)} is weighted and no balance bias is updated. Set aux_weights, "
            "use weighting='switch', or balance_bias with balance_bias_rate > 0 if the router "
            "should train (a fixed router, e.g. after data_init, is a valid choice).",
            RouterGradientWarning, stacklevel=3,
        )


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 8192) -> Metrics:
    """Test MSE and sup error of ``model`` on (x, y); y of shape (n,) or (n, out)."""
    was_training = model.training
    model.eval()
    try:
        preds = torch.cat([_run(model, xb).y for xb in x.split(batch_size)])
    finally:
        model.train(was_training)
    pred_f, y_f = _flat_pair(preds, y)
    err = pred_f - y_f
    return Metrics(mse=float(err.square().mean()), sup_error=float(err.abs().max()))


class _Batches:
    """Fresh batches drawn ``chunk`` at a time: the same distribution as one draw per step (every
    batch is new, independent data) at a fraction of the sampler's per-call overhead."""

    def __init__(self, sampler: Sampler, batch_size: int, generator: torch.Generator,
                 chunk: int = 64) -> None:
        self.sampler, self.batch_size, self.generator, self.chunk = (
            sampler, batch_size, generator, chunk)
        self._queue: list[tuple[Tensor, Tensor]] = []

    def next(self) -> tuple[Tensor, Tensor]:
        if not self._queue:
            x, y = _checked_pair(self.sampler(self.batch_size * self.chunk, self.generator),
                                 "the sampler returned")
            self._queue = list(zip(x.split(self.batch_size), y.split(self.batch_size),
                                   strict=True))[::-1]
        return self._queue.pop()


def _lr_factor(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    progress = (step - config.warmup_steps) / span
    low = config.final_lr_fraction
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay,
                               foreach=True)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel updates all parameters in one call: several times faster for tiny models.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return cls(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


def _loss(out, y: Tensor, aux_weights: dict[str, float]) -> tuple[Tensor, Tensor]:
    """(loss, mse): the squared loss plus each weighted auxiliary loss, which must be produced."""
    pred_f, y_f = _flat_pair(out.y, y)
    mse = (pred_f - y_f).square().mean()
    loss = mse
    for name, weight in aux_weights.items():
        if weight and name not in out.aux_losses:
            raise ValueError(
                f"aux_weights[{name!r}]={weight} but the model produces no {name!r} loss "
                f"(it produces {sorted(out.aux_losses)}); remove the weight or change the model"
            )
        if weight:
            loss = loss + weight * out.aux_losses[name]
    return loss, mse


def _update_balance_biases(record, rate: float) -> None:
    """DeepSeek-V3's bias update on every recorded layer that keeps a balance bias."""
    for layer, layer_out in zip(record.layers, record.outputs, strict=True):
        if layer.router.expert_bias is not None:
            layer.router.update_balance_bias(layer_out.routing.tokens_per_expert, rate)


def _check_plain(config: TrainConfig) -> None:
    if not config.method.is_plain:
        raise ValueError(f"config.method={config.method!r} is a training method: run it with "
                         "moelab.training.fit(build, sampler, config); train() trains through the "
                         "model's own forward pass (or a given objective)")


def _test_pair(sampler: Sampler, config: TrainConfig, seed: int,
               test_set: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """``test_set`` checked, or ``config.test_size`` points drawn with the seed ``seed + 1_000_003``."""
    given = "test_set is" if test_set is not None else "the sampler returned"
    if test_set is None:
        test_set = sampler(config.test_size, torch.Generator().manual_seed(seed + 1_000_003))
    return _checked_pair(test_set, given)


def _batch_source(sampler: Sampler, config: TrainConfig,
                  data_gen: torch.Generator) -> Callable[[], tuple[Tensor, Tensor]]:
    """Each step's batch: drawn with replacement from a fixed set of ``config.train_size`` points
    (drawn now), or fresh from the sampler when ``train_size`` is 0."""
    if not config.train_size:
        return _Batches(sampler, config.batch_size, data_gen).next
    x_all, y_all = _checked_pair(sampler(config.train_size, data_gen), "the sampler returned")

    def draw() -> tuple[Tensor, Tensor]:
        idx = torch.randint(config.train_size, (config.batch_size,), generator=data_gen)
        return x_all[idx], y_all[idx]

    return draw


def _keeps_balance_biases(model: nn.Module, config: TrainConfig) -> bool:
    """Whether the loop updates balance biases: a rate is set and some router keeps a bias."""
    return bool(config.balance_bias_rate) and any(
        isinstance(m, MoELayer) and m.router.expert_bias is not None for m in model.modules())


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                batch: tuple[Tensor, Tensor], step: int, *, objective: Objective | None,
                balance: bool, logged: bool) -> dict[str, float] | None:
    """One optimisation step on ``batch``; its history row when ``logged``, else None."""
    x, y = batch
    for group in optimizer.param_groups:
        group["lr"] = config.lr * _lr_factor(config, step)
    custom = objective(model, x, y, step) if objective is not None else None
    if custom is None:
        out, record = _train_forward(model, x, record=balance or logged)
        loss, mse = _loss(out, y, config.aux_weights)
        values = out.aux_losses
    else:
        (loss, mse, values), record = custom, None
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    if balance and record is not None:
        _update_balance_biases(record, config.balance_bias_rate)
    if not logged:
        return None
    row = {"step": step, "loss": loss.item(), "mse": mse.item(),
           "lr": optimizer.param_groups[0]["lr"]}
    row.update({k: float(v.detach()) if isinstance(v, Tensor) else float(v)
                for k, v in values.items()})
    if record is not None:
        row.update(router_metrics(record.routings))
    return row


def _logs_at(config: TrainConfig, step: int) -> bool:
    """Whether ``step`` gets a history row: every ``log_every`` steps and the last step."""
    return step % config.log_every == 0 or step == config.steps - 1


def _evaluates_after(config: TrainConfig, step: int) -> bool:
    """Whether the test set is evaluated after ``step``: every ``eval_every`` steps and at the end."""
    last = step == config.steps - 1
    return last or bool(config.eval_every and (step + 1) % config.eval_every == 0)


def train(
    model: nn.Module,
    sampler: Sampler,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    test_set: tuple[Tensor, Tensor] | None = None,
    progress: bool = True,
    description: str = "train",
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` in place on batches from ``sampler``; see the module docstring.

    ``test_set`` defaults to ``config.test_size`` fresh samples drawn from a generator seeded with
    ``seed + 1_000_003``, independent of the training stream. ``objective`` replaces the model's
    own forward pass and loss at the steps where it returns a value (see :data:`Objective`).
    """
    config = config or TrainConfig()
    _check_plain(config)
    data_gen = torch.Generator().manual_seed(seed)
    test_set = _test_pair(sampler, config, seed, test_set)
    next_batch = _batch_source(sampler, config, data_gen)
    balance = _keeps_balance_biases(model, config)
    warn_if_routers_cannot_learn(model, config)
    optimizer = _optimizer(model, config)
    history: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    start = time.perf_counter()
    model.train()
    with torch.random.fork_rng(devices=[]), MetricsStream.of(config) as stream:
        torch.manual_seed(seed)
        bar = tqdm(range(config.steps), desc=description, disable=not progress, leave=False)
        for step in bar:
            row = _train_step(model, optimizer, config, next_batch(), step, objective=objective,
                              balance=balance, logged=_logs_at(config, step))
            if row is not None:
                history.append(row)
                stream.write(row)
                bar.set_postfix(mse=f"{row['mse']:.2e}", refresh=False)
            if _evaluates_after(config, step):
                m = evaluate(model, *test_set)
                evals.append({"step": step + 1, "test_mse": m.mse, "test_sup": m.sup_error})
        bar.close()
    final = Metrics(mse=evals[-1]["test_mse"], sup_error=evals[-1]["test_sup"])
    return TrainResult(final=final, history=history, evals=evals,
                       seconds=time.perf_counter() - start)
