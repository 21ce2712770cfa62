"""The real-data task: scikit-learn's bundled data sets in R^D, a fixed split, an exact isometry."""

import sys

import pytest
import torch

from moelab.tasks import DATASETS, RealDataTask, Sample, Task, build_real_data_task
from moelab.tasks import real_data as rd
from moelab.training import TrainConfig, train

#: (native width, classes, points)
SHAPES = {"digits": (64, 10, 1797), "wine": (13, 3, 178), "breast_cancer": (30, 2, 569)}
F64 = torch.float64


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_task_implements_the_protocol(dataset):
    k, classes, points = SHAPES[dataset]
    for D in (None, 100):
        task = build_real_data_task(dataset, D=D, seed=0)
        assert isinstance(task, Task) and isinstance(task, RealDataTask)
        assert (task.d_in, task.d_out, task.n_regions) == (D or k, classes, classes)
        assert task.native_width == k and len(task.labels) == points
        s = task.sample(300, seed=1)
        assert isinstance(s, Sample)
        assert s.x.shape == (300, D or k) and s.y.shape == (300, classes)
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.float32
        assert torch.equal(s.y, torch.nn.functional.one_hot(s.label, classes).float())
        assert torch.equal(task.region(s.x), s.label) and torch.equal(s.region, s.label)
        x, y = task(50, torch.Generator().manual_seed(2))
        assert x.shape == (50, D or k) and y.shape == (50, classes)


def _distances(x):
    """Pairwise distances from coordinate differences (the matmul shortcut loses digits)."""
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


@pytest.mark.parametrize("embedding", ["isometry", "pad"])
@pytest.mark.parametrize(("dataset", "D"), [("wine", 13), ("wine", 1024), ("digits", 64),
                                            ("digits", 1024)])
def test_the_embedding_preserves_every_distance(dataset, D, embedding):
    task = build_real_data_task(dataset, D=D, embedding=embedding, seed=3, dtype=F64)
    rows = torch.arange(0, len(task.labels), 3)  # a third of digits keeps the test fast
    embedded = task.take(rows).x
    assert embedded.dtype == F64 and embedded.shape == (len(rows), D)
    native = task.features[rows]
    assert torch.allclose(_distances(embedded), _distances(native), rtol=0, atol=1e-10)
    assert torch.allclose(task.embedding.T @ task.embedding, torch.eye(task.native_width, dtype=F64),
                          rtol=0, atol=1e-12)


def test_the_isometry_is_random_and_fixed_by_its_seed_and_pad_is_zero_padding():
    a, b, c = (build_real_data_task("wine", D=64, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.embedding, b.embedding) and not torch.equal(a.embedding, c.embedding)
    assert (a.embedding[13:] != 0).any()  # not confined to the first k axes
    pad = build_real_data_task("wine", D=64, embedding="pad", dtype=F64)
    assert torch.equal(pad.points[:, :13], pad.features) and not pad.points[:, 13:].any()


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_split_is_disjoint_stratified_and_fixed_by_its_seed(dataset):
    task = build_real_data_task(dataset, D=256, seed=0)
    train_idx, test_idx = task.train_index, task.test_index
    assert not set(train_idx.tolist()) & set(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(len(task.labels)))
    for c, n_c in enumerate(torch.bincount(task.labels).tolist()):
        assert int((task.labels[test_idx] == c).sum()) == round(0.25 * n_c)
    # Neither D nor the embedding's seed moves the split; split_seed does.
    same = build_real_data_task(dataset, D=None, embedding="pad", seed=5)
    assert torch.equal(same.test_index, test_idx) and torch.equal(same.train_index, train_idx)
    other = build_real_data_task(dataset, split_seed=1)
    assert not torch.equal(other.test_index, test_idx)
    assert torch.equal(build_real_data_task(dataset, split_seed=1).test_index, other.test_index)


def test_features_are_standardised_with_the_training_split_only():
    task = build_real_data_task("digits", dtype=F64)
    train_part = task.features[task.train_index]
    varying = train_part.std(0) > 0
    assert varying.sum() < 64  # digits has pixels that never light up in the training split
    assert torch.allclose(train_part.mean(0), torch.zeros(64, dtype=F64), atol=1e-12)
    assert torch.allclose(train_part.std(0)[varying], torch.ones(int(varying.sum()), dtype=F64))
    # The held-out points did not enter the statistics: their mean is not zero.
    assert task.features[task.test_index].mean(0).abs().max() > 1e-3


def test_the_sampler_never_draws_a_test_point():
    task = build_real_data_task("wine", D=64, seed=0)
    s = task.sample(20_000, seed=4)
    drawn = set(s.index.tolist())
    assert drawn <= set(task.train_index.tolist()) and not drawn & set(task.test_index.tolist())
    assert len(drawn) == len(task.train_index)  # with replacement, every training point shows up
    assert torch.equal(s.x, task.points[s.index].float())
    test = task.test_set()
    assert torch.equal(test.index, task.test_index) and torch.equal(test.label,
                                                                    task.labels[task.test_index])


def test_training_evaluates_on_the_held_out_split():
    task = build_real_data_task("wine", D=32, seed=0)
    test = task.test_set()
    model = torch.nn.Sequential(torch.nn.Linear(32, 3))
    torch.manual_seed(0)
    result = train(model, task, TrainConfig(steps=30, test_size=7), test_set=(test.x, test.y),
                   progress=False)
    with torch.no_grad():
        mse = float((model(test.x) - test.y).square().mean())
    assert result.final.mse == pytest.approx(mse, rel=1e-6)


def test_bad_arguments_name_what_was_wrong():
    with pytest.raises(ValueError, match=r"dataset='mnist' is unknown.*digits"):
        build_real_data_task("mnist")
    with pytest.raises(ValueError, match=r"D=32 is below the native width 64 of dataset='digits'"):
        build_real_data_task("digits", D=32)
    with pytest.raises(ValueError, match=r"embedding='rotate' is unknown"):
        build_real_data_task("wine", embedding="rotate")
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        build_real_data_task("wine", test_fraction=1.0)
    with pytest.raises(ValueError, match=r"leaves class 0 \(59 points\) with 0 test"):
        build_real_data_task("wine", test_fraction=0.001)
    with pytest.raises(TypeError, match=r"split_seed must be an int, got 0.5"):
        build_real_data_task("wine", split_seed=0.5)
    task = build_real_data_task("wine", D=20, seed=0)
    x = task.test_set().x
    with pytest.raises(ValueError, match=r"x\[2\] is not a point of the 'wine' data set"):
        task.region(torch.cat([x[:2], x[2:3] + 0.5]))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 20\)"):
        task.region(x[:, :13])


def test_a_missing_scikit_learn_names_the_extra(monkeypatch):
    rd._load.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    try:
        with pytest.raises(ImportError, match=r"pip install 'moelab\[data\]'"):
            build_real_data_task("digits")
    finally:
        rd._load.cache_clear()
