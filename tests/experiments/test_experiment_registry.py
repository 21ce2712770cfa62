"""The registry writes each experiment's name once: ``@register(name)`` stamps it on the
experiment and on every run of its grid."""

from __future__ import annotations

import inspect
import re

import pytest

from moelab.experiments import registry
from moelab.experiments.config import RunConfig
from moelab.experiments.registry import EXPERIMENTS, get_experiment, register, unnamed
from moelab.experiments.spec import Experiment


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_the_registered_name_reaches_the_experiment_and_every_run(name):
    exp = get_experiment(name)
    assert exp.name == name and exp.base.experiment == name
    assert {run.experiment for run in exp.runs(seeds=1)} == {name}


def test_each_name_is_written_once_in_the_registry():
    source = inspect.getsource(registry)
    for name in EXPERIMENTS:
        # A section may show another experiment's runs beside its own: Related("name", ...).
        written = re.findall(rf'(?<!Related\()"{re.escape(name)}"', source)
        assert len(written) == 1, name


def test_an_experiment_stamps_its_name_on_its_base():
    exp = Experiment(name="e", title="t", claim="c", base=RunConfig(experiment="other"))
    assert exp.base.experiment == "e"
    assert Experiment(name="e", title="t", claim="c", base=unnamed()).base.experiment == "e"


def test_register_refuses_a_second_experiment_of_one_name(clean_registry):
    with pytest.raises(ValueError, match="'table3' is already registered"):
        register("table3")


def test_register_refuses_a_function_that_names_itself_otherwise(clean_registry):
    @register("mine")
    def mine() -> Experiment:
        return Experiment(name="theirs", title="t", claim="c", base=unnamed())

    with pytest.raises(ValueError, match="registered as 'mine' calls itself 'theirs'"):
        mine()


def test_an_unnamed_experiment_has_no_runs():
    exp = Experiment(title="t", claim="c", base=unnamed())
    with pytest.raises(ValueError, match="experiment 't' has no name; register it"):
        exp.runs()
