"""Display declarations refuse a setting they cannot show when they are declared, not when the
report is written."""

from __future__ import annotations

import pytest

from moelab.experiments.displays import Columns, Pictures, Related, VersusPaper


def test_versus_paper_names_its_summary():
    assert VersusPaper("c", x="m", paper={}, summary="slope").summary == "slope"
    with pytest.raises(ValueError, match=r"summary='slopes' is unknown.*'flat', 'slope'"):
        VersusPaper("c", x="m", paper={}, summary="slopes")


def test_pictures_names_its_kind():
    with pytest.raises(ValueError, match=r"kind='ring' is unknown"):
        Pictures("routing", "c", kind="ring", panels="D")


def test_columns_wants_a_tuple_of_metrics():
    with pytest.raises(ValueError, match=r"metrics must be a non-empty tuple.*'test_mse'"):
        Columns(metrics="test_mse")
    with pytest.raises(ValueError, match=r"metrics must be a non-empty tuple"):
        Columns(metrics=())


def test_related_shows_columns_of_the_other_experiment():
    with pytest.raises(TypeError, match=r"Related 'constructions': columns must be a Columns, got dict"):
        Related("constructions", columns={"metrics": ("test_sup",)}, missing="run it")
