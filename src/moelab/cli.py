"""The ``moelab`` command line: parse, look up, call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from moelab.experiments.demo import circle_demo

    r = circle_demo(D=args.D, steps=args.steps, lr=args.lr, seed=args.seed,
                    progress=not args.quiet)
    print(f"1-4-MoE on the unit circle in R^{r.D}: f(x) = sin(5 x1) + cos(3 x2), "
          f"{r.steps} Adam steps, batch 128, cosine lr from {args.lr:g}")
    print(f"  parameters: {r.parameters} total, {r.active_parameters:.0f} active per token")
    print(f"  test MSE  {r.test_mse:.3e}   (paper, Table 3, 2000 steps: ~3.4e-4)")
    print(f"  test sup  {r.test_sup:.3e}")
    print(f"  tokens per expert on 4096 test points: {r.tokens_per_expert}")
    print(f"  trained in {r.train.seconds:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moelab",
        description="Mixture-of-experts layers and the experiments of Wang & E (NeurIPS 2025).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a 1-4-MoE on the circle task and print its error",
                          description="Train the paper's 1-4-MoE on Experiment I's circle task.")
    demo.add_argument("--D", type=int, default=16, help="ambient dimension (default 16)")
    demo.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    demo.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (default 1e-2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"moelab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
