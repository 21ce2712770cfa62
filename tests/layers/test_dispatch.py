"""The grouped (sorted) path equals the dense reference path, and both equal a per-token loop."""

import itertools

import pytest
import torch

import moelab.layers.dispatch as dispatch_mod
from moelab.layers import ExpertConfig, MoEConfig, MoELayer, RouterConfig
from moelab.layers.experts import Experts, grouped_linear


def _grads(layer, x, mode):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = layer.run(x, dispatch_mode=mode)
    loss = out.y.square().mean() + sum(out.aux_losses.values())
    loss.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in layer.named_parameters()}
    return out, grads, x.grad.clone()


def _assert_paths_agree(layer, x, atol=1e-5):
    """The grouped and dense paths equal the plain reference path in outputs, aux losses and the
    gradients of every parameter and of the input; returns (dense, grouped) outputs."""
    ref, ref_g, ref_gx = _grads(layer, x, "reference")
    outs = []
    for mode in ("dense", "grouped"):
        fast, fast_g, fast_gx = _grads(layer, x, mode)
        torch.testing.assert_close(fast.y, ref.y, atol=atol, rtol=1e-5, msg=mode)
        for name in ref_g:
            torch.testing.assert_close(fast_g[name], ref_g[name], atol=atol, rtol=1e-5,
                                       msg=f"{mode}: {name}")
        torch.testing.assert_close(fast_gx, ref_gx, atol=atol, rtol=1e-5, msg=mode)
        for key in ref.aux_losses:
            torch.testing.assert_close(fast.aux_losses[key], ref.aux_losses[key], msg=mode)
        outs.append(fast)
    return outs[0], outs[1]


@pytest.mark.parametrize(
    "E,K,capacity,width",
    [(E, K, cap, w) for E, K in [(1, 1), (3, 1), (3, 2), (8, 2), (8, 3), (4, 4)]
     for cap in (None, 0.75) for w in (16, 10)],
)
def test_grouped_equals_dense_token_choice(E, K, capacity, width):
    torch.manual_seed(E * 100 + K * 10 + (capacity is None))
    cfg = MoEConfig(num_experts=E, router=RouterConfig(top_k=K, capacity_factor=capacity),
                    experts=ExpertConfig(hidden=width))
    layer = MoELayer(width, 8, cfg)
    x = torch.randn(2, 37, width)
    ref, fast = _assert_paths_agree(layer, x)
    assert torch.equal(ref.routing.expert_ids, fast.routing.expert_ids)
    if capacity is not None and E > 1:
        assert ref.routing.dropped_fraction.item() > 0


@pytest.mark.parametrize("weighting", ["paper", "switch", "sigmoid", "unweighted"])
@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_grouped_equals_dense_weightings_and_routings(weighting, routing):
    torch.manual_seed(7)
    capacity = 0.8 if routing == "expert_choice" else None
    cfg = MoEConfig(num_experts=5, router=RouterConfig(top_k=2, weighting=weighting, routing=routing,
                                                       capacity_factor=capacity),
                    experts=ExpertConfig(hidden=12))
    _assert_paths_agree(MoELayer(6, 3, cfg), torch.randn(29, 6))


