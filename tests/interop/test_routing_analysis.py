"""Each whole-model routing statistic on hand-made routings with known answers."""

import math

import pytest
import torch

from moelab.analysis import intrinsic_dimension
from moelab.interop import (
    analyze_routings,
    cooccurrence,
    expert_dimensions,
    layer_stats,
    most_common_paths,
    normalized_mutual_information,
    top1_paths,
)
from moelab.layers.outputs import Routing


def _routing(ids, E, probs=None):
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[:, None]
    T, K = ids.shape
    if probs is None:
        probs = torch.full((T, E), 1.0 / E)
    probs = torch.as_tensor(probs, dtype=torch.float32)
    return Routing(expert_ids=ids, weights=torch.full((T, K), 1.0 / K),
                   kept=torch.ones(T, K, dtype=torch.bool), logits=probs.log(), probs=probs,
                   tokens_per_expert=torch.bincount(ids.flatten(), minlength=E),
                   dropped_fraction=torch.zeros(()))


def test_load_and_dead_experts():
    r = _routing([[0, 1], [0, 2], [0, 1], [1, 2]], E=4)
    s = layer_stats(r, layer=7)
    assert s.layer == 7 and s.num_tokens == 4
    torch.testing.assert_close(s.load, torch.tensor([3, 3, 2, 0], dtype=torch.float64) / 8)
    assert s.dead_experts == (3,)
    expected = -sum(p * math.log(p) for p in (3 / 8, 3 / 8, 2 / 8)) / math.log(4)
    assert s.load_entropy == pytest.approx(expected)
    assert s.dimensions == ()


def test_token_entropy_is_normalised():
    uniform = _routing([0, 1], E=4)
    assert layer_stats(uniform).token_entropy == pytest.approx(1.0)
    hard = _routing([0, 1], E=4, probs=[[1, 0, 0, 0], [0, 1, 0, 0]])
    assert layer_stats(hard).token_entropy == pytest.approx(0.0)
    half = _routing([0], E=4, probs=[[0.5, 0.5, 0, 0]])
    assert layer_stats(half).token_entropy == pytest.approx(math.log(2) / math.log(4))


def test_paths_and_most_common():
    a = _routing([0, 0, 1, 1, 0], E=2)
    b = _routing([1, 1, 0, 1, 1], E=2)
    p = top1_paths([a, b])
    assert p.paths.tolist() == [[0, 1], [0, 1], [1, 0], [1, 1], [0, 1]]
    assert p.num_paths == 3 and int(p.counts.sum()) == 5
    assert most_common_paths(p, 2) == (((0, 1), 3), ((1, 0), 1))
    with pytest.raises(ValueError, match="same tokens"):
        top1_paths([a, _routing([0], E=2)])


def test_cooccurrence_counts_and_nmi():
    a = _routing([0, 0, 1, 1, 2, 2], E=3)
    same = cooccurrence(a, _routing([2, 2, 0, 0, 1, 1], E=3), layers=(3, 4))
    assert same.layers == (3, 4)
    assert same.counts.tolist() == [[0, 0, 2], [2, 0, 0], [0, 2, 0]]
    assert same.nmi == pytest.approx(1.0)  # a relabelling: the second layer is determined
    indep = cooccurrence(_routing([0, 0, 1, 1], E=2), _routing([0, 1, 0, 1], E=2))
    assert indep.counts.tolist() == [[1, 1], [1, 1]] and indep.nmi == pytest.approx(0.0)


def test_nmi_against_a_hand_computed_value():
    counts = torch.tensor([[2, 1], [0, 1]])
    p = counts.double() / 4
    pa, pb = p.sum(1), p.sum(0)
    mi = sum(float(p[i, j] * math.log(p[i, j] / (pa[i] * pb[j])))
             for i in range(2) for j in range(2) if p[i, j])
    h = lambda q: -sum(float(x * math.log(x)) for x in q if x)  # noqa: E731
    assert normalized_mutual_information(counts) == pytest.approx(mi / ((h(pa) + h(pb)) / 2))
    assert normalized_mutual_information(torch.tensor([[5]])) == 1.0
    with pytest.raises(ValueError, match="counts must be"):
        normalized_mutual_information(torch.zeros(2, 2))


def test_expert_dimensions_on_known_manifolds():
    g = torch.Generator().manual_seed(0)
    H = 16
    # Expert 0 receives points of a 2-D plane, expert 1 points of a line, expert 2 too few tokens.
    plane = torch.randn(300, 2, generator=g) @ torch.randn(2, H, generator=g)
    line = torch.rand(290, 1, generator=g) @ torch.randn(1, H, generator=g)
    few = torch.randn(10, H, generator=g)
    hidden = torch.cat([plane, line, few])
    ids = torch.cat([torch.zeros(300), torch.ones(290), torch.full((10,), 2)]).long()
    dims = expert_dimensions(_routing(ids, E=4), hidden, k=10, min_tokens=50)
    assert [d.num_tokens for d in dims] == [300, 290, 10, 0]
    # Each expert's estimate is moelab's estimator on exactly the rows it received.
    assert dims[0].dimension == intrinsic_dimension(plane, "mle", k=10)
    assert dims[1].dimension == intrinsic_dimension(line, "mle", k=10)
    assert dims[0].dimension == pytest.approx(2.0, abs=0.5)
    assert dims[1].dimension == pytest.approx(1.0, abs=0.3)
    assert dims[2].dimension is None and "10 distinct tokens, fewer than 50" in dims[2].note
    assert dims[3].dimension is None and "0 distinct" in dims[3].note
    with pytest.raises(ValueError, match="hidden must be a \\(T, H\\) tensor with T=600"):
        expert_dimensions(_routing(ids, E=4), hidden[:5])


def test_an_expert_receives_its_tokens_from_every_slot():
    hidden = torch.randn(60, 4, generator=torch.Generator().manual_seed(1))
    ids = torch.stack([torch.zeros(60), torch.ones(60)], 1).long()  # every token: experts 0 and 1
    dims = expert_dimensions(_routing(ids, E=2), hidden, k=5, min_tokens=20)
    assert [d.num_tokens for d in dims] == [60, 60]


def test_analyze_routings_puts_it_together():
    a = _routing([0, 1, 0, 1], E=2)
    b = _routing([1, 0, 1, 0], E=2)
    out = analyze_routings([a, b], layers=[1, 2])
    assert [s.layer for s in out.layers] == [1, 2]
    assert len(out.cooccurrence) == 1 and out.cooccurrence[0].layers == (1, 2)
    assert out.paths.num_paths == 2
    with pytest.raises(ValueError, match="one entry per routing"):
        analyze_routings([a, b], layers=[1])


def test_every_public_name_resolves():
    import moelab.interop as interop

    assert all(getattr(interop, name) is not None for name in interop.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        interop.nope  # noqa: B018
