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


def test_cor49_fits_the_linear_routers_once_per_task(monkeypatch):
    """The linear routers' misroute fraction does not depend on m: a sweep over m fits them once,
    and reports what build_manifold_moe(linear_baseline=True) reports."""
    import moelab.constructions.registry as registry
    from moelab.constructions import build_manifold_moe
    from moelab.constructions.baseline import MISROUTE_ENTRY

    fits = []
    real = registry.linear_router_misroute
    monkeypatch.setattr(registry, "linear_router_misroute",
                        lambda task, **kw: fits.append(task) or real(task, **kw))
    registry._linear_misroute.cache_clear()
    try:
        _, wide = CONSTRUCTIONS["cor4.9"](D=5, m=8)
        _, narrow = CONSTRUCTIONS["cor4.9"](D=5, m=4)
    finally:
        registry._linear_misroute.cache_clear()
    assert len(fits) == 1
    _, direct = build_manifold_moe(registry._manifold_task("circle", 5, None, "pad", 0), 4,
                                   linear_baseline=True)
    assert narrow.extra == direct.extra
    assert wide.extra[MISROUTE_ENTRY] == narrow.extra[MISROUTE_ENTRY]
