"""The one typed-JSON parser behind run configs and checkpoints."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pytest

from moelab.typed_json import build, describe, from_json, to_json


@dataclass(frozen=True, kw_only=True)
class Inner:
    kind: Literal["a", "b"] = "a"
    scale: float | None = None

    def __post_init__(self):
        if self.scale is not None and self.scale < 0:
            raise ValueError(f"scale must be >= 0, got {self.scale}")


@dataclass(frozen=True, kw_only=True)
class Outer:
    n: int = 1
    inner: Inner = field(default_factory=Inner)
    pair: tuple[int, str] = (0, "x")
    sizes: tuple[int, ...] = ()
    layers: Sequence[Inner] = ()
    weights: dict[str, float] = field(default_factory=dict)


def test_round_trip_of_nested_dataclasses_literals_tuples_and_dicts():
    value = Outer(n=3, inner=Inner(kind="b", scale=2.0), pair=(1, "y"), sizes=(4, 5),
                  layers=[Inner(), Inner(kind="b")], weights={"w": 0.5})
    data = to_json(value)
    assert data["inner"] == {"kind": "b", "scale": 2.0} and data["pair"] == [1, "y"]
    assert build(Outer, data) == value
    assert build(Outer, {}) == Outer()  # missing fields take their defaults
    assert from_json(3, float) == 3.0 and isinstance(from_json(3, float), float)


@pytest.mark.parametrize(
    ("data", "error", "pattern"),
    [
        ({"n": "3"}, TypeError, r"n must be int, got '3' \(str\)"),
        ({"n": True}, TypeError, r"n must be int"),
        ({"inner": {"kind": "c"}}, ValueError, r"inner.kind='c' is unknown; expected one of \['a', 'b'\]"),
        ({"inner": {"scale": "big"}}, TypeError, r"inner.scale must be float or None, got 'big'"),
        ({"inner": {"sclae": 1}}, ValueError,
         r"unknown config key\(s\) \['inner.sclae'\]: unknown Inner field\(s\) \['sclae'\] in inner"),
        ({"pair": [1]}, ValueError, r"pair must have 2 items, got 1"),
        ({"sizes": [1, "2"]}, TypeError, r"sizes\[1\] must be int"),
        ({"layers": [{}, {"kind": 1}]}, ValueError, r"layers\[1\].kind=1 is unknown"),
        ({"weights": {"w": "x"}}, TypeError, r"weights\['w'\] must be float"),
        ({"inner": 3}, TypeError, r"inner must be a mapping of Inner fields, got int"),
    ],
)
def test_errors_name_the_dotted_key(data, error, pattern):
    with pytest.raises(error, match=pattern):
        build(Outer, data)


def test_a_dataclass_that_rejects_its_values_keeps_its_message_and_gets_the_key():
    with pytest.raises(ValueError, match=r"^scale must be >= 0, got -1.0$") as info:
        build(Outer, {"inner": {"scale": -1}})
    assert info.value.config_key == "inner" and info.value.config_class == "Inner"


def test_describe():
    assert describe(float | None) == "float or None"
    assert describe(Literal["a", "b"]) == "one of 'a', 'b'"
