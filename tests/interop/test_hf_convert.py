"""Converted Hugging Face MoE blocks compute what the blocks compute, and convert back bit for bit.

Each family's block is built from its transformers 5.23 config class (nothing is downloaded) with
random weights; the moelab layer from ``from_hf`` must give the same outputs, the same selected
experts and the same gradients (input and every parameter, mapped back to the block's names)
within 1e-5 in float32, in eval and in training mode.
"""

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from moelab.checkpoints import load_checkpoint, read_config, save_checkpoint  # noqa: E402
from moelab.interop.hf import (  # noqa: E402
    LAYOUTS,
    from_hf,
    moe_config,
    state_to_hf,
    to_hf,
)
from moelab.interop.hf_checkpoint import from_hf_checkpoint  # noqa: E402
from moelab.interop.hf_models import ARCHITECTURES, random_model  # noqa: E402
from moelab.layers import MoEConfig, MoELayer  # noqa: E402

ATOL = 1e-5

#: (architecture of hf_models.ARCHITECTURES, config overrides) per case.
CASES = {
    "mixtral": ("mixtral", {}),
    "qwen2-moe": ("qwen2-moe", {}),
    "qwen2-moe-renorm": ("qwen2-moe", {"norm_topk_prob": True}),
    "qwen3-moe": ("qwen3-moe", {}),
    "qwen3-moe-no-renorm": ("qwen3-moe", {"norm_topk_prob": False}),
    "olmoe": ("olmoe", {}),
    "olmoe-renorm": ("olmoe", {"norm_topk_prob": True}),
    # 16 experts in 4 groups of 4 (the group score is a true top-2), 2 groups kept, K = 3, scaling 2.5
    "deepseek-v3": ("deepseek-v3", {"n_routed_experts": 16, "num_experts_per_tok": 3,
                                    "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5}),
    "deepseek-v3-raw": ("deepseek-v3", {"n_group": 1, "topk_group": 1, "norm_topk_prob": False,
                                        "n_shared_experts": 2}),
    "gpt-oss": ("gpt-oss", {"swiglu_limit": 1.5}),  # a low limit, so the clamps are exercised
}


def hf_config(arch, **overrides):
    name, kwargs = ARCHITECTURES[arch]
    config = getattr(transformers, name)(**{**kwargs, **overrides})
    config._experts_implementation = "eager"
    return config


def hf_block(case, *, seed=0, dtype=torch.float32):
    """The MoE block of ``case`` with random weights (and a random selection bias)."""
    arch, overrides = CASES[case]
    config = hf_config(arch, **overrides)
    family = LAYOUTS[config.model_type]
    module = __import__(f"transformers.models.{family.module}.modeling_{family.module}",
                        fromlist=[family.block])
    gen = torch.Generator().manual_seed(seed)
    block = getattr(module, family.block)(config)
    with torch.no_grad():
        for name, p in block.named_parameters():
            # GPT-OSS keeps its expert weights as (E, in, out), the others as (..., out, in)
            transposed = family.interleaved and name.endswith(("gate_up_proj", "down_proj"))
            fan_in = p.shape[-2] if transposed else p.shape[-1]
            scale = 0.3 if name.endswith("bias") else fan_in ** -0.5
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        for name, b in block.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=gen))
    return block.to(dtype)


def hf_forward(block, x):
    y = block(x)
    return y[0] if isinstance(y, tuple) else y  # GPT-OSS also returns its router scores


def hf_router(block):
    return block.router if type(block).__name__ == "GptOssMLP" else block.gate


def layout_of_block(block):
    return next(f for f in LAYOUTS.values() if f.block == type(block).__name__)


def compare(block, layer, x, *, train, dispatch="auto"):
    """Check that ``layer`` and ``block`` agree within ATOL in the output, the input gradient and
    every parameter gradient (the layer's mapped to the block's names), and select the same
    experts."""
    block.train(train)
    layer.train(train)
    block.zero_grad(set_to_none=True)
    x_hf, x_ml = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_hf = hf_forward(block, x_hf)
    out = layer.run(x_ml, dispatch_mode=dispatch)
    torch.testing.assert_close(out.y, y_hf, rtol=0, atol=ATOL)
    with torch.no_grad():
        _, _, ids_hf = hf_router(block)(x.reshape(-1, x.shape[-1]))
    assert torch.equal(out.routing.expert_ids.sort(-1).values, ids_hf.sort(-1).values)
    g = torch.randn(y_hf.shape, generator=torch.Generator().manual_seed(1))
    (y_hf * g).sum().backward()
    (out.y * g).sum().backward()
    torch.testing.assert_close(x_ml.grad, x_hf.grad, rtol=0, atol=ATOL)
    grads = {n: p.grad for n, p in layer.named_parameters()}
    grads.update({n: b for n, b in layer.named_buffers()})
    mapped = state_to_hf(layout_of_block(block), grads)
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(mapped[name], p.grad, rtol=0, atol=ATOL, msg=name)


