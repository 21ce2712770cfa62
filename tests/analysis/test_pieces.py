"""count_pieces: exact counts on known networks, bounds on MoEs, agreement with a dense grid."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from moelab.analysis import count_pieces
from moelab.layers import DeepMoE, DenseMLP, ExpertConfig, MoEConfig, MoELayer, RouterConfig

F64 = torch.float64


# -- helpers ------------------------------------------------------------------------------------
def tent_sequential(L: int) -> nn.Sequential:
    """tent(x) = 2 relu(x) - 4 relu(x - 1/2), composed L times, as Linear/ReLU/Linear blocks."""
    mods: list[nn.Module] = []
    for _ in range(L):
        up, down = nn.Linear(1, 2), nn.Linear(2, 1)
        with torch.no_grad():
            up.weight.copy_(torch.tensor([[1.0], [1.0]]))
            up.bias.copy_(torch.tensor([0.0, -0.5]))
            down.weight.copy_(torch.tensor([[2.0, -4.0]]))
            down.bias.zero_()
        mods += [up, nn.ReLU(), down]
    return nn.Sequential(*mods)


def tent_dense(L: int) -> DenseMLP:
    """The same tower as one DenseMLP of width 2: the inner maps fold tent into the next split."""
    model = DenseMLP(1, 1, hidden=2, depth=L + 1)
    with torch.no_grad():
        first, *inner, last = model.linears
        first.weight.copy_(torch.tensor([[1.0], [1.0]]))
        first.bias.copy_(torch.tensor([0.0, -0.5]))
        for lin in inner:
            lin.weight.copy_(torch.tensor([[2.0, -4.0], [2.0, -4.0]]))
            lin.bias.copy_(torch.tensor([0.0, -0.5]))
        last.weight.copy_(torch.tensor([[2.0, -4.0]]))
        last.bias.zero_()
    return model


PAPER = RouterConfig(weighting="paper")  # the paper's weighting: piecewise affine under top-1
AFFINE = ExpertConfig(depth=1)  # one affine map per expert
HIDDEN_4 = ExpertConfig(hidden=4)


def moe(widths, seed: int, **config) -> DeepMoE:
    torch.manual_seed(seed)
    model = DeepMoE(widths, MoEConfig(**config)).double().eval()
    for layer in model.moe_layers:
        if layer.router.expert_bias is not None:
            with torch.no_grad():
                layer.router.expert_bias.uniform_(-0.3, 0.3)
    return model


def segment(seed: int, d: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(d, generator=g, dtype=F64) * scale, torch.randn(d, generator=g, dtype=F64) * scale


def grid_breaks(y_NO: torch.Tensor) -> int:
    """Clusters of grid triples whose second difference is non-zero: each marks a kink or a jump."""
    tol = 1e-11 * (1 + float(y_NO.abs().max()))  # float64 rounding is ~1e-15
    bad = ((y_NO[2:] - 2 * y_NO[1:-1] + y_NO[:-2]).abs().amax(-1) > tol).nonzero().squeeze(1)
    if bad.numel() == 0:
        return 0
    return 1 + int((bad.diff() > 1).sum())


def run_with_paths(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """The model's output and its own selected experts (ascending per layer) for every row of x."""
    with torch.no_grad():
        out = model.run(x)
    if not out.routings:
        return out.y, [()] * x.shape[0]
    ids = torch.cat([r.expert_ids.sort(-1).values for r in out.routings], 1)
    return out.y, [tuple(row) for row in ids.tolist()]


# -- exact counts -------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [tent_sequential, tent_dense])
@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 6])
def test_tent_tower_has_two_to_the_L_pieces(build, L):
    result = count_pieces(build(L), [0.0], [1.0])
    assert result.num_pieces == 2**L
    expected = torch.arange(1, 2**L, dtype=F64) / 2**L
    torch.testing.assert_close(result.breakpoints, expected, rtol=0, atol=1e-12)
    slopes = torch.stack([p.slope[0] for p in result.pieces])
    torch.testing.assert_close(slopes, torch.tensor([2.0**L, -(2.0**L)] * 2 ** (L - 1), dtype=F64))
    assert result.affine and result.num_routing_intervals == 1


