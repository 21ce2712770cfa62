"""train() on the user's own model and data: no silently dropped losses, shapes or routers."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from moelab.layers import ExpertConfig, MoEConfig, MoELayer, RouterConfig
from moelab.training import TrainConfig, train
from moelab.training.loop import RouterGradientWarning


def _sampler(n, gen):
    x = torch.rand(n, 3, generator=gen) * 2 - 1
    return x, x[:, :1] * 2 - x[:, 1:2]


def _sequential(seed=0, **router):
    torch.manual_seed(seed)
    config = MoEConfig(num_experts=3, router=RouterConfig(**router), experts=ExpertConfig(hidden=8))
    return nn.Sequential(nn.Linear(3, 4), MoELayer(4, 4, config), nn.ReLU(), MoELayer(4, 1, config))


def test_a_model_without_run_is_trained_on_the_aux_losses_of_every_moe_layer_inside():
    model = _sequential()
    cfg = TrainConfig(steps=3, test_size=50, log_every=1, aux_weights={"load_balance": 0.5})
    result = train(model, _sampler, cfg, progress=False)
    for row in result.history:
        assert row["loss"] == pytest.approx(row["mse"] + 0.5 * row["load_balance"])
        assert row["load_balance"] > 1.0  # summed over the two layers (each is >= 1)


def test_a_weighted_aux_loss_that_is_never_produced_is_an_error():
    cfg = TrainConfig(steps=2, test_size=50, aux_weights={"reconstruction": 0.1})
    with pytest.raises(ValueError, match=r"aux_weights\['reconstruction'\]=0.1 but the model "
                                         r"produces no 'reconstruction' loss"):
        train(_sequential(), _sampler, cfg, progress=False)
    with pytest.raises(ValueError, match=r"produces no 'load_balance' loss \(it produces \[\]\)"):
        train(nn.Linear(3, 1), _sampler, cfg.replace(aux_weights={"load_balance": 1.0}),
              progress=False)


def test_targets_of_another_shape_than_the_output_are_rejected():
    def wide(n, gen):
        x, _ = _sampler(n, gen)
        return x, torch.zeros(n, 3)
    with pytest.raises(ValueError, match=r"output has shape \(128, 1\) but the sampler's targets "
                                         r"have shape \(128, 3\)"):
        train(_sequential(), wide, TrainConfig(steps=2, test_size=50), progress=False)
    flat = train(_sequential(), lambda n, g: (_sampler(n, g)[0], _sampler(n, g)[1][:, 0]),
                 TrainConfig(steps=2, test_size=50), progress=False)  # (n,) targets match (n, 1)
    assert flat.history


def test_a_numpy_sampler_gets_a_moelab_error():
    def numpy_sampler(n, gen):
        x = np.random.default_rng(0).random((n, 3), dtype=np.float32)
        return x, x[:, :1]
    with pytest.raises(TypeError, match=r"the sampler returned \(ndarray, ndarray\), not a pair "
                                        r"\(x, y\) of torch tensors; convert numpy arrays"):
        train(_sequential(), numpy_sampler, TrainConfig(steps=2, test_size=50), progress=False)


def test_top1_paper_weighting_without_router_losses_warns_once():
    cfg = TrainConfig(steps=3, test_size=50)
    with pytest.warns(RouterGradientWarning, match=r"will not learn") as caught:
        train(_sequential(weighting="paper"), _sampler, cfg, progress=False)
    assert len([w for w in caught if w.category is RouterGradientWarning]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RouterGradientWarning)
        train(_sequential(weighting="switch"), _sampler, cfg, progress=False)
        train(_sequential(weighting="paper"), _sampler,
              cfg.replace(aux_weights={"load_balance": 0.01}), progress=False)
        train(_sequential(weighting="paper", balance_bias=True), _sampler,
              cfg.replace(balance_bias_rate=1e-3), progress=False)


@pytest.mark.parametrize("weighting", ["softmax_renorm", "sigmoid", "unweighted"])
def test_every_weighting_constant_at_top1_warns(weighting):
    """Renormalised (or unit) weights over one selected expert are exactly 1, as the paper's are."""
    with pytest.warns(RouterGradientWarning, match=rf"weighting='{weighting}'"):
        train(_sequential(weighting=weighting), _sampler, TrainConfig(steps=2, test_size=50),
              progress=False)


def test_balance_bias_updates_work_for_any_model():
    model = _sequential(balance_bias=True)
    train(model, _sampler, TrainConfig(steps=5, test_size=50, balance_bias_rate=0.1), progress=False)
    for layer in (model[1], model[3]):
        assert layer.router.expert_bias.abs().sum() > 0