def random_input(block, *, seed=2, dtype=torch.float32):
    D = block.experts.config.hidden_size
    return torch.randn(2, 24, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_layer_matches_the_block(case, train):
    block = hf_block(case)
    layer = from_hf(block)
    assert isinstance(layer, MoELayer) and layer.training == block.training
    compare(block, layer, random_input(block), train=train)


@pytest.mark.parametrize("case", ["mixtral", "deepseek-v3", "gpt-oss", "qwen2-moe"])
def test_both_dispatch_paths_match_the_block(case):
    block = hf_block(case, seed=3)
    for dispatch in ("dense", "grouped"):
        layer = from_hf(block)
        compare(block, layer, random_input(block, seed=4), train=True, dispatch=dispatch)


def test_deepseek_group_limited_routing_matters():
    """The DeepSeek-V3 case is not passed by ignoring the groups: without them, some token selects
    experts outside its two best groups."""
    block = hf_block("deepseek-v3")
    layer = from_hf(block)
    assert (layer.config.router.groups, layer.config.router.top_groups) == (4, 2)
    assert layer.config.router.scaling == 2.5
    ungrouped = MoELayer(32, 32, layer.config.replace(
        router=dataclasses.replace(layer.config.router, groups=1, top_groups=None)))
    ungrouped.load_state_dict(layer.state_dict())
    x = random_input(block)
    a = layer.run(x).routing.expert_ids.sort(-1).values
    b = ungrouped.run(x).routing.expert_ids.sort(-1).values
    assert not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_bit_exact(case, dtype):
    block = hf_block(case, dtype=dtype)
    back = to_hf(from_hf(block))
    assert type(back) is type(block)
    before, after = block.state_dict(), back.state_dict()
    assert list(after) == list(before)
    for name, t in before.items():
        assert after[name].dtype == t.dtype and torch.equal(after[name], t), name


def test_gpt_oss_gate_and_up_are_deinterleaved():
    block = hf_block("gpt-oss")
    layer = from_hf(block)
    gate_up = block.experts.gate_up_proj  # (E, D, 2H): gate in the even columns
    assert torch.equal(layer.experts.weight_gate, gate_up[..., 0::2])
    assert torch.equal(layer.experts.weight_value, gate_up[..., 1::2])
    assert layer.config.experts.gated_form == "clamped"
    assert layer.config.experts.clamp_limit == 1.5


def test_to_hf_with_an_explicit_config_and_a_fresh_layer():
    config = hf_config("qwen3-moe")
    torch.manual_seed(0)
    layer = MoELayer(32, 32, moe_config(config))
    block = to_hf(layer, config)
    compare(block, layer, random_input(block), train=False)


def test_to_hf_rejects_a_layer_that_does_not_match_the_config():
    config = hf_config("mixtral")
    cfg = moe_config(config)
    layer = MoELayer(32, 32, cfg.replace(router=dataclasses.replace(cfg.router, top_k=3)))
    with pytest.raises(ValueError, match=r"router\.top_k=3, expected 2"):
        to_hf(layer, config)
    with pytest.raises(ValueError, match="layer.source"):
        to_hf(MoELayer(32, 32, cfg))


def test_from_hf_rejects_a_config_the_block_was_not_built_with():
    block = hf_block("deepseek-v3")
    config = hf_config("deepseek-v3", **{**CASES["deepseek-v3"][1], "topk_group": 3})
    with pytest.raises(ValueError, match=r"config.topk_group=3, but the DeepseekV3MoE was built "
                                         r"with 2"):
        from_hf(block, config)
    with pytest.raises(ValueError, match="does not match the block"):
        from_hf(block, hf_config("mixtral"))


def test_unknown_block_class_is_named():
    with pytest.raises(TypeError, match="Linear"):
        from_hf(torch.nn.Linear(4, 4))


def test_mixtral_jitter_is_refused_by_name():
    config = hf_config("mixtral", router_jitter_noise=0.1)
    with pytest.raises(ValueError, match="router_jitter_noise=0.1"):
        moe_config(config)
    assert moe_config(config, drop_jitter=True).router.noise == "none"


def test_an_activation_without_an_exact_match_is_named():
    with pytest.raises(ValueError, match="hidden_act='gelu_pytorch_tanh'"):
        moe_config(hf_config("olmoe", hidden_act="gelu_pytorch_tanh"))


# -- checkpoint directories ---------------------------------------------------------------------------

def _moe_block(model, i):
    return model.model.layers[i].mlp


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_from_hf_checkpoint_reads_the_per_expert_files(arch, tmp_path):
    model = random_model(arch, seed=1)
    model.save_pretrained(tmp_path)
    i = model.config.num_hidden_layers - 1
    layer = from_hf_checkpoint(tmp_path, i)
    reference = from_hf(_moe_block(model, i))
    assert layer.config == reference.config
    for name, t in reference.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), name
    assert layer.source["checkpoint"] == {"directory": str(tmp_path), "layer_index": i}
    assert layer.source["family"] == model.config.model_type


