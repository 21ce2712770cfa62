"""Routing captured from whole Hugging Face models equals what their router modules return."""

import pytest
import torch

pytest.importorskip("transformers")

from moelab.interop import ARCHITECTURES, capture_routing, random_model  # noqa: E402


def _ids(T=48, seed=0):
    return torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(seed))


def _router(model, layer_capture):
    block = model.get_submodule(layer_capture.name)
    return block.router if model.config.model_type == "gpt_oss" else block.gate


def _by_weight(weights_TK, ids_TK):
    order = weights_TK.float().argsort(dim=1, descending=True, stable=True)
    return weights_TK.gather(1, order), ids_TK.gather(1, order)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_capture_equals_the_router_outputs(arch):
    model = random_model(arch, seed=1)
    cap = capture_routing(model, _ids())
    assert cap.model_type == model.config.model_type
    assert cap.num_tokens == 48 and len(cap.layers) == 2
    for lc in cap.layers:
        r = lc.routing
        assert lc.hidden.shape == (48, 32)
        with torch.no_grad():
            logits, weights, ids = _router(model, lc)(lc.hidden)
        weights, ids = _by_weight(weights, ids)
        torch.testing.assert_close(r.logits, logits, rtol=0, atol=0)
        assert torch.equal(r.expert_ids, ids)
        torch.testing.assert_close(r.weights, weights, rtol=0, atol=0)
        assert r.kept.all() and float(r.dropped_fraction) == 0
        assert torch.equal(r.tokens_per_expert, torch.bincount(ids.flatten(), minlength=8))
        torch.testing.assert_close(r.probs.sum(-1), torch.ones(48))
        assert bool((r.weights[:, :-1] >= r.weights[:, 1:]).all())  # best first


def test_deepseek_v3_capture_is_the_biased_group_limited_selection():
    model = random_model("deepseek-v3", seed=2)
    assert model.config.n_group == 4 and model.config.topk_group == 2
    cap = capture_routing(model, _ids(96))
    assert cap.dense_layers == ((0, "model.layers.0.mlp"),)
    assert [lc.layer for lc in cap.layers] == [1, 2]
    differs = False
    for lc in cap.layers:
        gate = model.get_submodule(lc.name).gate
        scores = lc.routing.logits.sigmoid()
        # The selection is not the plain top-k of the scores: the bias and the group limit act.
        plain = scores.topk(2, dim=-1).indices.sort(-1).values
        differs |= not torch.equal(plain, lc.routing.expert_ids.sort(-1).values)
        # The weights are the unbiased scores of the selected experts, renormalised and scaled.
        w = scores.gather(1, lc.routing.expert_ids)
        expected = w / (w.sum(-1, keepdim=True) + 1e-20) * gate.routed_scaling_factor
        torch.testing.assert_close(lc.routing.weights, expected)
        # Only experts of the kept groups are selected: at most topk_group groups per token.
        groups = lc.routing.expert_ids // 2
        assert all(len(set(g.tolist())) <= 2 for g in groups)
    assert differs


def test_capture_leaves_the_model_unchanged_and_removes_its_hooks():
    model = random_model("mixtral", seed=0)
    ids = _ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(ids).logits
    capture_routing(model, ids)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_are_removed_when_the_forward_pass_fails():
    model = random_model("qwen3-moe", seed=0)
    with pytest.raises(IndexError):
        capture_routing(model, torch.full((1, 4), 10_000))  # beyond the vocabulary
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_qwen2_moe_mlp_only_layers_are_skipped_and_listed():
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    from moelab.interop.hf_models import ARCHITECTURES

    config = Qwen2MoeConfig(**dict(ARCHITECTURES["qwen2-moe"][1], num_hidden_layers=3, mlp_only_layers=[1]))
    model = AutoModelForCausalLM.from_config(config).eval()
    cap = capture_routing(model, _ids(16))
    assert cap.dense_layers == ((1, "model.layers.1.mlp"),)
    assert [lc.layer for lc in cap.layers] == [0, 2]


def test_attention_mask_drops_padding_and_keep_hidden_false():
    model = random_model("olmoe", seed=0)
    ids = _ids(20).repeat(2, 1)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 15:] = 0
    cap = capture_routing(model, ids, attention_mask=mask, keep_hidden=False)
    assert cap.num_tokens == 35
    assert all(lc.hidden is None and lc.routing.expert_ids.shape == (35, 2) for lc in cap.layers)


def test_unsupported_architecture_is_named():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="model_type='llama' is not supported"):
        capture_routing(model, torch.zeros(1, 3, dtype=torch.long))


def test_bad_input_ids():
    model = random_model("mixtral", seed=0)
    with pytest.raises(ValueError, match="input_ids must be a \\(B, S\\) int64 tensor"):
        capture_routing(model, torch.zeros(5, dtype=torch.long))


def test_random_models_are_seeded_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (random_model("gpt-oss", seed=s) for s in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = (list(m.state_dict().values()) for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(sa, sc, strict=True))
