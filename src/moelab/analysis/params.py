"""Parameter counts: total, and activated per token (what a token's forward pass touches)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from moelab.layers.moe import MoELayer


@dataclass(frozen=True)
class ParameterCount:
    """``total`` parameters and ``active`` parameters per token (docs/paper.md Sec. 3: a dense net needs
    about E times more *activated* parameters). ``active`` may be fractional under expert choice,
    where the number of experts per token is only fixed on average."""

    total: int
    active: float


def count_parameters(model: nn.Module) -> ParameterCount:
    """Total and activated-per-token parameters of any moelab model (or any ``nn.Module``).

    In each :class:`~moelab.layers.moe.MoELayer` a token activates the router, the shared experts
    and K of the E routed experts (token choice), so only K/E of the routed experts' parameters
    count as active. Under expert choice a token is taken by capacity_factor * K experts on
    average (capacity C = capacity_factor * T * K / E per expert), which is what is counted.
    Every parameter outside MoE layers is active.
    """
    total = sum(p.numel() for p in model.parameters())
    inactive = 0.0
    for module in model.modules():
        if isinstance(module, MoELayer):
            cfg = module.config
            experts = sum(p.numel() for p in module.experts.parameters())
            per_token = cfg.router.top_k
            if cfg.router.routing == "expert_choice":
                per_token = cfg.router.top_k * (cfg.router.capacity_factor or 1.0)
            inactive += experts * (1 - min(per_token, cfg.num_experts) / cfg.num_experts)
    return ParameterCount(total=total, active=total - inactive)
