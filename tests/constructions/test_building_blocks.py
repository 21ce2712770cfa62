"""The pieces every construction is made of: interpolants, ridge fits, hand-set layer weights."""

import numpy as np
import pytest
import torch

from moelab.constructions import LayerSpec, Net, build_layer, interpolant, interpolation_error
from moelab.constructions.assembly import choice_spec
from moelab.constructions.interpolation import interpolation_bound
from moelab.constructions.ridge import directions, fit_ridge, ridge_units
from moelab.layers import MoELayer

F64 = torch.float64


def test_interpolant_relu_form_equals_numpy_interp():
    f = lambda z: torch.sin(3 * z) + z**2  # noqa: E731
    s = interpolant(f, 1.0, 2.5, 7)
    assert s.breakpoints.shape == (7,)
    z = torch.linspace(1.0, 2.5, 1001, dtype=F64)
    ref = np.interp(z.numpy(), s.knots.numpy(), f(s.knots).numpy())
    assert np.abs(s(z).numpy() - ref).max() < 1e-13
    assert torch.allclose(s(s.knots), f(s.knots), atol=1e-13, rtol=0)


def test_interpolation_error_obeys_the_c2_bound_and_is_attained_for_a_parabola():
    f = lambda z: 3 * z * (1 - z)  # noqa: E731  f'' = -6: error exactly h^2 * 6 / 8
    for m in (2, 5, 16):
        bound = interpolation_bound(f, 0.0, 1.0, m)
        assert bound == pytest.approx(6 / (8 * m**2), rel=1e-6)
        # a grid of 9m cell midpoints contains every knot interval's midpoint, where the error peaks
        assert interpolation_error(f, 0.0, 1.0, m, n_grid=9 * m) == pytest.approx(6 / (8 * m**2), rel=1e-12)


def test_interpolant_rejects_bad_arguments():
    with pytest.raises(ValueError, match="b > a"):
        interpolant(torch.sin, 1.0, 1.0, 4)
    with pytest.raises(ValueError, match="m must be >= 1"):
        interpolant(torch.sin, 0.0, 1.0, 0)


def test_ridge_fit_is_exact_for_a_function_in_the_span_and_deterministic():
    w, b = ridge_units(directions(2, 8), -1.0, 1.0, 5)
    z = torch.rand(400, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1
    y = 2 * torch.relu(z @ w[3] + b[3]) - torch.relu(z @ w[17] + b[17]) + 0.5
    net = fit_ridge(z, y, w, b)
    assert float((net(z)[:, 0] - y).abs().max()) < 1e-6
    again = fit_ridge(z, y, w, b)
    assert torch.equal(net.out, again.out)


def test_directions_are_unit_vectors():
    for k in (1, 2, 3, 5):
        u = directions(k, 12)
        assert u.shape == (12, k)
        assert torch.allclose(u.norm(dim=1), torch.ones(12, dtype=F64))


def test_pass_through_channels_are_exact():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    both = Net(3, 3).carry(0, 0, 3)
    assert both.hidden == 6
    assert torch.equal(both(x), x)
    shifted = Net(3, 3).carry(0, 0, 3, lower=-10.0)
    assert shifted.hidden == 3
    assert float((shifted(x) - x).abs().max()) < 1e-13


def test_build_layer_writes_experts_and_router_into_a_plain_moe_layer():
    # expert 0 doubles x, expert 1 negates it (4 units each); the router picks 0 where x_0 > x_1
    eye, zero = torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64)
    nets = [Net(2, 2).units(eye, zero, 2 * eye).units(-eye, zero, -2 * eye),
            Net(2, 2).units(eye, zero, -eye).units(-eye, zero, eye)]
    router = (torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64), None)
    spec = LayerSpec(2, 2, tuple(n.affine_maps() for n in nets), router=router)
    layer = build_layer(spec)
    assert isinstance(layer, MoELayer)
    assert layer.config.router.weighting == "paper" and layer.config.router.top_k == 1
    assert layer.config.experts.hidden == 4 and not layer.config.router.bias
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    out = layer.run(x)
    pick0 = x[:, 0] > x[:, 1]
    assert torch.equal(out.routing.top1(), (~pick0).long())
    expected = torch.where(pick0[:, None], 2 * x, -x)
    assert float((out.y - expected).abs().max()) < 1e-13


def test_choice_layer_routes_on_the_scores_after_the_state():
    # state (x_0, x_1), then 3 scores; expert e writes e + x_0 whatever the scores are
    experts = tuple(Net(5, 1).carry(0, 0).affine_maps() for _ in range(3))
    for e, maps in enumerate(experts):
        maps[-1][1][0] += e
    spec = choice_spec(2, 1, experts)
    assert (spec.d_in, spec.d_out, spec.num_experts) == (5, 1, 3)
    layer = build_layer(spec)
    assert not layer.config.router.bias
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    x[:, :2] *= 100  # a large state must not sway the choice: W_R = [0 | I]
    out = layer.run(x)
    assert torch.equal(out.routing.top1(), x[:, 2:].argmax(dim=1))
    assert float((out.y[:, 0] - x[:, 0] - x[:, 2:].argmax(dim=1)).abs().max()) < 1e-10
