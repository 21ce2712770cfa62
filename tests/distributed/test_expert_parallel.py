"""Expert parallelism on 2 gloo processes equals the single-process layer and model.

All checks run in one pair of spawned processes (starting them is most of the cost); see
``_ep_checks.py`` for what each rank computes and how the reference is built.
"""

import pytest
import torch
from _ep_checks import DEEP_CONFIGS, DEEP_WIDTHS, LAYER_CASES, run_all
from _spawn import run_ranks

from moelab.distributed import shard_moe_layer
from moelab.layers import DeepMoE, MoEConfig, MoELayer

TOL = 1e-5


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(run_all, 2, timeout=120)


def _assert_small(errors: dict[str, float], where: str) -> None:
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"{where}: errors above {TOL}: {bad}"


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_matches_single_process(ranks, case):
    for rank, result in enumerate(ranks):
        r = result["layers"][case]
        _assert_small(r["errors"], f"rank {rank}")
        assert r["routing_exact"], f"rank {rank}: expert ids, kept mask or loads differ"
        assert r["aux_keys"] == r["ref_aux_keys"]
        assert r["is_moe_layer"]
        per_rank = LAYER_CASES[case].config.num_experts // 2
        assert r["local_experts"] == [rank * per_rank, (rank + 1) * per_rank]
        # every parameter's gradient was compared: router, experts (and shared ones where present)
        names = " ".join(r["errors"])
        assert "grad router." in names and "grad experts." in names


def test_the_edge_cases_really_happen(ranks):
    layers = ranks[0]["layers"]
    assert layers["k1_empty_expert"]["global_load"][1] == 0
    assert layers["k2_empty_expert_capacity"]["global_load"][2] == 0
    for case in ("k1_empty_rank", "k2_empty_rank"):  # rank 1 owns experts 2 and 3
        load = layers[case]["global_load"]
        assert load[2] == load[3] == 0 and sum(load) > 0
    for case in ("k1_capacity", "k2_capacity", "k2_empty_expert_capacity"):
        assert all(result["layers"][case]["dropped"] > 0 for result in ranks)
    # capacity is per rank: the two ranks drop different fractions of their own tokens
    assert ranks[0]["layers"]["k1_capacity"]["dropped"] != ranks[1]["layers"]["k1_capacity"]["dropped"]
    assert "load_balance" in layers["k1"]["aux_keys"]
    assert "reconstruction" in layers["lowdim_decoder"]["aux_keys"]


def test_deep_moe_sharded_by_shard_model_matches(ranks):
    for rank, result in enumerate(ranks):
        r = result["deep"]
        assert r["kinds"] == ["ExpertParallelDispatcher", "ExpertParallelDispatcher"]
        _assert_small(r["errors"], f"rank {rank}")
        assert r["routing_exact"]
        assert r["aux_keys"] == r["ref_aux_keys"] == ["load_balance", "z_loss"]
        assert any(k.startswith("grad layers.0.shared.") for k in r["errors"])


def test_full_state_dict_round_trip(ranks):
    for result in ranks:
        s = result["state"]
        assert s["same_keys"] and s["same_shapes"] and s["changed"]
        assert s["same_on_all_ranks"]
        assert s["reload_equal"] and s["round_trip_equal"]
        assert "layers.1.experts.weight1" in s["bad_shape_error"]
    solo = ranks[0]["state"]
    assert solo["one_rank_experts"] == [4, 4]
    assert solo["one_rank_err"] <= TOL and solo["one_rank_state_equal"]


def test_two_rank_checkpoint_loads_into_a_single_process_model(ranks):
    s = ranks[0]["state"]
    state = {k: torch.from_numpy(v) for k, v in s["state"].items()}
    x, y_sharded = torch.from_numpy(s["x"]), torch.from_numpy(s["y"])
    for mode in ("grouped", "auto"):
        model = DeepMoE(DEEP_WIDTHS, [c.replace(dispatch=mode) for c in DEEP_CONFIGS], residual=True)
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            y = model(x)
        if mode == "grouped":  # the same arithmetic as the sharded path: the same bits
            assert torch.equal(y, y_sharded)
        torch.testing.assert_close(y, y_sharded, atol=TOL, rtol=0)


def test_clear_errors(ranks):
    for result in ranks:
        msg = result["errors"]["indivisible"]
        assert "num_experts=3" in msg and "world size 2" in msg
        assert "not yet sharded" in result["errors"]["twice"]


def test_sharding_without_a_process_group_says_how_to_start_one():
    with pytest.raises(RuntimeError, match="init_process_group"):
        shard_moe_layer(MoELayer(4, 2, MoEConfig(num_experts=2)))