def test_from_hf_checkpoint_keeps_or_casts_the_dtype(tmp_path):
    model = random_model("mixtral").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    layer = from_hf_checkpoint(tmp_path, 0)
    assert layer.experts.weight_gate.dtype == torch.bfloat16 and not layer.training
    back = to_hf(layer)
    for name, t in _moe_block(model, 0).state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    as_fp32 = from_hf_checkpoint(tmp_path, 0, dtype=torch.float32)
    assert torch.equal(as_fp32.experts.weight_gate, layer.experts.weight_gate.float())


def test_checkpoint_keys_are_the_hub_layout(tmp_path):
    """save_pretrained writes one tensor per expert (the hub layout) for Mixtral."""
    from safetensors import safe_open

    random_model("mixtral").save_pretrained(tmp_path)
    with safe_open(next(tmp_path.glob("*.safetensors")), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in keys
    assert not any(k.endswith("gate_up_proj") for k in keys)


def test_from_hf_checkpoint_sharded_and_fused_names(tmp_path):
    """A sharded directory (index file), and a file holding the fused in-memory names."""
    from safetensors.torch import save_file

    model = random_model("qwen3-moe", seed=2)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    reference = from_hf(_moe_block(model, 1))
    layer = from_hf_checkpoint(tmp_path / "sharded", 1)
    for name, t in reference.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), name

    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    save_file({f"model.layers.1.mlp.{k}": v.contiguous()
               for k, v in _moe_block(model, 1).state_dict().items()}, fused / "model.safetensors")
    layer = from_hf_checkpoint(fused, 1)
    for name, t in reference.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), name


def test_from_hf_checkpoint_errors(tmp_path):
    model = random_model("deepseek-v3")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="layer_index=0 is a dense layer"):
        from_hf_checkpoint(tmp_path, 0)
    with pytest.raises(ValueError, match=r"layer_index must be an int in \[0, 3\)"):
        from_hf_checkpoint(tmp_path, 3)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["quantization_config"] = {"quant_method": "fp8"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="quant_method='fp8'"):
        from_hf_checkpoint(tmp_path, 1)
    with pytest.raises(ValueError, match="no config.json"):
        from_hf_checkpoint(tmp_path / "absent", 1)


# -- provenance -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["deepseek-v3", "gpt-oss", "qwen2-moe"])
def test_checkpoint_keeps_the_source_and_to_hf_needs_no_config(case, tmp_path):
    block = hf_block(case)
    save_checkpoint(from_hf(block), tmp_path)
    assert read_config(tmp_path).source["block_class"] == type(block).__name__
    loaded = load_checkpoint(tmp_path)
    back = to_hf(loaded)
    assert type(back) is type(block)
    for name, t in block.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    recorded = read_config(tmp_path).source["config"]
    assert recorded == json.loads(block.experts.config.to_json_string(use_diff=False))
    assert json.loads(back.experts.config.to_json_string(use_diff=False)) == recorded


def test_layers_without_a_source_save_as_before(tmp_path):
    save_checkpoint(MoELayer(4, 3, MoEConfig(num_experts=2)), tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert "source" not in data
    assert not hasattr(load_checkpoint(tmp_path), "source")
