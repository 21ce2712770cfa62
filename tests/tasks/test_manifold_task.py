"""make_manifold_task: determinism, samples on the manifold, uniform sampling, targets, noise."""

import math

import pytest
import torch

from moelab.tasks import (
    Circle,
    ManifoldSample,
    Sphere,
    Spiral,
    SwissRoll,
    build_manifold_task,
    make_manifold_task,
)

CASES = [
    ("circle", None),
    ("sphere", 2),
    ("sphere", 3),
    ("torus", 2),
    ("spiral", None),
    ("swiss_roll", None),
]
IDS = [f"{name}-d{d}" for name, d in CASES]


def _ks_uniform(values: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance between the sample and U[lo, hi]."""
    u = ((values.double() - lo) / (hi - lo)).sort().values
    n = u.shape[0]
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    return float(torch.maximum(upper - u, u - (upper - 1 / n)).abs().max())


@pytest.mark.parametrize("embedding", ["pad", "isometry"])
@pytest.mark.parametrize(("name", "d"), CASES, ids=IDS)
def test_samples_lie_on_the_manifold(name, d, embedding):
    s = make_manifold_task(name, 500, D=12, d=d, embedding=embedding, seed=0)
    task = s.task
    assert isinstance(s, ManifoldSample)
    assert s.x.shape == (500, 12) and s.x.dtype == torch.float32
    assert s.y.shape == (500, 1) and s.y_clean.shape == (500, 1)
    assert s.latent.shape == (500, task.manifold.latent_dim)
    assert s.chart.dtype == torch.long and s.chart.shape == (500,)
    assert 0 <= int(s.chart.min()) and int(s.chart.max()) < task.n_charts
    assert float(task.distance(s.x).max()) < 1e-6
    # an off-manifold point is detected as such
    assert float(task.distance(1.1 * s.x).min()) > 1e-3
    assert torch.allclose(task.from_latent(s.latent), s.x, atol=1e-5)
    k = task.manifold.ambient_dim
    if embedding == "pad":
        assert torch.all(s.x[:, k:] == 0)
    else:
        assert float(s.x[:, k:].abs().max()) > 0.1
    P = task.embedding
    assert torch.allclose(P.T @ P, torch.eye(k, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize(("name", "d"), CASES, ids=IDS)
def test_same_seed_same_data_different_seed_different(name, d):
    kwargs = dict(D=6, d=d, embedding="isometry", target="ridge", noise=0.1)
    a = make_manifold_task(name, 50, seed=3, **kwargs)
    b = make_manifold_task(name, 50, seed=3, **kwargs)
    c = make_manifold_task(name, 50, seed=4, **kwargs)
    g = torch.Generator().manual_seed(3)
    e = make_manifold_task(name, 50, generator=g, **kwargs)
    for field in ("x", "y", "y_clean", "latent", "chart"):
        assert torch.equal(getattr(a, field), getattr(b, field))
        assert torch.equal(getattr(a, field), getattr(e, field))
    assert not torch.allclose(a.x, c.x)
    assert not torch.allclose(a.task.embedding, c.task.embedding)


def test_test_set_comes_from_the_same_task():
    train = make_manifold_task("sphere", 100, D=8, embedding="isometry", target="ridge", seed=0)
    test = train.task.sample(100, seed=1)
    assert test.task is train.task
    assert float(train.task.distance(test.x).max()) < 1e-6
    assert not torch.allclose(train.x, test.x)
    assert torch.allclose(train.task.target(test.x), test.y_clean, atol=1e-5)


def test_experiment_one_circle_and_paper_target():
    s = make_manifold_task("circle", 400, D=32, seed=0)
    theta = s.latent[:, 0].double()
    assert torch.allclose(s.x[:, 0].double(), torch.cos(theta), atol=1e-6)
    assert torch.allclose(s.x[:, 1].double(), torch.sin(theta), atol=1e-6)
    expected = torch.sin(5 * torch.cos(theta)) + torch.cos(3 * torch.sin(theta))
    assert torch.allclose(s.y[:, 0].double(), expected, atol=1e-5)
    assert torch.equal(s.y, s.y_clean)
    assert s.task.n_charts == 4
    assert torch.allclose(s.task.target(s.x), s.y, atol=1e-6)


def test_paper_target_reads_pre_embedding_coordinates_under_isometry():
    s = make_manifold_task("circle", 200, D=16, embedding="isometry", seed=5)
    p = s.task.pre_embed(s.x)
    expected = torch.sin(5 * p[:, 0]) + torch.cos(3 * p[:, 1])
    assert torch.allclose(s.y_clean[:, 0].double(), expected, atol=1e-5)


def test_noise_is_gaussian_with_the_requested_scale():
    s = make_manifold_task("circle", 20000, D=4, noise=0.3, seed=0)
    residual = (s.y - s.y_clean).double()
    assert abs(float(residual.std()) - 0.3) < 0.01
    assert abs(float(residual.mean())) < 0.01


def test_callable_target_and_dtype():
    s = make_manifold_task("torus", 64, D=5, target=lambda p: p[:, 0] * p[:, 3], dtype=torch.float64, seed=0)
    assert s.x.dtype == s.y.dtype == s.latent.dtype == torch.float64
    assert torch.allclose(s.y[:, 0], s.x[:, 0] * s.x[:, 3])


def test_circle_and_torus_angles_are_uniform():
    s = make_manifold_task("torus", 4000, D=4, d=2, seed=0)
    for j in range(2):
        assert _ks_uniform(s.latent[:, j], 0, 2 * math.pi) < 0.03
    c = make_manifold_task("circle", 4000, D=4, seed=1)
    assert _ks_uniform(c.latent[:, 0], 0, 2 * math.pi) < 0.03


def test_sphere_is_uniform_in_area():
    # Archimedes: on S^2 each coordinate is uniform on [-1, 1]
    s = make_manifold_task("sphere", 4000, D=3, d=2, seed=0)
    for j in range(3):
        assert _ks_uniform(s.x[:, j], -1, 1) < 0.03
    latent_round_trip = Sphere(2).to_latent(Sphere(2).to_ambient(s.latent.double()))
    assert torch.allclose(latent_round_trip, s.latent.double(), atol=1e-5)


@pytest.mark.parametrize("manifold", [Spiral(), SwissRoll()], ids=["spiral", "swiss_roll"])
def test_spiral_arclength_matches_polyline_and_sampling_is_uniform_in_it(manifold):
    profile = manifold.profile
    t = torch.linspace(profile.t_min, profile.t_max, 200001, dtype=torch.float64)
    polyline = torch.cat(
        [torch.zeros(1, dtype=torch.float64), profile.curve(t).diff(dim=0).norm(dim=1).cumsum(0)]
    )
    assert torch.allclose(profile.arclength(t), polyline, atol=1e-8)
    assert torch.allclose(profile.param_at_arclength(profile.arclength(t)), t, atol=1e-9)
    s = make_manifold_task(manifold, 4000, D=4, seed=0)
    # latent recomputed from x (independently of the sampler) is uniform in arclength
    arclength = s.task.to_latent(s.x)[:, 0]
    assert torch.allclose(arclength, s.latent[:, 0], atol=1e-4)
    assert _ks_uniform(arclength, 0, profile.length) < 0.03
    if isinstance(manifold, SwissRoll):
        assert _ks_uniform(s.latent[:, 1], -manifold.height, manifold.height) < 0.03


def test_build_manifold_task_matches_make():
    task = build_manifold_task("circle", D=8, seed=0)
    assert isinstance(task.manifold, Circle)
    assert task.D == 8 and task.d == 1 and task.n_charts == 4
    a = task.sample(30, seed=2)
    b = task.sample(30, seed=2)
    assert torch.equal(a.x, b.x)
