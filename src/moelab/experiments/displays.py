"""What an experiment shows in its report beside its verdicts, declared with it in the registry:
tables (:class:`Columns`, :class:`VersusPaper`, :class:`Related`) and figures (:class:`Curves`,
:class:`Pictures`). A declaration says *what* to show, in the experiment's terms (which metric
against which key, beside which of the paper's numbers); :mod:`moelab.reporting.render` turns it
and the experiment's grid into tables and figures. Nothing here formats or draws, so declaring
an experiment loads neither the report writer nor matplotlib.

Keys, ``where`` and ``per`` are as for the checks (:mod:`moelab.experiments.checks`): ``per``
gives one table or figure per combination of its keys' labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from moelab._validation import one_of
from moelab.experiments.grid import Key, Select

# -- tables --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """A table with one row per selected cell: its labels, its number of runs and each metric
    (median [min, max] over seeds; ``"a / b"``: the two medians)."""

    caption: str = "Test error per grid point (median [min, max] over seeds)"
    metrics: tuple[str, ...] = ("test_mse", "test_sup")
    where: Select | None = None

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str) or not self.metrics:
            raise ValueError(f"Columns {self.caption!r}: metrics must be a non-empty tuple of "
                             f"metric names, got {self.metrics!r}")


@dataclass(frozen=True)
class VersusPaper:
    """Ours beside the paper, one table per combination of ``per``: a row per ``x``; for each
    series ours (median [min, max]), the paper's value and ours / paper; a last row with the
    max/min over ``x`` (``summary="flat"``) or the log-log slope in ``x`` (``"slope"``).
    ``paper`` maps a series label (``""``: every series) to ``{x: value}``."""

    caption: str
    x: Key
    paper: Mapping[str, Mapping[float, float]]
    series: Key | None = None
    per: tuple[Key, ...] = ()
    summary: Literal["flat", "slope"] = "flat"
    metric: str = "test_mse"

    def __post_init__(self) -> None:
        one_of("summary", self.summary, ("flat", "slope"))


@dataclass(frozen=True)
class Related:
    """A table of another experiment's runs in the same database (e.g. the hand-built networks of
    ``constructions`` beside the trained ones); ``missing`` says how to produce them."""

    experiment: str
    columns: Columns
    missing: str

    def __post_init__(self) -> None:
        if not isinstance(self.columns, Columns):
            raise TypeError(f"Related {self.experiment!r}: columns must be a Columns, got "
                            f"{type(self.columns).__name__}")


# -- figures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curves:
    """A figure ``<experiment>-<name>.png`` of ``metric`` (median over seeds, [min, max] bars)
    against ``x``: one curve per ``series`` label, one panel per ``panels`` label, one figure per
    ``per`` label; ``reference`` curves (label -> {x: value}, e.g. the paper's) are drawn dashed,
    in the colour of the series whose label begins theirs (else black). On log-log axes each
    curve's label gives its fitted log-log slope."""

    name: str
    caption: str
    x: Key
    series: Key | None = None
    panels: Key | None = None
    per: Key | None = None
    where: Select | None = None
    metric: str = "test_mse"
    xlabel: str = ""
    ylabel: str = "test MSE"
    logx: bool = True
    logy: bool = True
    xbase: int = 2
    reference: Mapping[str, Mapping[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Pictures:
    """A figure ``<experiment>-<name>.png`` of routing pictures (``kind`` "circle" or "grid") of
    the seed-0 run of one cell per ``panels`` label (the one at the largest ``last``, if given)."""

    name: str
    caption: str
    kind: Literal["circle", "grid"]
    panels: Key
    where: Select | None = None
    last: Key | None = None

    def __post_init__(self) -> None:
        one_of("kind", self.kind, ("circle", "grid"))
