"""The largest differences between converted layers and their Hugging Face blocks, per family.

Runs the cases of tests/interop/test_hf_convert.py (random float32 weights and inputs, seeds fixed)
in eval and training mode on both dispatch paths, and prints one JSON line: for each case, the
largest absolute difference of the outputs, of the input gradients and of any parameter gradient
(mapped back to the block's names), the largest absolute parameter gradient for scale, and whether
the selected experts were all equal. The tests assert the same quantities are within 1e-5.

Usage: python benchmarks/hf_parity.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))
from test_hf_convert import (  # noqa: E402
    CASES,
    from_hf,
    hf_block,
    hf_forward,
    hf_router,
    layout_of_block,
    random_input,
    state_to_hf,
)


def differences(case: str, *, train: bool, dispatch: str) -> dict:
    block = hf_block(case)
    layer = from_hf(block).train(train)
    block.train(train)
    x = random_input(block)
    x_hf, x_ml = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_hf = hf_forward(block, x_hf)
    out = layer.run(x_ml, dispatch_mode=dispatch)
    g = torch.randn(y_hf.shape, generator=torch.Generator().manual_seed(1))
    (y_hf * g).sum().backward()
    (out.y * g).sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters()} | dict(layer.named_buffers())
    mapped = state_to_hf(layout_of_block(block), grads)
    with torch.no_grad():
        ids_hf = hf_router(block)(x.reshape(-1, x.shape[-1]))[2]
    return {
        "output": (out.y - y_hf).abs().max().item(),
        "input_grad": (x_ml.grad - x_hf.grad).abs().max().item(),
        "param_grad": max((mapped[n] - p.grad).abs().max().item()
                          for n, p in block.named_parameters()),
        "param_grad_scale": max(p.grad.abs().max().item() for p in block.parameters()),
        "experts_equal": bool(torch.equal(out.routing.expert_ids.sort(-1).values,
                                          ids_hf.sort(-1).values)),
    }


def main() -> dict:
    result = {}
    for case in sorted(CASES):
        runs = [differences(case, train=t, dispatch=d) for t in (False, True)
                for d in ("dense", "grouped")]
        result[case] = {k: max(r[k] for r in runs) for k in runs[0] if k != "experts_equal"}
        result[case]["experts_equal"] = all(r["experts_equal"] for r in runs)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
