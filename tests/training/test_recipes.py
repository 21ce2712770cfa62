"""Training methods (moelab.training.recipes): each method's mechanics on tiny models."""

import math

import pytest
import torch

from moelab.experiments.config import RunConfig, apply_overrides
from moelab.layers import DeepMoE, ExpertConfig, MoEConfig, RouterConfig
from moelab.training import TrainConfig, evaluate, train
from moelab.training.method import MethodConfig
from moelab.training.recipes import (
    VALIDATION_SEED_OFFSET,
    all_path_outputs,
    assign_paths,
    decode_paths,
    fit,
    forced_forward,
    method_steps,
    objective,
    soft_forward,
    straight_through_forward,
    temperature,
)

HARD = MoEConfig(num_experts=3, experts=ExpertConfig(hidden=8),
                 router=RouterConfig(weighting="paper"), check_finite=False)


def _deep(seed=0, config=HARD):
    torch.manual_seed(seed)
    return DeepMoE([2, 4, 2], config)


def _sampler(n, gen):
    x = torch.rand(n, 2, generator=gen) * 3
    return x, torch.stack([torch.sin(3 * x[:, 0]), x[:, 1].square()], 1)


def test_the_temperature_anneals_to_t_end_then_routing_is_hard():
    cfg = TrainConfig(steps=10, method=MethodConfig(name="anneal", fraction=0.5, t_start=2.0,
                                                    t_end=0.02))
    end = method_steps(cfg)
    assert end == 5
    assert temperature(cfg, 0) == 2.0 and temperature(cfg, end - 1) == pytest.approx(0.02)
    assert all(temperature(cfg, s) == 0.0 for s in range(end, 10))
    step = objective(_deep(), cfg)
    x, y = _sampler(16, torch.Generator().manual_seed(0))
    assert step(_deep(), x, y, end - 1) is not None  # the soft phase
    assert all(step(_deep(), x, y, s) is None for s in range(end, 10))  # the model's own pass


def test_the_soft_mixture_at_low_temperature_is_the_hard_routed_model():
    model = _deep()
    x, _ = _sampler(512, torch.Generator().manual_seed(1))
    hard = model(x)
    assert torch.allclose(soft_forward(model, x, 1e-5), hard, atol=1e-5)
    assert not torch.allclose(soft_forward(model, x, 1.0), hard, atol=1e-3)


def test_an_annealed_run_ends_as_the_hard_routed_model():
    """After training, evaluation (the model's own hard top-1 pass) is what the run reports."""
    model = _deep()
    cfg = TrainConfig(steps=30, lr=1e-2, test_size=200,
                      method=MethodConfig(name="anneal", fraction=0.5))
    fitted = fit(lambda r: model, _sampler, cfg)
    test = _sampler(200, torch.Generator().manual_seed(1_000_003))
    assert fitted.result.final.mse == evaluate(model, *test).mse
    temps = [row["temperature"] for row in fitted.result.history if "temperature" in row]
    assert temps and temps[0] == 1.0 and temps == sorted(temps, reverse=True)


def test_straight_through_is_hard_in_value_and_trains_the_router():
    model = _deep()
    x, y = _sampler(256, torch.Generator().manual_seed(2))
    out = straight_through_forward(model, x)
    assert torch.allclose(out, model(x), atol=1e-6, rtol=0)  # the same experts chosen
    (out - y).square().mean().backward()
    assert all(layer.router.scorer.weight.grad.abs().sum() > 0 for layer in model.layers)


