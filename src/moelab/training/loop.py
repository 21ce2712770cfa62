"""Training and evaluation for any model with ``run(x) -> output with .y and .aux_losses``.

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
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from moelab._validation import one_of, positive_float, positive_int
from moelab.layers.moe import MoELayer

Sampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
AUX_LOSSES = ("load_balance", "z_loss", "importance", "load", "reconstruction")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train. The defaults are the paper's (Sec. 6): Adam, lr 1e-3, batch 128, squared loss,
    fresh samples every step, no auxiliary losses.

    ``aux_weights`` maps auxiliary-loss names (:data:`AUX_LOSSES`) to weights; ``balance_bias_rate``
    > 0 calls :meth:`~moelab.layers.routers.Router.update_balance_bias` after every step on routers
    built with ``balance_bias=True``. ``schedule="cosine"`` decays the learning rate to
    ``lr * final_lr_fraction`` after ``warmup_steps`` of linear warm-up. ``train_size`` > 0 trains on
    a fixed set of that many samples instead of fresh ones. ``eval_every`` > 0 evaluates on the test
    set every that many steps (and always at the end).
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
    """``history`` rows: {"step", "loss", "mse", "lr", and each auxiliary loss}, every
    ``log_every`` steps; ``evals`` rows: {"step", "test_mse", "test_sup"}; ``final`` the last
    evaluation; ``seconds`` the wall time of training."""

    final: Metrics
    history: list[dict[str, float]]
    evals: list[dict[str, float]]
    seconds: float


def _run(model: nn.Module, x: Tensor):
    return model.run(x) if hasattr(model, "run") else _Plain(model(x))


@dataclass(frozen=True)
class _Plain:
    y: Tensor
    aux_losses: dict = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 8192) -> Metrics:
    """Test MSE and sup error of ``model`` on (x, y); y of shape (n,) or (n, out)."""
    was_training = model.training
    model.eval()
    try:
        preds = torch.cat([_run(model, xb).y for xb in x.split(batch_size)])
    finally:
        model.train(was_training)
    err = preds.reshape(y.shape[0], -1) - y.reshape(y.shape[0], -1)
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
            x, y = self.sampler(self.batch_size * self.chunk, self.generator)
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


def train(
    model: nn.Module,
    sampler: Sampler,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    test_set: tuple[Tensor, Tensor] | None = None,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place on batches from ``sampler``; see the module docstring.

    ``test_set`` defaults to ``config.test_size`` fresh samples drawn from a generator seeded with
    ``seed + 1_000_003``, independent of the training stream.
    """
    config = config or TrainConfig()
    data_gen = torch.Generator().manual_seed(seed)
    if test_set is None:
        test_set = sampler(config.test_size, torch.Generator().manual_seed(seed + 1_000_003))
    fixed = sampler(config.train_size, data_gen) if config.train_size else None
    fresh = _Batches(sampler, config.batch_size, data_gen)
    balanced = [m for m in model.modules()
                if isinstance(m, MoELayer) and m.router.expert_bias is not None]
    optimizer = _optimizer(model, config)
    history: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    start = time.perf_counter()
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = tqdm(range(config.steps), desc=description, disable=not progress, leave=False)
        for step in bar:
            if fixed is not None:
                idx = torch.randint(config.train_size, (config.batch_size,), generator=data_gen)
                x, y = fixed[0][idx], fixed[1][idx]
            else:
                x, y = fresh.next()
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(config, step)
            out = _run(model, x)
            mse = (out.y.reshape(y.shape[0], -1) - y.reshape(y.shape[0], -1)).square().mean()
            loss = mse
            for name, weight in config.aux_weights.items():
                if weight and name in out.aux_losses:
                    loss = loss + weight * out.aux_losses[name]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if config.balance_bias_rate:
                for layer in balanced:
                    layer.router.update_balance_bias(
                        layer.last_output.routing.tokens_per_expert, config.balance_bias_rate
                    )
            if step % config.log_every == 0 or step == config.steps - 1:
                row = {"step": step, "loss": loss.item(), "mse": mse.item(),
                       "lr": optimizer.param_groups[0]["lr"]}
                row.update({k: v.item() for k, v in out.aux_losses.items()})
                history.append(row)
                bar.set_postfix(mse=f"{row['mse']:.2e}", refresh=False)
            last = step == config.steps - 1
            if last or (config.eval_every and (step + 1) % config.eval_every == 0):
                m = evaluate(model, *test_set)
                evals.append({"step": step + 1, "test_mse": m.mse, "test_sup": m.sup_error})
        bar.close()
    final = Metrics(mse=evals[-1]["test_mse"], sup_error=evals[-1]["test_sup"])
    return TrainResult(final=final, history=history, evals=evals,
                       seconds=time.perf_counter() - start)
