"""Every task class is a Task (widths, regions, sample) and a training sampler; one signature per
generator."""

import inspect

import pytest
import torch

from moelab.layers import DeepMoE, MoEConfig
from moelab.tasks import (
    ManifoldSample,
    ManifoldTask,
    PiecewiseSample,
    PiecewiseTask,
    ProductSample,
    ProductTask,
    Sample,
    Task,
    build_manifold_task,
    build_piecewise_task,
    build_product_task,
    make_manifold_task,
    make_piecewise_task,
    make_product_task,
)
from moelab.training import TrainConfig, train

TASKS = {
    "manifold": lambda: build_manifold_task("circle", D=6, n_charts=5, seed=0),
    "piecewise": lambda: build_piecewise_task(E=3, L=2, output="sum"),
    "product": lambda: build_product_task(E=3, D=[3, 4], seed=1),
}
#: (d_in, d_out, n_regions, the task's own name for its regions)
EXPECTED = {
    "manifold": (6, 1, 5, "chart_of"),
    "piecewise": (2, 1, 9, "piece_id"),
    "product": (7, 2, 9, "piece_id"),
}


@pytest.mark.parametrize("kind", TASKS)
def test_task_classes_implement_the_protocol(kind):
    task = TASKS[kind]()
    d_in, d_out, n_regions, own = EXPECTED[kind]
    assert isinstance(task, Task)
    assert (task.d_in, task.d_out, task.n_regions) == (d_in, d_out, n_regions)
    s = task.sample(200, seed=3)
    assert isinstance(s, Sample)
    assert s.x.shape == (200, d_in) and s.y.shape == (200, d_out)
    region = task.region(s.x)
    assert region.dtype == torch.long and region.shape == (200,)
    assert torch.equal(region, getattr(task, own)(s.x))
    assert torch.equal(s.region, region)
    assert int(region.min()) >= 0 and int(region.max()) < task.n_regions
    assert len(region.unique()) > 1


def test_existing_names_still_work_beside_the_protocol():
    m, p, q = (TASKS[k]() for k in ("manifold", "piecewise", "product"))
    assert (m.n_charts, m.D) == (m.n_regions, m.d_in)
    assert (p.n_pieces, p.out_dim) == (p.n_regions, p.d_out)
    assert (q.out_dim, q.D) == (q.d_out, q.d_in)
    s = make_piecewise_task(50, E=3, L=2, seed=0)
    assert torch.equal(s.piece_id, s.piece[:, 0] * 3 + s.piece[:, 1])


@pytest.mark.parametrize("kind", TASKS)
def test_a_task_is_a_sampler_of_its_samples(kind):
    task = TASKS[kind]()
    x, y = task(64, torch.Generator().manual_seed(7))
    s = task.sample(64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(x, s.x) and torch.equal(y, s.y)


@pytest.mark.parametrize("kind", TASKS)
def test_train_takes_a_task_as_its_sampler(kind):
    task = TASKS[kind]()
    torch.manual_seed(0)
    model = DeepMoE([task.d_in, 16, task.d_out], MoEConfig(num_experts=3))
    config = TrainConfig(steps=4, batch_size=16, test_size=64, log_every=1)
    result = train(model, task, config, seed=0, progress=False)
    assert len(result.history) == 4
    assert result.final.mse > 0
    x, y = task(64, torch.Generator().manual_seed(1_000_003))  # train's default test set
    with torch.no_grad():
        assert float((model(x) - y).square().mean()) == pytest.approx(result.final.mse, rel=1e-5)


@pytest.mark.parametrize(
    ("make", "build", "positional", "returns"),
    [
        (make_manifold_task, build_manifold_task, ["manifold", "n"], ManifoldSample),
        (make_piecewise_task, build_piecewise_task, ["n"], PiecewiseSample),
        (make_product_task, build_product_task, ["n"], ProductSample),
    ],
)
def test_make_shows_the_one_keyword_list_of_build(make, build, positional, returns):
    shown = inspect.signature(make).parameters
    kinds = {name: p.kind for name, p in shown.items()}
    assert [n for n, k in kinds.items() if k is inspect.Parameter.POSITIONAL_OR_KEYWORD] == positional
    keywords = {n for n, k in kinds.items() if k is inspect.Parameter.KEYWORD_ONLY}
    built = inspect.signature(build).parameters
    assert {n for n, p in built.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} <= keywords
    assert {"seed", "generator", "dtype"} <= keywords
    for name in built:
        assert shown[name].default == built[name].default
    assert inspect.signature(make).return_annotation in (returns, returns.__name__)


def test_make_is_build_then_sample_from_the_same_random_state():
    a = make_manifold_task("sphere", 40, D=5, embedding="isometry", target="ridge", seed=4)
    g = torch.Generator().manual_seed(4)
    b = build_manifold_task("sphere", D=5, embedding="isometry", target="ridge", generator=g)
    assert torch.equal(a.x, b.sample(40, generator=g).x)
    assert isinstance(a.task, ManifoldTask)
    assert isinstance(make_piecewise_task(5, E=2, L=2).task, PiecewiseTask)
    assert isinstance(make_product_task(5, E=3, D=2).task, ProductTask)


def test_unknown_keywords_are_named():
    with pytest.raises(TypeError, match="n_chart"):
        make_manifold_task("circle", 10, D=4, n_chart=4)
    with pytest.raises(TypeError, match="out"):
        make_piecewise_task(10, E=3, L=2, out="sum")
    with pytest.raises(TypeError, match="manifold"):
        make_product_task(10, E=3, D=3, manifold="circle")