@pytest.mark.parametrize(
    "extra",
    [dict(depth=1), dict(depth=3), dict(gated=True, activation="silu"),
     dict(bias=False), dict(latent_dim=2), dict(latent_dim=3, latent_decoder=True),
     dict(shared_experts=2), dict(scorer="mlp"), dict(activation="gelu")],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_grouped_equals_dense_expert_variants(extra):
    torch.manual_seed(3)
    router = RouterConfig(top_k=2, **{k: v for k, v in extra.items() if k == "scorer"})
    experts = ExpertConfig(hidden=8, **{k: v for k, v in extra.items()
                                        if k not in ("scorer", "shared_experts")})
    cfg = MoEConfig(num_experts=4, router=router, experts=experts,
                    shared_experts=extra.get("shared_experts", 0))
    _assert_paths_agree(MoELayer(16, 4, cfg), torch.randn(50, 16))


def test_empty_experts_get_zero_gradient_on_both_paths():
    torch.manual_seed(0)
    layer = MoELayer(8, 4, MoEConfig(num_experts=6, router=RouterConfig(top_k=2),
                                     experts=ExpertConfig(hidden=16)))
    with torch.no_grad():
        layer.router.scorer.bias[[0, 3]] = -100.0  # experts 0 and 3 are never chosen
    x = torch.randn(40, 8)
    ref, fast = _assert_paths_agree(layer, x)
    assert fast.routing.tokens_per_expert[[0, 3]].tolist() == [0, 0]
    _, grads, _ = _grads(layer, x, "grouped")
    for k in range(2):
        assert torch.all(grads[f"experts.weight{k + 1}"][[0, 3]] == 0)


def _loop_reference(layer, x_TI):
    """Per token, per kept slot: w * expert_e(x_t), written with explicit per-expert weights."""
    r = layer.router(x_TI)
    ex = layer.experts
    y = torch.zeros(x_TI.shape[0], layer.d_out)
    for t in range(x_TI.shape[0]):
        for s in range(r.expert_ids.shape[1]):
            if not r.kept[t, s]:
                continue
            e = int(r.expert_ids[t, s])
            h = x_TI[t]
            for k in range(ex.depth):
                h = h @ ex.weights[k][e] + ex.biases[k][e]
                if k < ex.depth - 1:
                    h = torch.relu(h)
            y[t] += r.weights[t, s] * h
    return y


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_both_paths_equal_a_per_token_loop(routing):
    torch.manual_seed(11)
    cfg = MoEConfig(num_experts=3, router=RouterConfig(top_k=2, routing=routing, capacity_factor=0.7),
                    experts=ExpertConfig(hidden=5, depth=3))
    layer = MoELayer(4, 2, cfg)
    x = torch.randn(15, 4)
    expected = _loop_reference(layer, x)
    for mode in ("reference", "dense", "grouped"):
        torch.testing.assert_close(layer.run(x, dispatch_mode=mode).y, expected)


@pytest.mark.parametrize("mode", ["reference", "dense", "grouped"])
@pytest.mark.parametrize("K", [1, 2])
def test_gradcheck_float64(mode, K):
    torch.manual_seed(5)
    cfg = MoEConfig(num_experts=3, router=RouterConfig(top_k=K, capacity_factor=1.0),
                    experts=ExpertConfig(hidden=4), dispatch=mode)
    layer = MoELayer(3, 2, cfg).double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())

    def f(x, *ps):
        # Routing is piecewise constant in x; gradcheck perturbations (1e-6) do not cross ties.
        return layer(x)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_combine_is_deterministic_bitwise():
    torch.manual_seed(2)
    layer = MoELayer(32, 32, MoEConfig(num_experts=8, router=RouterConfig(top_k=3),
                                       experts=ExpertConfig(hidden=64), dispatch="grouped"))
    x = torch.randn(300, 32)
    runs = []
    for _ in range(3):
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        y.square().mean().backward()
        runs.append((y.detach().clone(), layer.experts.weights[0].grad.clone()))
    for y, g in runs[1:]:
        assert torch.equal(y, runs[0][0]) and torch.equal(g, runs[0][1])


def test_grouped_linear_kernel_and_fallback_agree(monkeypatch):
    torch.manual_seed(0)
    E, I, O = 4, 16, 8
    w = torch.randn(E, I, O, requires_grad=True)
    b = torch.randn(E, O, requires_grad=True)
    counts = torch.tensor([5, 0, 7, 3])
    offsets = counts.cumsum(0).to(torch.int32)
    x = torch.randn(int(counts.sum()), I)
    assert dispatch_mod.__name__  # module imported
    from moelab.layers import experts as experts_mod

    assert experts_mod._grouped_mm_ok(x, w)
    y_kernel = grouped_linear(x, w, b, counts, offsets)
    monkeypatch.setattr(experts_mod, "_grouped_mm_ok", lambda *a: False)
    y_loop = grouped_linear(x, w, b, counts, offsets)
    torch.testing.assert_close(y_kernel, y_loop)
    expected = torch.cat([x[:5] @ w[0] + b[0], x[5:12] @ w[2] + b[2], x[12:] @ w[3] + b[3]])
    torch.testing.assert_close(y_kernel, expected)


