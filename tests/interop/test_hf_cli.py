"""``moelab analyze-hf`` end to end on tiny random models and saved model directories, offline."""

import argparse
import json
import os
import sys

import pytest
import torch

pytest.importorskip("transformers")

from moelab.interop.hf_cli import add_parser  # noqa: E402
from moelab.interop.hf_models import random_model  # noqa: E402

TEXT = ("Mixture-of-experts layers route each token to a few experts. "
        "Deep stacks compose them along expert paths; every token takes one. ") * 4


def _run(argv):
    """Parse ``argv`` as moelab.cli does with the command added, and run it."""
    parser = argparse.ArgumentParser(prog="moelab")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def _report(out):
    md = (out / "report.md").read_text()
    data = json.loads((out / "analysis.json").read_text())
    for name in ("load", "paths", "cooccurrence"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"figures/{name}.png" in md
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    return md, data


@pytest.mark.parametrize("arch", ["mixtral", "qwen3-moe", "deepseek-v3"])
def test_random_architecture(arch, text, tmp_path, capsys):
    out = tmp_path / "report"
    assert _run(["analyze-hf", arch, "--text", text, "--out", str(out), "--max-tokens", "200"]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    md, data = _report(out)
    layers = [entry["layer"] for entry in data["layers"]]
    assert layers == ([1, 2] if arch == "deepseek-v3" else [0, 1])
    assert "dense layers skipped: " + ("decoder layer(s) 0" if arch == "deepseek-v3" else "none") in md
    assert "tokens: 200 (bytes" in md
    for entry in data["layers"]:
        assert entry["num_tokens"] == 200 and sum(entry["load"]) == pytest.approx(1.0)
        assert len(entry["dimensions"]) == 8
    assert sum(data["paths"]["counts"]) == 200
    (pair,) = data["cooccurrence"]
    assert pair["layers"] == layers and sum(map(sum, pair["counts"])) == 200


def test_the_same_seed_gives_the_same_report(text, tmp_path):
    outs = [tmp_path / name for name in ("a", "b", "c")]
    for out, seed in zip(outs, ("1", "1", "2"), strict=True):
        assert _run(["analyze-hf", "olmoe", "--text", text, "--out", str(out), "--seed", seed,
                     "--max-tokens", "64"]) == 0
    a, b, c = ((out / "analysis.json").read_text() for out in outs)
    assert a == b and a != c
    assert (outs[0] / "report.md").read_text() == (outs[1] / "report.md").read_text()


def test_saved_model_directory(text, tmp_path, capsys):
    """The documented path for downloaded weights: a directory written by save_pretrained."""
    model_dir = tmp_path / "tiny-qwen3-moe"
    random_model("qwen3-moe", seed=5).save_pretrained(model_dir)
    assert (model_dir / "config.json").is_file() and list(model_dir.glob("*.safetensors"))
    out = tmp_path / "report"
    assert _run(["analyze-hf", str(model_dir), "--text", text, "--out", str(out), "--max-tokens", "100"]) == 0
    md, data = _report(out)
    assert md.startswith("# Routing analysis: tiny-qwen3-moe\n")
    assert f"model: directory {model_dir}" in md and "model_type: qwen3_moe" in md
    # The loaded weights are the saved ones: the report equals the one of the model in memory.
    from moelab.interop import analyze_capture, byte_token_ids, capture_routing

    ids = byte_token_ids(TEXT, 256)[:, :100]
    expected = analyze_capture(capture_routing(random_model("qwen3-moe", seed=5), ids))
    assert data["paths"]["counts"] == expected.paths.counts.tolist()
    assert data["layers"][0]["load"] == pytest.approx(expected.layers[0].load.tolist(), abs=0)


def test_directory_tokenizer_is_used(text, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model_dir = tmp_path / "tok-mixtral"
    random_model("mixtral", seed=0).save_pretrained(model_dir)
    words = sorted(set(TEXT.replace(".", " ").replace(";", " ").replace(",", " ").split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(model_dir)
    out = tmp_path / "report"
    assert _run(["analyze-hf", str(model_dir), "--text", text, "--out", str(out)]) == 0
    md, _ = _report(out)
    n = len(backend.encode(TEXT).ids)
    assert n < len(TEXT.encode())
    assert f"tokens: {n} (the directory's tokenizer)" in md


def test_missing_directory(text, tmp_path):
    with pytest.raises(ValueError, match="does not exist, and it is not one of the architectures"):
        _run(["analyze-hf", str(tmp_path / "nowhere"), "--text", text])


def test_directory_without_config(text, tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        _run(["analyze-hf", str(tmp_path / "weights"), "--text", text])


def test_directory_without_weights(text, tmp_path):
    random_model("mixtral", seed=0).config.save_pretrained(tmp_path / "config-only")
    with pytest.raises(ValueError, match="has no \\*.safetensors weights"):
        _run(["analyze-hf", str(tmp_path / "config-only"), "--text", text])


def test_config_of_a_dense_model(text, tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="model_type='llama' is not a mixture-of-experts model"):
        _run(["analyze-hf", str(tmp_path / "llama"), "--text", text])


def test_empty_text(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(ValueError, match="is empty; expected some text to route"):
        _run(["analyze-hf", "mixtral", "--text", str(tmp_path / "empty.txt")])


def test_bad_max_tokens(text):
    with pytest.raises(ValueError, match="--max-tokens must be >= 1, got 0"):
        _run(["analyze-hf", "mixtral", "--text", text, "--max-tokens", "0"])


def test_without_transformers_the_extra_is_named(text, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    assert _run(["analyze-hf", "mixtral", "--text", text, "--out", str(tmp_path / "r")]) == 2
    assert "pip install 'moelab[hf]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unknown_architecture_name_is_an_error(text):
    with pytest.raises(ValueError, match="'mixtrl' does not exist"):
        _run(["analyze-hf", "mixtrl", "--text", text])


def test_capture_count_is_the_token_count():
    # max_tokens cuts the byte fallback: a quick check of the helper the command relies on.
    from moelab.interop.hf_models import token_ids

    model = random_model("gpt-oss", seed=0)
    ids = token_ids("héllo", model, None, max_tokens=4)
    assert ids.tolist() == [[104, 195, 169, 108]] and ids.dtype == torch.long


def test_the_help_names_every_architecture_without_importing_torch():
    import subprocess

    from moelab.interop.hf_cli import ARCHITECTURE_NAMES
    from moelab.interop.hf_models import ARCHITECTURES

    assert ARCHITECTURE_NAMES == tuple(ARCHITECTURES)
    code = ("import argparse, sys; from moelab.interop.hf_cli import add_parser; "
            "add_parser(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "False"


def test_the_moelab_command_line_runs_it(text, tmp_path, capsys):
    from moelab.cli import main

    out = tmp_path / "report"
    assert main(["analyze-hf", "mixtral", "--text", text, "--out", str(out),
                 "--max-tokens", "50"]) == 0
    assert (out / "report.md").exists()
    assert main(["analyze-hf", str(tmp_path / "nowhere"), "--text", text]) == 2
    assert capsys.readouterr().err.startswith("moelab: error: ")
