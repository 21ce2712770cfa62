"""Hugging Face MoE models to analyse: a local directory of downloaded weights, or a small randomly
initialised model of a named architecture, and the token ids of a text for either.

Nothing is downloaded: directories are read with ``local_files_only=True``. A directory's own
tokenizer is used when it has one; otherwise (and always for random models) the byte-level
fallback :func:`byte_token_ids` gives every UTF-8 byte of the text one token, id = byte mod vocab
size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from moelab.interop.hf_capture import FAMILIES, require_transformers

#: Files any of which means a directory ships its tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")

#: Config keys under which the families above (and most MoE families) store their expert count.
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")

_COMMON = dict(vocab_size=256, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=None,
               eos_token_id=None, pad_token_id=None)

#: The small random model of each named architecture: a couple of layers, hidden size 32, 8 experts
#: with 2 per token (DeepSeek-V3: its first layer dense, experts in 4 groups of which 2 are kept).
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "mixtral": ("MixtralConfig", dict(_COMMON, num_hidden_layers=2, intermediate_size=64,
                                      num_local_experts=8, num_experts_per_tok=2)),
    "qwen2-moe": ("Qwen2MoeConfig", dict(_COMMON, num_hidden_layers=2, intermediate_size=64,
                                         moe_intermediate_size=32, shared_expert_intermediate_size=64,
                                         num_experts=8, num_experts_per_tok=2)),
    "qwen3-moe": ("Qwen3MoeConfig", dict(_COMMON, num_hidden_layers=2, intermediate_size=64, head_dim=8,
                                         moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                         norm_topk_prob=True)),
    "olmoe": ("OlmoeConfig", dict(_COMMON, num_hidden_layers=2, intermediate_size=32, num_experts=8,
                                  num_experts_per_tok=2)),
    "deepseek-v3": ("DeepseekV3Config", dict(_COMMON, num_key_value_heads=4, num_hidden_layers=3,
                                             intermediate_size=64, moe_intermediate_size=32,
                                             n_routed_experts=8, num_experts_per_tok=2,
                                             n_shared_experts=1, n_group=4,
                                             topk_group=2, first_k_dense_replace=1, kv_lora_rank=16,
                                             q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                             v_head_dim=8)),
    "gpt-oss": ("GptOssConfig", dict(_COMMON, num_hidden_layers=2, intermediate_size=32, head_dim=8,
                                     num_local_experts=8, num_experts_per_tok=2, sliding_window=16)),
}


def random_model(arch: str, *, seed: int = 0) -> nn.Module:
    """A small randomly initialised causal LM of architecture ``arch`` (see :data:`ARCHITECTURES`),
    in eval mode, float32. The same ``seed`` gives the same weights; the global RNG is left as it
    was. DeepSeek-V3's ``e_score_correction_bias`` (zeros at initialisation) is drawn too, so that
    the bias plays its part in the selection.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is unknown; expected one of {sorted(ARCHITECTURES)}")
    transformers = require_transformers()
    config_name, kwargs = ARCHITECTURES[arch]
    config = getattr(transformers, config_name)(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                # Of the order of the spread of the initial sigmoid scores (about 0.03): the bias
                # moves the selection without deciding it alone (0.1 left most experts dead).
                buf.copy_(0.02 * torch.randn(buf.shape))
    return model.eval()


def _check_directory(directory: Path) -> None:
    if not directory.exists():
        raise ValueError(f"model directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise ValueError(f"model directory {str(directory)!r} is not a directory")
    if not (directory / "config.json").is_file():
        raise ValueError(f"model directory {str(directory)!r} has no config.json; expected a directory "
                         "of downloaded weights (config.json and *.safetensors)")


def check_moe_config(config: object) -> None:
    """A ValueError unless ``config`` is the config of a supported MoE family (named otherwise)."""
    model_type = getattr(config, "model_type", None)
    if model_type in FAMILIES:
        return
    if any((getattr(config, key, 0) or 0) > 0 for key in _EXPERT_KEYS):
        raise ValueError(f"model_type={model_type!r} is an MoE architecture that is not supported; "
                         f"expected one of {sorted(FAMILIES)}")
    raise ValueError(f"model_type={model_type!r} is not a mixture-of-experts model (its config names no "
                     f"experts); expected one of {sorted(FAMILIES)}")


def load_model(directory: str | Path) -> nn.Module:
    """The causal LM saved in ``directory`` (config.json + safetensors, e.g. downloaded with
    ``hf download``; ``~`` is expanded), loaded offline in eval mode with the checkpoint's dtype."""
    directory = Path(directory).expanduser()
    _check_directory(directory)
    transformers = require_transformers()
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    check_moe_config(config)
    if not any(directory.glob("*.safetensors")):
        raise ValueError(f"model directory {str(directory)!r} has no *.safetensors weights; expected the "
                         "files of a downloaded checkpoint beside its config.json")
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype="auto")
    return model.eval()


def has_tokenizer(directory: str | Path) -> bool:
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def byte_token_ids(text: str, vocab_size: int) -> Tensor:
    """(1, S) int64: the UTF-8 bytes of ``text``, each mod ``vocab_size`` (the fallback tokenizer)."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long) % vocab_size
    return ids[None]


def token_ids(text: str, model: nn.Module, directory: str | Path | None, *, max_tokens: int) -> Tensor:
    """(1, S) the first ``max_tokens`` token ids of ``text``: the directory's tokenizer when it has
    one, else :func:`byte_token_ids`."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not text.strip():
        raise ValueError(f"text must hold some non-whitespace characters to route, got {text[:40]!r}")
    if directory is not None and has_tokenizer(directory):
        tokenizer = require_transformers().AutoTokenizer.from_pretrained(directory, local_files_only=True)
        ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)[None]
    else:
        ids = byte_token_ids(text, model.config.vocab_size)
    return ids[:, :max_tokens]