def test_grouped_mm_needs_aligned_widths():
    from moelab.layers.experts import _grouped_mm_ok

    x = torch.randn(4, 10)
    assert not _grouped_mm_ok(x, torch.randn(2, 10, 8))  # 10 floats = 40 bytes per row
    assert _grouped_mm_ok(torch.randn(4, 16), torch.randn(2, 16, 8))
    assert not _grouped_mm_ok(x.double(), torch.randn(2, 10, 8).double())


def test_auto_picks_dense_for_tiny_experts_and_grouped_for_big():
    tiny = MoELayer(64, 1, MoEConfig(num_experts=4, experts=ExpertConfig(hidden=10)))
    big = MoELayer(256, 256, MoEConfig(num_experts=8, router=RouterConfig(top_k=2),
                                       experts=ExpertConfig(hidden=1024)))
    x_tiny, x_big = torch.randn(128, 64), torch.randn(512, 256)
    with torch.no_grad():
        r_tiny, r_big = tiny.router(x_tiny), big.router(x_big)
    assert dispatch_mod.choose_path("auto", 128, tiny.experts, r_tiny) == "dense"
    assert dispatch_mod.choose_path("auto", 512, big.experts, r_big) == "grouped"
    # The paper's layer at width 128 (4.3M multiply-adds dense on 128 tokens) is past the tie:
    # grouped. Table 3's experts (170 multiply-adds a token) stay dense on 8192 tokens (5.6M).
    wide = MoELayer(64, 1, MoEConfig(num_experts=4, experts=ExpertConfig(hidden=128)))
    assert dispatch_mod.choose_path("auto", 128, wide.experts, r_tiny) == "grouped"
    assert dispatch_mod.choose_path("auto", 64, wide.experts, r_tiny) == "dense"
    table3 = MoELayer(16, 1, MoEConfig(num_experts=4, experts=ExpertConfig(hidden=10)))
    assert table3.experts.macs_per_token == 170
    assert dispatch_mod.choose_path("auto", 8192, table3.experts, r_tiny) == "dense"  # 5.6M
    assert dispatch_mod.choose_path("auto", 16384, table3.experts, r_tiny) == "grouped"  # 11M
    for mode in ("dense", "grouped", "reference"):
        assert dispatch_mod.choose_path(mode, 512, big.experts, r_big) == mode


def test_experts_forward_all_matches_grouped_per_expert():
    torch.manual_seed(0)
    ex = Experts(3, 8, 4, ExpertConfig(hidden=12, depth=3))
    x = torch.randn(10, 8)
    all_ETO = ex.forward_all(x).y
    for e in range(3):
        counts = torch.zeros(3, dtype=torch.long)
        counts[e] = 10
        torch.testing.assert_close(ex.forward_grouped(x, counts).y, all_ETO[e])


def test_cases_cover_every_k_e_pair():
    # The parametrisation above must include K = E and E = 1 (degenerate routing).
    pairs = {(1, 1), (4, 4)}
    assert pairs <= set(itertools.product(range(1, 9), repeat=2))


def _relative_error(fast, ref):
    fast, ref = fast.detach(), ref.detach()
    return float((fast - ref).norm() / ref.norm().clamp_min(1e-30))


