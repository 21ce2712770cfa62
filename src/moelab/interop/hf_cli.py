"""``moelab analyze-hf DIR_OR_ARCH --text FILE``: moelab's routing analysis of a Hugging Face MoE
model, written as a markdown report with figures.

DIR_OR_ARCH is a local directory of downloaded weights (config.json + safetensors, and the
tokenizer's files when present), read offline, or the name of an architecture (see
:data:`~moelab.interop.hf_models.ARCHITECTURES`) for which a small random model is built from
``--seed``. Nothing is ever downloaded.

Wired into ``moelab.cli`` by calling :func:`add_parser` on its subparsers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT = "hf_report"
DEFAULT_MAX_TOKENS = 512
#: The keys of moelab.interop.hf_models.ARCHITECTURES, for --help without importing torch (a test
#: holds the two equal).
ARCHITECTURE_NAMES = ("mixtral", "qwen2-moe", "qwen3-moe", "olmoe", "deepseek-v3", "gpt-oss")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``analyze-hf`` command to ``subparsers`` (the result of ``add_subparsers``).

    Imports nothing heavy: building moelab's parser stays fast."""
    p = subparsers.add_parser(
        "analyze-hf", help="routing analysis of a Hugging Face MoE model, as a markdown report",
        description="Route a text through a Hugging Face MoE causal LM and write DIR/report.md: per "
                    "layer load, token entropy and dead experts, expert paths across layers, "
                    "co-occurrence of experts in consecutive layers, and the intrinsic dimension of "
                    "each expert's inputs, with figures under DIR/figures and every number in "
                    "DIR/analysis.json. Needs transformers: pip install 'moelab[hf]'.")
    p.add_argument("source", metavar="DIR_OR_ARCH",
                   help="a local directory of downloaded weights (config.json + *.safetensors; read "
                        "offline) or an architecture for a small random model: "
                        + ", ".join(ARCHITECTURE_NAMES))
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file to route")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"report directory (default ./{DEFAULT_OUT})")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"route at most this many tokens of the text (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of a random architecture's weights (default 0; unused for a directory)")
    p.set_defaults(func=analyze_hf)
    return p


def _read_text(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--text {path!r} is not a file")
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"--text {path!r} is empty; expected some text to route")
    return text


def analyze_hf(args: argparse.Namespace) -> int:
    """The ``analyze-hf`` command. Bad input raises ValueError (printed by ``moelab.cli.main``); a
    missing transformers is reported here, naming the extra to install."""
    from moelab.interop.hf_capture import HFUnavailableError

    try:
        return _analyze(args)
    except HFUnavailableError as exc:
        print(f"moelab: error: {exc}", file=sys.stderr)
        return 2


def _analyze(args: argparse.Namespace) -> int:
    from moelab.interop.hf_capture import capture_routing
    from moelab.interop.hf_models import ARCHITECTURES, has_tokenizer, load_model, random_model, token_ids
    from moelab.interop.hf_report import write_hf_report
    from moelab.interop.routing_analysis import analyze_capture

    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    text = _read_text(args.text)
    source = args.source
    if source in ARCHITECTURES and not Path(source).exists():
        model, directory = random_model(source, seed=args.seed), None
        origin = f"random {source} (seed {args.seed})"
    else:
        if not Path(source).exists():
            raise ValueError(f"model directory {source!r} does not exist, and it is not one of the "
                             f"architectures {sorted(ARCHITECTURES)}")
        model, directory = load_model(source), source
        origin = f"directory {source}"
    ids = token_ids(text, model, directory, max_tokens=args.max_tokens)
    tokenizer = "the directory's tokenizer" if directory is not None and has_tokenizer(directory) else \
        f"bytes (UTF-8 byte mod vocab size {model.config.vocab_size})"
    capture = capture_routing(model, ids)
    analysis = analyze_capture(capture)
    dense = ", ".join(str(i) for i, _ in capture.dense_layers)
    facts = {"model": origin, "model_type": capture.model_type, "text": args.text,
             "tokens": f"{capture.num_tokens} ({tokenizer})",
             "dense layers skipped": f"decoder layer(s) {dense}" if dense else "none"}
    name = Path(source).expanduser().resolve().name if directory is not None else source
    path = write_hf_report(analysis, args.out, title=f"Routing analysis: {name}", facts=facts)
    print(f"{capture.model_type}: {capture.num_tokens} tokens through {len(capture.layers)} MoE layer(s), "
          f"{analysis.paths.num_paths} distinct expert paths")
    print(f"report: {path}")
    return 0