def test_every_path_output_is_the_forced_forward_pass():
    model = _deep()
    x, _ = _sampler(64, torch.Generator().manual_seed(3))
    y_PTO, logp_PT = all_path_outputs(model, x)
    assert y_PTO.shape == (9, 64, 2) and logp_PT.shape == (9, 64)
    assert torch.allclose(logp_PT.exp().sum(0), torch.ones(64), atol=1e-5)
    for p in range(9):
        path = decode_paths(torch.full((64,), p), [3, 3])
        assert path[0].tolist() == [p // 3, p % 3]
        forced, _ = forced_forward(model, x, path)
        assert torch.allclose(forced, y_PTO[p], atol=1e-6)
    routed = torch.stack([layer.router.scorer(h).argmax(-1) for layer, h in
                          zip(model.layers, forced_forward(model, x, torch.zeros(64, 2, dtype=int))[1],
                              strict=True)], 1)[:, :1]  # the first layer's choice
    first = model.layers[0].router.scorer(x).argmax(-1)
    assert torch.equal(routed[:, 0], first)


def test_em_assigns_each_sample_to_the_path_that_fits_it():
    """Hand-made: the target of half the samples is exactly path (2, 1)'s output, of the other
    half path (0, 2)'s; the E-step (without the prior) finds both."""
    model = _deep()
    x, _ = _sampler(40, torch.Generator().manual_seed(4))
    with torch.no_grad():
        y_PTO, _ = all_path_outputs(model, x)
    want = torch.tensor([2 * 3 + 1] * 20 + [0 * 3 + 2] * 20)
    y = y_PTO[want, torch.arange(40)]
    assert torch.equal(assign_paths(model, x, y, prior=False), want)
    assert torch.equal(decode_paths(want, [3, 3])[:, 0], torch.tensor([2] * 20 + [0] * 20))


def test_em_step_trains_routers_as_classifiers_of_the_assignment():
    model = _deep()
    cfg = TrainConfig(steps=4, method=MethodConfig(name="em"))
    x, y = _sampler(64, torch.Generator().manual_seed(5))
    loss, mse, logged = objective(model, cfg)(model, x, y, 0)
    assert loss > mse and logged["router_ce"] > 0 and 1 <= logged["paths_assigned"] <= 9
    loss.backward()
    assert all(layer.router.scorer.weight.grad.abs().sum() > 0 for layer in model.layers)


@pytest.mark.filterwarnings("ignore::moelab.training.loop.RouterGradientWarning")
def test_restarts_select_on_the_validation_set_not_the_test_set():
    """Candidate 0 fits the test set's targets, candidate 1 the validation set's: the selection
    must pick candidate 1. The sampler tells the two sets apart by their generator's seed."""
    seed = 7
    test_seed = seed + 1_000_003

    def sampler(n, gen):
        x = torch.rand(n, 2, generator=gen)
        sign = 1.0 if gen.initial_seed() == test_seed else -1.0
        return x, sign * x[:, :1]

    def build(restart):
        torch.manual_seed(0)
        model = DeepMoE([2, 1], MoEConfig(num_experts=2, experts=ExpertConfig(hidden=4),
                                          router=RouterConfig(weighting="paper")))
        with torch.no_grad():  # every expert computes w * x_0 exactly
            for w in model.layers[0].experts.weights:
                w.zero_()
            for b in model.layers[0].experts.biases:
                b.zero_()
            w1, w2 = model.layers[0].experts.weights
            w1[:, 0, 0], w1[:, 1, 1] = 1.0, -1.0
            w2[:, 0, 0], w2[:, 1, 0] = 1.0, -1.0
            if restart == 0:
                w2.mul_(1.0)  # fits the test targets (+x_0)
            else:
                w2.mul_(-1.0)  # fits everything else (-x_0)
        return model

    cfg = TrainConfig(steps=2, lr=1e-9, test_size=50,
                      method=MethodConfig(restarts=2, validation_size=64))
    fitted = fit(build, sampler, cfg, seed=seed)
    assert fitted.restart == 1
    assert fitted.validation_mse[1] < 1e-10 < fitted.validation_mse[0]
    assert fitted.result.final.mse > 0.1  # on the test set the chosen candidate is the worse one
    assert VALIDATION_SEED_OFFSET != 1_000_003


@pytest.mark.filterwarnings("ignore::moelab.training.loop.RouterGradientWarning")
def test_a_nan_candidate_is_never_chosen():
    calls = []

    def build(restart):
        calls.append(restart)
        model = _deep(restart)
        if restart == 0:
            with torch.no_grad():
                model.layers[1].experts.weights[-1].fill_(math.nan)
        return model

    cfg = TrainConfig(steps=4, test_size=50, method=MethodConfig(restarts=2))
    assert fit(build, _sampler, cfg).restart == 1 and calls == [0, 1]


def test_method_config_names_bad_values():
    with pytest.raises(ValueError, match="method.name"):
        MethodConfig(name="sa")
    with pytest.raises(ValueError, match="method.fraction"):
        MethodConfig(fraction=1.5)
    with pytest.raises(ValueError, match="t_end"):
        MethodConfig(t_start=0.1, t_end=1.0)


def test_plain_runs_keep_their_ids_and_methods_change_them():
    run = RunConfig(experiment="x")
    assert "method" not in run.identity()["train"]
    em = apply_overrides(run, {"train.method.name": "em"})
    assert em.run_id() != run.run_id() and em.identity()["train"]["method"]["name"] == "em"
    assert RunConfig.from_dict(em.to_dict()) == em


def test_a_dense_model_trains_plainly_under_every_method():
    from moelab.layers import DenseMLP

    model = DenseMLP(2, 2, hidden=8)
    assert objective(model, TrainConfig(method=MethodConfig(name="em"))) is None
    res = train(model, _sampler, TrainConfig(steps=3, test_size=20), progress=False)
    assert math.isfinite(res.final.mse)


def test_a_registered_run_trains_with_its_method_and_reports_the_restart():
    from moelab.experiments.execute import execute
    from moelab.experiments.registry import learnability

    run = next(r for r in learnability().runs(seeds=1, overrides={"train.steps": 5,
                                                                  "train.test_size": 64})
               if r.labels == {"method": "restarts", "model": "2-3-MoE", "m": "16"})
    run = apply_overrides(run, {"train.method.name": "em", "train.method.validation_size": 64})
    a, b = execute(run), execute(run)
    assert a.metrics["restart_chosen"] in range(4) and a.test_mse == b.test_mse
    assert "router_ce" in a.history[0] and "router_ce" not in a.history[-1]  # EM, then plain


def test_train_refuses_a_method_it_would_not_run():
    cfg = TrainConfig(steps=2, test_size=10, method=MethodConfig(name="anneal"))
    with pytest.raises(ValueError, match="moelab.training.fit"):
        train(_deep(), _sampler, cfg, progress=False)