ROUTINGS_FOR_TOLERANCE = {
    "top1": dict(router=RouterConfig()),
    "top1_paper": dict(router=RouterConfig(weighting="paper", bias=False)),
    "top2": dict(router=RouterConfig(top_k=2)),
    "top3_capacity": dict(router=RouterConfig(top_k=3, capacity_factor=0.6)),
    "top1_capacity_score": dict(router=RouterConfig(capacity_factor=0.5, capacity_priority="score")),
    "expert_choice": dict(router=RouterConfig(top_k=2, routing="expert_choice", capacity_factor=0.7)),
    "shared": dict(router=RouterConfig(top_k=2), shared_experts=1),
    "latent": dict(router=RouterConfig(top_k=2), experts=ExpertConfig(hidden=10, latent_dim=3)),
    "latent_decoder": dict(experts=ExpertConfig(hidden=10, latent_dim=3, latent_decoder=True)),
    "jitter": dict(router=RouterConfig(top_k=2, noise="jitter", jitter_eps=0.1)),
    "noisy_topk": dict(router=RouterConfig(top_k=2, noise="noisy_topk")),
    "sigmoid_gated": dict(router=RouterConfig(top_k=2, weighting="sigmoid"),
                          experts=ExpertConfig(hidden=8, gated=True, activation="silu")),
}


@pytest.mark.parametrize("width", [10, 128], ids=lambda w: f"width{w}")
@pytest.mark.parametrize("case", sorted(ROUTINGS_FOR_TOLERANCE))
def test_fast_paths_equal_the_reference_within_1e_6_relative(case, width):
    """The paper's shapes (E=4, T=128, d_out=1), every kind of routing, in training mode (noise
    drawn alike for each path): outputs, auxiliary losses and every gradient within 1e-6 of the
    reference path, relative in norm."""
    kwargs = dict(experts=ExpertConfig(hidden=width)) | ROUTINGS_FOR_TOLERANCE[case]
    torch.manual_seed(0)
    layer = MoELayer(16, 1, MoEConfig(num_experts=4, **kwargs)).train()
    x = torch.randn(128, 16)
    results = {}
    for mode in ("reference", "dense", "grouped", "auto"):
        torch.manual_seed(1)  # the same router noise on every path
        results[mode] = _grads(layer, x, mode)
    ref, ref_g, ref_gx = results["reference"]
    for mode in ("dense", "grouped", "auto"):
        fast, fast_g, fast_gx = results[mode]
        assert torch.equal(fast.routing.expert_ids, ref.routing.expert_ids), mode
        assert _relative_error(fast.y, ref.y) <= 1e-6, mode
        assert _relative_error(fast_gx, ref_gx) <= 1e-6, mode
        for name, g in ref_g.items():
            assert _relative_error(fast_g[name], g) <= 1e-6, f"{mode}: {name}"
        for key in ref.aux_losses:
            assert _relative_error(fast.aux_losses[key], ref.aux_losses[key]) <= 1e-6, mode


@pytest.mark.parametrize("O", [1, 3, 4])
def test_grouped_linear_pads_a_narrow_output_for_the_kernel(O, monkeypatch):
    """Outputs of width O not a multiple of 4 floats run through grouped_mm on a zero-padded
    weight; outputs and gradients equal the per-group matmuls of the fallback."""
    from moelab.layers import experts as experts_mod

    torch.manual_seed(O)
    counts = torch.tensor([3, 0, 6, 2])
    offsets = counts.cumsum(0).to(torch.int32)
    x = torch.randn(11, 16, requires_grad=True)
    w = torch.randn(4, 16, O, requires_grad=True)
    b = torch.randn(4, O, requires_grad=True)
    assert experts_mod._kernel_weight(x, w) is not None  # the kernel path is the one tested
    g = torch.randn(11, O)

    def run():
        y = grouped_linear(x, w, b, counts, offsets)
        return (y, *torch.autograd.grad(y, (x, w, b), g))

    kernel = run()
    monkeypatch.setattr(experts_mod, "_grouped_mm_ok", lambda *a: False)
    assert experts_mod._kernel_weight(x, w) is None
    fallback = run()
    for got, want in zip(kernel, fallback, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert kernel[0].shape == (11, O)
