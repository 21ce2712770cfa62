"""Fuzzing the --set parser and the config loader: any input gives a config or a clear error."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from moelab.experiments.config import RunConfig, apply_overrides, parse_override

KEYS = ["train.steps", "train.lr", "task.D", "task.manifold", "model.moe.router.top_k",
        "model.moe.router.capacity_factor", "model.layers", "train.aux_weights", "seed", "bogus.key",
        "model.moe", "train"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parse_override_never_crashes_unexpectedly(text):
    try:
        key, _ = parse_override(text)
    except ValueError as exc:
        assert "override" in str(exc)
    else:
        assert key and "=" in text


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(KEYS), json_values)
def test_apply_overrides_gives_a_valid_config_or_a_named_error(key, value):
    base = RunConfig(experiment="fuzz")
    try:
        run = apply_overrides(base, {key: value})
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert key.split(".")[-1] in msg or "override" in msg or "must" in msg, msg
    else:
        again = RunConfig.from_dict(json.loads(json.dumps(run.to_dict())))
        assert again.run_id() == run.run_id()


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["experiment", "task", "model", "train", "seed", "x"]),
                       json_values, max_size=4))
def test_from_dict_rejects_garbage_with_named_errors(data):
    try:
        RunConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        assert str(exc)
