"""Expert paths, matching of experts to ground-truth labels, load and entropy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moelab.analysis import (
    expert_load,
    expert_paths,
    load_entropy,
    match_experts,
    routing_accuracy,
    routing_confusion,
    token_entropy,
)
from moelab.layers import DeepMoE, DenseMLP, MoEConfig, RouterConfig


@pytest.mark.parametrize("L, E", [(1, 3), (2, 2), (3, 3)])
def test_expert_paths_of_a_deep_moe(L, E):
    torch.manual_seed(L * 10 + E)
    model = DeepMoE([3] * (L + 1), MoEConfig(num_experts=E, router=RouterConfig(weighting="paper"))).eval()
    x = torch.randn(600, 3) * 3
    result = expert_paths(model, x)
    routings = model.run(x).routings
    assert torch.equal(result.paths, torch.stack([r.expert_ids[:, 0] for r in routings], 1))
    assert result.num_paths <= E**L
    assert int(result.counts.sum()) == 600
    assert result.num_paths == len({tuple(p) for p in result.paths.tolist()})
    for path, count in zip(result.distinct.tolist(), result.counts.tolist(), strict=True):
        assert int((result.paths == torch.tensor(path)).all(1).sum()) == count


@pytest.mark.parametrize("widths, E", [([3, 4, 4, 2], (2, 5, 3)), ([3, 2], (7,))])
def test_distinct_paths_are_the_sorted_unique_rows(widths, E):
    """Mixed widths per layer: the distinct paths and counts are torch.unique(paths, dim=0)'s."""
    torch.manual_seed(0)
    configs = [MoEConfig(num_experts=e, router=RouterConfig(weighting="paper")) for e in E]
    model = DeepMoE(widths, configs).eval()
    result = expert_paths(model, torch.randn(2000, 3) * 3)
    distinct, counts = torch.unique(result.paths, dim=0, return_counts=True)
    assert torch.equal(result.distinct, distinct) and torch.equal(result.counts, counts)


def test_expert_paths_through_hooks_and_of_dense_models():
    torch.manual_seed(0)
    deep = DeepMoE([2, 4, 2], MoEConfig(num_experts=3)).eval()
    x = torch.randn(50, 2)
    seq = nn.Sequential(deep.layers[0], nn.ReLU(), deep.layers[1])
    assert torch.equal(expert_paths(seq, x).paths, expert_paths(deep, x).paths)
    dense = expert_paths(DenseMLP(2, 1, hidden=4), x)
    assert dense.paths.shape == (50, 0) and dense.num_paths == 1 and dense.counts.tolist() == [50]
    with pytest.raises(ValueError, match="x must be a"):
        expert_paths(deep, torch.randn(2, 5, 2))


def test_routing_accuracy_is_one_for_a_relabelled_perfect_routing():
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (300,), generator=g)
    relabel = torch.tensor([2, 0, 3, 1])
    assert routing_accuracy(relabel[truth], truth) == 1.0
    assert routing_accuracy(relabel[truth][torch.randperm(300, generator=g)], truth) < 0.5


def test_matching_on_a_hand_example():
    # Expert 0 holds label 1 twice; expert 1 label 0 twice; expert 2 one more label 0.
    result = match_experts([0, 0, 1, 1, 2], [1, 1, 0, 0, 0])
    assert result.accuracy == pytest.approx(0.8)
    assert result.confusion.tolist() == [[0, 2], [2, 0], [1, 0]]
    assert result.pairs == ((0, 1), (1, 0))
    # Fewer experts than labels: one expert over three labels can match only one of them.
    assert routing_accuracy(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 1])) == pytest.approx(0.5)
    # A label split over two experts scores below 1 (one-to-one matching).
    assert routing_accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_confusion_and_labels_are_validated():
    assert routing_confusion([1], [0], num_experts=3, num_labels=2).tolist() == [[0, 0], [1, 0], [0, 0]]
    with pytest.raises(ValueError, match="same length"):
        routing_accuracy(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer ids"):
        routing_accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_experts=2"):
        routing_confusion([0, 2], [0, 0], num_experts=2)
    with pytest.raises(ValueError, match=">= 0"):
        routing_accuracy([0, -1], [0, 0])


def test_load_and_entropies():
    load = expert_load(torch.tensor([0, 0, 1, 3]), num_experts=4)
    assert load.tolist() == [0.5, 0.25, 0.0, 0.25]
    assert load_entropy(torch.full((4,), 0.25)) == pytest.approx(math.log(4))
    assert load_entropy(torch.full((4,), 0.25), normalized=True) == pytest.approx(1.0)
    assert load_entropy(torch.tensor([1.0, 0.0, 0.0])) == 0.0
    assert load_entropy(load) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    with pytest.raises(ValueError, match="probability vector"):
        load_entropy(torch.tensor([0.5, 0.6]))

    torch.manual_seed(0)
    model = DeepMoE([2, 2], MoEConfig(num_experts=4, router=RouterConfig(top_k=2))).eval()
    routing = model.run(torch.randn(100, 2)).routings[0]
    from_routing = expert_load(routing)
    assert from_routing.sum().item() == pytest.approx(1.0)
    assert torch.equal(from_routing, routing.tokens_per_expert.double() / 200)
    with torch.no_grad():
        model.layers[0].router.scorer.weight.zero_()
        model.layers[0].router.scorer.bias.zero_()
    flat = model.run(torch.randn(10, 2)).routings[0]
    assert token_entropy(flat) == pytest.approx(math.log(4))
    assert 0 < token_entropy(routing) < math.log(4)
