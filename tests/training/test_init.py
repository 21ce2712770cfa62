"""Data-dependent initialisation: balanced Voronoi routers, kinks on the data, pass-through, and
exact invariance to zero-padding of the input."""

import torch

from moelab.layers import DeepMoE, DenseMLP, ExpertConfig, MoEConfig, MoELayer, RouterConfig
from moelab.tasks import build_manifold_task
from moelab.training import TrainConfig, train
from moelab.training.init import data_init, kmeans


def _circle(D):
    task = build_manifold_task("circle", D=D, n_charts=4)
    return task, (lambda n, g: (lambda s: (s.x, s.y))(task.sample(n, generator=g)))


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    c, labels = kmeans(x, 3, generator=g)
    assert sorted(torch.bincount(labels).tolist()) == [50, 50, 50]
    assert torch.cdist(c.float(), centres).min(1).values.max() < 0.1


def test_router_starts_balanced_and_is_the_nearest_centroid_partition():
    _, sampler = _circle(16)
    x, _ = sampler(4000, torch.Generator().manual_seed(1))
    layer = MoELayer(16, 1, MoEConfig(num_experts=4, router=RouterConfig(weighting="paper")))
    data_init(layer, x, generator=torch.Generator().manual_seed(2))
    load = layer.run(x).routing.tokens_per_expert
    assert load.min() > 0.8 * 1000 and load.max() < 1.2 * 1000


def test_expert_kinks_lie_on_the_data():
    _, sampler = _circle(8)
    x, _ = sampler(2000, torch.Generator().manual_seed(1))
    layer = MoELayer(8, 1, MoEConfig(num_experts=4, router=RouterConfig(weighting="paper"),
                                     experts=ExpertConfig(hidden=12)))
    data_init(layer, x, generator=torch.Generator().manual_seed(3))
    ids = layer.run(x).routing.expert_ids[:, 0]
    w, b = layer.experts.weights[0], layer.experts.biases[0]
    for e in range(4):
        z = x[ids == e] @ w[e] + b[e]  # pre-activations on the expert's own points
        assert torch.all(z.min(0).values < 1e-5) and torch.all(z.max(0).values > -1e-5)
        torch.testing.assert_close(z.std(0), torch.ones(12), atol=0.05, rtol=0)


def test_zero_padding_does_not_change_training():
    results = []
    for D in (4, 32):
        _, sampler = _circle(D)
        x, _ = sampler(4096, torch.Generator().manual_seed(5))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = MoELayer(D, 1, MoEConfig(num_experts=4, router=RouterConfig(weighting="paper"),
                                             experts=ExpertConfig(hidden=10)))
        data_init(model, x, generator=torch.Generator().manual_seed(7))
        res = train(model, sampler, TrainConfig(steps=60, lr=1e-2, test_size=500),
                    progress=False)
        results.append(res.final.mse)
    assert abs(results[0] - results[1]) <= 1e-6 * results[0]


def test_deep_stack_passes_its_input_through_the_first_layer():
    x = torch.rand(3000, 2) * 3
    model = DeepMoE([2, 4, 2], MoEConfig(num_experts=3, router=RouterConfig(weighting="paper"),
                                         experts=ExpertConfig(hidden=16)))
    data_init(model, x, generator=torch.Generator().manual_seed(0))
    h = model.layers[0](x)
    torch.testing.assert_close(h[:, :2], x)
    assert model.run(x).routings[1].tokens_per_expert.min() > 0


def test_dense_mlp_gets_the_same_hidden_layer_init():
    x = torch.rand(1000, 3)
    mlp = DenseMLP(3, 1, hidden=20)
    data_init(mlp, x, generator=torch.Generator().manual_seed(0))
    z = mlp.linears[0](x)
    torch.testing.assert_close(z.std(0), torch.ones(20), atol=0.05, rtol=0)
    assert torch.all(z.min(0).values < 1e-5) and torch.all(z.max(0).values > -1e-5)