def test_leaky_relu_and_layers_outside_a_deep_moe():
    line = nn.Sequential(nn.Linear(1, 1), nn.LeakyReLU(0.1))
    with torch.no_grad():
        line[0].weight.fill_(1.0)
        line[0].bias.zero_()
    result = count_pieces(line, [-1.0], [1.0])
    assert result.breakpoints.tolist() == [0.5]
    assert [p.slope.item() for p in result.pieces] == pytest.approx([0.2, 2.0])

    deep = moe([2, 3, 2], 0, num_experts=3, router=PAPER, experts=ExpertConfig(hidden=4))
    a, b = segment(0, 2)
    whole = count_pieces(deep, a, b)
    chained = count_pieces(nn.Sequential(*deep.layers), a, b)
    assert chained.num_pieces == whole.num_pieces
    torch.testing.assert_close(chained.breakpoints, whole.breakpoints)
    assert [p.paths for p in chained.pieces] == [p.paths for p in whole.pieces]
    first = count_pieces(deep.layers[0], a, b)
    assert isinstance(deep.layers[0], MoELayer) and first.num_routing_intervals <= 3


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("E", [2, 3, 4])
def test_top1_moe_with_affine_experts_has_at_most_E_to_the_L_pieces(seed, L, E):
    model = moe([2] * (L + 1), seed, num_experts=E, router=PAPER, experts=AFFINE)
    most = 0
    for line in range(8):
        result = count_pieces(model, *segment(line, 2, scale=10.0))
        assert result.num_pieces <= E**L
        assert result.num_paths <= E**L
        most = max(most, result.num_pieces)
    assert most >= 2  # the lines do cross routing boundaries


@pytest.mark.parametrize("L, E", [(2, 2), (2, 3), (3, 2)])
def test_one_layer_with_L_times_E_affine_experts_has_at_most_L_times_E_pieces(L, E):
    model = moe([3, 3], 0, num_experts=L * E, router=PAPER, experts=AFFINE)
    for line in range(30):
        result = count_pieces(model, *segment(line, 3, scale=20.0))
        assert result.num_pieces <= L * E
        # Convex routing regions: each expert is used on at most one interval of the line.
        used = [p for piece in result.pieces for p in piece.paths]
        assert len(used) == len(set(used))


