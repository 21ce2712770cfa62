"""Atlases (Example 4.6): charts cover M, map domains into [0, 1]^d, invert; partition of unity."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moelab.tasks import Circle, Sphere, Spiral, Torus, build_manifold_task, make_atlas
from moelab.tasks.atlas import smooth_bump

CASES = [
    ("circle", None, None),
    ("circle", None, 7),
    ("sphere", 2, None),
    ("sphere", 2, 4),
    ("sphere", 2, 9),
    ("sphere", 3, 8),
    ("torus", 2, 9),
    ("spiral", None, None),
    ("swiss_roll", None, None),
    ("swiss_roll", None, 4),
]
IDS = [f"{m}-d{d}-E{E}" for m, d, E in CASES]


def _sample(name, d, E, embedding="isometry", n=400, seed=0):
    task = build_manifold_task(name, D=9, d=d, n_charts=E, embedding=embedding, seed=seed)
    return task, task.sample(n, seed=seed + 1)


@pytest.mark.parametrize("embedding", ["pad", "isometry"])
@pytest.mark.parametrize(("name", "d", "E"), CASES, ids=IDS)
def test_charts_cover_map_into_the_cube_and_invert(name, d, E, embedding):
    task, s = _sample(name, d, E, embedding)
    atlas = task.atlas
    n, dim = s.x.shape[0], task.d
    inside = atlas.in_domain(s.x)
    assert inside.shape == (n, atlas.n_charts)
    assert bool(inside[torch.arange(n), s.chart].all())  # own chart's domain holds the point
    phi = atlas.phi(s.x)
    assert phi.shape == (n, atlas.n_charts, dim)
    assert float(phi[inside].min()) > -1e-6 and float(phi[inside].max()) < 1 + 1e-6
    for i in range(atlas.n_charts):  # phi_i^{-1}(phi_i(x)) == x on all of U_i
        hit = inside[:, i]
        if hit.any():
            back = atlas.inverse(phi[hit, i], i)
            assert torch.allclose(back, s.x[hit], atol=2e-5), i
    back_own = atlas.inverse(phi[torch.arange(n), s.chart], s.chart)
    assert torch.allclose(back_own, s.x, atol=2e-5)


@pytest.mark.parametrize(("name", "d", "E"), CASES, ids=IDS)
def test_linear_maps_are_the_chart_maps(name, d, E):
    task, s = _sample(name, d, E)
    atlas = task.atlas
    A, a = atlas.A, atlas.a
    assert A.shape == (atlas.n_charts, task.d, task.D) and a.shape == (atlas.n_charts, task.d)
    folded = torch.einsum("edD,nD->ned", A.double(), s.x.double()) + a.double()
    assert torch.allclose(folded.float(), atlas.phi(s.x), atol=1e-5)
    B = atlas.tangents.double()
    eye = torch.eye(task.d, dtype=torch.float64).expand(atlas.n_charts, -1, -1)
    assert torch.allclose(B @ B.transpose(1, 2), eye, atol=1e-6)
    assert float(task.distance(atlas.centers).max()) < 1e-6


@pytest.mark.parametrize(("name", "d", "E"), CASES, ids=IDS)
def test_partition_of_unity(name, d, E):
    task, s = _sample(name, d, E)
    atlas = task.atlas
    rho = atlas.partition_of_unity(s.x)
    inside = atlas.in_domain(s.x)
    assert torch.allclose(rho.sum(dim=1), torch.ones(s.x.shape[0]), atol=1e-6)
    assert float(rho.min()) >= 0
    assert torch.all(rho[~inside] == 0)  # supported inside U_i
    assert torch.equal(atlas.chart_of(s.x), rho.argmax(dim=1))
    assert torch.equal(s.chart, rho.argmax(dim=1))
    # the chart holds the largest share: max rho >= 1/E (Thm 4.8's routing margin)
    assert float(rho.max(dim=1).values.min()) >= 1 / atlas.n_charts - 1e-6


@pytest.mark.parametrize(("name", "d", "E"), CASES, ids=IDS)
def test_inverse_chart_is_defined_on_the_whole_cube(name, d, E):
    task, _ = _sample(name, d, E)
    atlas = task.atlas
    u = torch.rand(300, task.d, generator=torch.Generator().manual_seed(0))
    for i in range(atlas.n_charts):
        x = atlas.inverse(u, i)
        assert float(task.distance(x).max()) < 1e-6
        # lands in the closure of U_i: every other chart's bump may vanish, chart i's may not
        r2 = atlas._r2(task.pre_embed(x))[:, i]
        assert float(r2.max()) <= 1 + 1e-6


def test_circle_atlas_of_experiment_one():
    atlas = make_atlas(Circle(), 4, dtype=torch.float64)
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(atlas.centers, expected, atol=1e-12)
    # arcs of half-width 1.25 * pi / 4 < pi / 2: injective tangent projections
    assert atlas.half_width == pytest.approx(1.25 * math.pi / 4)
    assert torch.allclose(
        atlas.phi(atlas.centers)[torch.arange(4), torch.arange(4)],
        torch.full((4, 1), 0.5, dtype=torch.float64),
    )


def test_default_chart_counts():
    assert make_atlas(Circle()).n_charts == 4
    assert make_atlas(Sphere(2)).n_charts == 6
    assert make_atlas(Torus(2)).n_charts == 16
    assert make_atlas(Spiral()).n_charts == 10


def test_partition_of_unity_is_smooth_along_the_circle():
    # second differences of rho along theta converge as the step shrinks; a kink would make them
    # grow like 1/h (4x between the two steps)
    atlas = make_atlas(Circle(), 5, dtype=torch.float64)
    peaks = []
    for steps in (4000, 16000):
        theta = torch.linspace(0, 2 * math.pi, steps + 1, dtype=torch.float64)
        h = theta[1] - theta[0]
        rho = atlas.partition_of_unity(torch.stack([theta.cos(), theta.sin()], dim=1))
        peaks.append(float(((rho[2:] - 2 * rho[1:-1] + rho[:-2]) / h**2).abs().max()))
    assert peaks[1] == pytest.approx(peaks[0], rel=0.05)


def test_smooth_bump():
    s = torch.tensor([0.0, 0.5, 0.999, 1.0, 2.0], dtype=torch.float64)
    b = smooth_bump(s)
    assert float(b[0]) == 1.0 and float(b[1]) == pytest.approx(math.exp(-1))
    assert float(b[2]) < 1e-300 or float(b[2]) == pytest.approx(math.exp(-999))
    assert float(b[3]) == 0.0 and float(b[4]) == 0.0


def _in_triangle(x, a, b, c):
    def side(o, p):
        return (p[0] - o[0]) * (x[:, 1] - o[1]) - (p[1] - o[1]) * (x[:, 0] - o[0])

    s1, s2, s3 = side(a, b), side(b, c), side(c, a)
    return ((s1 > 0) & (s2 > 0) & (s3 > 0)) | ((s1 < 0) & (s2 < 0) & (s3 < 0))


def test_spiral_charts_are_not_convexly_separable():
    # A linear router's cells are convex. For the outer charts of the default spiral, the convex
    # hull of the chart's core arc (where it wins argmax rho) holds curve points outside U_i, so no
    # linear router on raw x can reproduce the atlas's routing.
    spiral = Spiral()
    atlas = make_atlas(spiral, dtype=torch.float64)
    t = torch.linspace(spiral.t_min, spiral.t_max, 20001, dtype=torch.float64)
    points = spiral.profile.curve(t)
    inside = atlas.in_domain(points)
    half_core = (spiral.t_max - spiral.t_min) / (2 * atlas.n_charts)
    bad_charts = 0
    for i in range(atlas.n_charts):
        tc = float(atlas.t_centers[i])
        ends = torch.tensor([tc - half_core, tc, tc + half_core], dtype=torch.float64)
        a, mid, b = spiral.profile.curve(ends)
        core_t = torch.linspace(tc - 0.999 * half_core, tc + 0.999 * half_core, 50)
        assert torch.all(atlas.chart_of(spiral.profile.curve(core_t.double())) == i)
        bad_charts += bool((_in_triangle(points, a, mid, b) & ~inside[:, i]).any())
    assert bad_charts >= atlas.n_charts // 2


@settings(max_examples=25, deadline=None)
@given(
    E=st.integers(3, 12),
    overlap=st.floats(0.05, 0.45),
    seed=st.integers(0, 2**31 - 1),
)
def test_circle_atlas_property(E, overlap, seed):
    task = build_manifold_task("circle", D=3, n_charts=E, chart_overlap=overlap, seed=seed)
    s = task.sample(64, seed=seed)
    atlas = task.atlas
    rho = atlas.partition_of_unity(s.x)
    inside = atlas.in_domain(s.x)
    assert torch.allclose(rho.sum(1), torch.ones(64), atol=1e-6)
    assert torch.all(rho[~inside] == 0)
    phi = atlas.phi(s.x)[torch.arange(64), s.chart]
    assert float(phi.min()) > -1e-6 and float(phi.max()) < 1 + 1e-6
    assert torch.allclose(atlas.inverse(phi, s.chart), s.x, atol=2e-5)
    # the chart is the nearest centre
    nearest = torch.cdist(s.x.double(), atlas.centers.double()).argmin(dim=1)
    assert torch.equal(s.chart, nearest)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["sphere", "torus", "spiral", "swiss_roll"]), seed=st.integers(0, 999))
def test_partition_of_unity_property(name, seed):
    task = build_manifold_task(name, D=6, embedding="isometry", seed=seed)
    s = task.sample(32, seed=seed)
    rho = task.atlas.partition_of_unity(s.x)
    assert torch.allclose(rho.sum(1), torch.ones(32), atol=1e-6)
    assert torch.all(rho[~task.atlas.in_domain(s.x)] == 0)
