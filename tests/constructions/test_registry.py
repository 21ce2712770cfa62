"""The named constructions behind ``moelab construct``: each runs with its defaults and returns a
plain moelab model and a readable summary."""

import pytest

from moelab.constructions import CONSTRUCTIONS, ConstructionSummary
from moelab.layers import DeepMoE, MoELayer

CASES = [("thm5.3", {}), ("cor4.9", {}), ("thm4.8", {}), ("thm5.2", {}), ("nonlinear-router", {}),
         ("nonlinear-router", {"target": "piecewise", "E": 2, "L": 3}),
         ("cor4.9", {"manifold": "sphere", "D": 5, "embedding": "isometry"})]


def test_the_registry_names_the_five_constructions():
    assert set(CONSTRUCTIONS) == {"thm5.3", "cor4.9", "thm4.8", "thm5.2", "nonlinear-router"}


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_construction_runs_with_simple_keywords(name, kwargs):
    model, summary = CONSTRUCTIONS[name](**kwargs)
    assert isinstance(model, (MoELayer, DeepMoE))
    assert isinstance(summary, ConstructionSummary)
    assert summary.paths_seen == summary.paths_possible
    assert summary.misrouted == 0
    assert summary.sup_error <= summary.bound * 1.05
    if summary.tau_error is not None:
        assert summary.tau_error < summary.tau_threshold
    text = str(summary)
    assert text.splitlines()[0].startswith(summary.theorem)
    for word in ("expert paths", "parameters", "bound", "sup error", "misrouted"):
        assert word in text
    assert summary.as_dict()["params_total"] == summary.params_total


def test_unknown_keywords_and_values_are_refused():
    with pytest.raises(TypeError):
        CONSTRUCTIONS["thm5.3"](width=3)
    with pytest.raises(ValueError, match="target"):
        CONSTRUCTIONS["nonlinear-router"](target="torus")
