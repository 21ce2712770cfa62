"""The training loop: it learns, is deterministic per seed, weights aux losses, validates config."""

import pytest
import torch

from moelab.layers import DeepMoE, DenseMLP, ExpertConfig, MoEConfig, MoELayer, RouterConfig
from moelab.training import TrainConfig, evaluate, train


def _line_sampler(n, gen):
    x = torch.rand(n, 2, generator=gen) * 2 - 1
    return x, (x[:, :1] * 3 - x[:, 1:] + 0.5)


def test_a_tiny_run_learns_a_linear_target():
    torch.manual_seed(0)
    model = MoELayer(2, 1, MoEConfig(num_experts=2, experts=ExpertConfig(hidden=8)))
    before = evaluate(model, *_line_sampler(500, torch.Generator().manual_seed(9)))
    result = train(model, _line_sampler, TrainConfig(steps=300, lr=1e-2, test_size=500),
                   progress=False)
    assert result.final.mse < before.mse / 20
    assert result.history[0]["step"] == 0 and result.history[-1]["step"] == 299
    assert result.evals[-1]["step"] == 300


def _fresh_model(seed):
    torch.manual_seed(seed)
    return DeepMoE([2, 4, 1], MoEConfig(num_experts=3, router=RouterConfig(noise="jitter", jitter_eps=0.1)))


def test_same_seed_same_bits():
    cfg = TrainConfig(steps=40, test_size=100, eval_every=20)
    results, weights = [], []
    for _ in range(2):
        model = _fresh_model(1)
        results.append(train(model, _line_sampler, cfg, seed=5, progress=False))
        weights.append([p.detach().clone() for p in model.parameters()])
    assert results[0].history == results[1].history and results[0].evals == results[1].evals
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1], strict=True))
    other = train(_fresh_model(1), _line_sampler, cfg, seed=6, progress=False)
    assert other.history != results[0].history


def test_training_does_not_touch_the_callers_rng():
    model = _fresh_model(0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, _line_sampler, TrainConfig(steps=5, test_size=10), progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_aux_losses_are_weighted_into_the_loss():
    cfg = TrainConfig(steps=3, test_size=10, log_every=1, aux_weights={"load_balance": 2.0})
    res = train(_fresh_model(0), _line_sampler, cfg, progress=False)
    row = res.history[0]
    assert row["loss"] == pytest.approx(row["mse"] + 2.0 * row["load_balance"], rel=1e-5)


def test_balance_bias_rate_moves_the_router_bias():
    torch.manual_seed(0)
    model = MoELayer(2, 1, MoEConfig(num_experts=4, router=RouterConfig(balance_bias=True)))
    train(model, _line_sampler, TrainConfig(steps=5, test_size=10, balance_bias_rate=0.01),
          progress=False)
    assert model.router.expert_bias.abs().sum() > 0


def test_fixed_training_set_and_cosine_schedule():
    cfg = TrainConfig(steps=20, train_size=64, schedule="cosine", warmup_steps=5, log_every=1,
                      test_size=10)
    res = train(DenseMLP(2, 1, hidden=4), _line_sampler, cfg, progress=False)
    lrs = [r["lr"] for r in res.history]
    assert lrs[0] == pytest.approx(1e-3 / 5) and lrs[4] == pytest.approx(1e-3)
    assert lrs[-1] < 1e-4


def test_plain_modules_train_too():
    res = train(torch.nn.Linear(2, 1), _line_sampler, TrainConfig(steps=200, lr=5e-2,
                                                                 test_size=100), progress=False)
    assert res.final.mse < 0.05


def test_evaluate_reports_mse_and_sup():
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    m = evaluate(model, torch.tensor([[0.0], [1.0]]), torch.tensor([[0.5], [1.0]]))
    assert m.mse == pytest.approx(0.125) and m.sup_error == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [(dict(steps=0), r"steps must be >= 1"), (dict(lr=-1.0), r"lr must be a finite number > 0"),
     (dict(optimizer="lbfgs"), r"optimizer='lbfgs' is unknown"),
     (dict(schedule="step"), r"schedule='step' is unknown"),
     (dict(aux_weights={"balance": 1.0}), r"aux_weights key='balance' is unknown"),
     (dict(warmup_steps=-1), r"warmup_steps must be an int >= 0")],
)
def test_bad_train_config(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**kwargs)


def test_divergence_is_reported():
    def bad(n, gen):
        x = torch.rand(n, 2, generator=gen)
        return x, torch.full((n, 1), float("inf"))

    with pytest.raises(FloatingPointError, match="training loss became inf at step 0"):
        train(DenseMLP(2, 1, hidden=4), bad, TrainConfig(steps=2, test_size=4), progress=False)