MODELS = {
    "dense": lambda s: DenseMLP(2, 2, hidden=6, depth=4).double(),
    "paper_top1": lambda s: moe([2, 3, 3, 2], s, num_experts=3, router=PAPER, experts=HIDDEN_4),
    "unweighted_top2": lambda s: moe([2, 3, 3, 2], s, num_experts=4,
                                     router=RouterConfig(top_k=2, weighting="unweighted"),
                                     experts=HIDDEN_4),
    "balance_bias": lambda s: moe([2, 3, 2], s, num_experts=4,
                                  router=RouterConfig(weighting="paper", balance_bias=True),
                                  experts=HIDDEN_4),
    "sigmoid_bias": lambda s: moe([2, 3, 2], s, num_experts=4,
                                  router=RouterConfig(weighting="sigmoid", balance_bias=True),
                                  experts=HIDDEN_4),
    "mlp_router_shared": lambda s: moe([2, 3, 2], s, num_experts=3,
                                       router=RouterConfig(weighting="paper", scorer="mlp", hidden=5),
                                       experts=HIDDEN_4, shared_experts=1),
    "low_dim_experts": lambda s: moe([2, 3, 2], s, num_experts=3, router=PAPER,
                                     experts=ExpertConfig(hidden=4, latent_dim=2)),
    "residual_dense_layers": lambda s: DeepMoE(
        [2, 2, 2, 2], MoEConfig(num_experts=3, router=PAPER, experts=HIDDEN_4), residual=True,
        moe_every=2,
    ).double(),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_pieces_agree_with_dense_grid(name, seed):
    torch.manual_seed(seed)
    model = MODELS[name](seed).eval()
    a, b = segment(seed, 2)
    result = count_pieces(model, a, b)
    n = 20001
    t = torch.linspace(0, 1, n, dtype=F64)
    x = a + t[:, None] * (b - a)
    y, paths = run_with_paths(model, x)
    for piece in result.pieces:
        inside = ((t > piece.start + 1e-9) & (t < piece.end - 1e-9)).nonzero().squeeze(1)
        affine = piece.offset + t[inside, None] * piece.slope
        torch.testing.assert_close(y[inside], affine, rtol=0, atol=1e-6)
        assert {paths[i] for i in inside.tolist()} <= set(piece.paths)
    step = 1 / (n - 1)
    short = sum(p.end - p.start < 4 * step for p in result.pieces)
    detected = grid_breaks(y)
    assert result.num_pieces - 1 - short <= detected <= result.num_pieces - 1


def test_merges_pieces_of_identical_experts():
    model = moe([2, 2], 0, num_experts=3, router=PAPER, experts=AFFINE)
    experts = model.layers[0].experts
    with torch.no_grad():
        experts.weights[0][:] = experts.weights[0][0]
        experts.biases[0][:] = experts.biases[0][0]
    switches = 0
    for line in range(10):
        result = count_pieces(model, *segment(line, 2, scale=10.0))
        assert result.num_pieces == 1
        assert result.num_routing_intervals == len(result.pieces[0].paths)
        switches += result.num_routing_intervals - 1
    assert switches > 0


def test_exact_router_ties_are_broken_as_the_model_breaks_them():
    # Experts 0 and 3 score identically everywhere. torch.topk does not break ties by lowest index:
    # which of the two it returns depends on the other scores, so the pick can flip mid-segment.
    torch.manual_seed(1)
    model = DeepMoE([2, 2], MoEConfig(num_experts=4, router=PAPER, experts=AFFINE)).double()
    scorer = model.layers[0].router.scorer
    with torch.no_grad():
        scorer.weight[3] = scorer.weight[0]
        scorer.bias[3] = scorer.bias[0]
    t = torch.linspace(0, 1, 2001, dtype=F64)
    seen = set()
    for line in range(10):
        a, b = segment(line, 2)
        result = count_pieces(model, a, b)
        _, paths = run_with_paths(model, a + t[:, None] * (b - a))
        for piece in result.pieces:
            inside = ((t > piece.start + 1e-9) & (t < piece.end - 1e-9)).nonzero().squeeze(1)
            assert {paths[i] for i in inside.tolist()} <= {piece.paths[0]}
            seen.add(piece.paths[0])
    assert {(0,), (3,)} <= seen


def test_routing_intervals_only_counts_constant_routing_of_a_switch_layer():
    model = moe([2, 2], 3, num_experts=4, router=RouterConfig(weighting="switch"),
                experts=ExpertConfig(depth=2))
    a, b = segment(3, 2, scale=10.0)
    result = count_pieces(model, a, b, routing_intervals_only=True)
    assert not result.affine and result.pieces[0].offset is None
    t = torch.linspace(0, 1, 20001, dtype=F64)
    top1 = model.run(a + t[:, None] * (b - a)).routings[0].expert_ids[:, 0]
    assert result.num_pieces == 1 + int((top1.diff() != 0).sum()) >= 2
    assert result.num_pieces == result.num_routing_intervals


# -- models that are not piecewise affine, and bad input -------------------------------------------
@pytest.mark.parametrize(
    "config, match",
    [
        (dict(router=RouterConfig(weighting="switch")), "weighting='switch'"),
        (dict(router=RouterConfig(weighting="paper", top_k=2)), "weighting='paper' with top_k=2"),
        (dict(router=PAPER, experts=ExpertConfig(activation="gelu")), "activation='gelu'"),
        (dict(router=RouterConfig(weighting="paper", capacity_factor=1.0)), "capacity_factor"),
        (dict(router=RouterConfig(weighting="paper", routing="expert_choice")), "expert-choice"),
        (dict(router=PAPER, experts=ExpertConfig(gated=True, activation="relu")), "gated"),
    ],
)
def test_non_piecewise_affine_models_raise(config, match):
    model = DeepMoE([2, 3, 2], MoEConfig(num_experts=3, **config))
    with pytest.raises(ValueError, match=match):
        count_pieces(model, [0.0, 0.0], [1.0, 1.0])


def test_routing_intervals_only_refuses_to_route_on_weighted_outputs():
    model = DeepMoE([2, 3, 2], MoEConfig(num_experts=3, router=RouterConfig(weighting="switch")))
    with pytest.raises(ValueError, match="layers.1.router .* layers.0 vary"):
        count_pieces(model, [0.0, 0.0], [1.0, 1.0], routing_intervals_only=True)


def test_training_mode_noise_raises_and_eval_mode_works():
    model = DeepMoE([2, 2], MoEConfig(num_experts=3, router=RouterConfig(weighting="paper", noise="jitter")))
    with pytest.raises(ValueError, match="model.eval"):
        count_pieces(model.train(), [0.0, 0.0], [1.0, 1.0])
    assert count_pieces(model.eval(), [0.0, 0.0], [1.0, 1.0]).num_pieces >= 1


def test_unknown_modules_and_bad_endpoints_raise():
    with pytest.raises(TypeError, match="Tanh"):
        count_pieces(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), [0.0, 0.0], [1.0, 1.0])
    model = DenseMLP(2, 1, hidden=3)
    with pytest.raises(ValueError, match="expects 2 features, got 3"):
        count_pieces(model, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        count_pieces(model, [0.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        count_pieces(model, [0.0, float("nan")], [1.0, 1.0])
    with pytest.raises(ValueError, match="rtol"):
        count_pieces(model, [0.0, 0.0], [1.0, 1.0], rtol=-1.0)


def test_float32_model_is_counted_in_float64():
    torch.manual_seed(0)
    model = DenseMLP(2, 1, hidden=8, depth=3)
    a, b = segment(0, 2)
    assert count_pieces(model, a.float(), b.float()).num_pieces == count_pieces(
        copy.deepcopy(model).double(), a.float().double(), b.float().double()
    ).num_pieces
