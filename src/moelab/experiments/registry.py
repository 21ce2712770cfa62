"""The named experiments. Each is a function returning an :class:`Experiment`; variants are
overrides of a base configuration, never copies.

Recipes (applied identically to every model an experiment compares):

* ``paper``: the paper's stated budget (Sec. 6): Adam, lr 1e-3 constant, batch 128, fresh samples,
  squared loss, default initialisation; 2000 steps (Experiment I) or 5000 (Experiment II).
* ``best``: moelab's recipe, :func:`best_recipe`; docs/experiments.md says how it was chosen.
"""

from __future__ import annotations

from collections.abc import Callable

from moelab.experiments.config import ModelSpec, RunConfig, TaskSpec, apply_overrides
from moelab.experiments.spec import Axis, Experiment
from moelab.layers.moe import MoEConfig
from moelab.training.loop import TrainConfig

PAPER_RECIPE: dict[str, object] = {"train.lr": 1e-3, "train.schedule": "constant"}


def best_recipe(lr: float) -> dict[str, object]:
    """moelab's best recipe at peak learning rate ``lr`` (1e-2 on manifold tasks, 3e-3 on Eq. (4)
    targets): data-dependent initialisation (Voronoi routers from k-means, expert kinks on their own
    data), hard top-1 routing (the paper's weighting, so the router keeps its balanced initial
    partition), Adam with 100 warm-up steps and cosine decay."""
    return {"model.init": "data", "model.moe.weighting": "paper", "train.lr": lr,
            "train.schedule": "cosine", "train.warmup_steps": 100}


def _recipes(paper_steps: int, best_steps: int, best_lr: float) -> Axis:
    return Axis("recipe", (
        ("paper", {**PAPER_RECIPE, "train.steps": paper_steps}),
        ("best", {**best_recipe(best_lr), "train.steps": best_steps}),
    ))


def _moe(**kw) -> MoEConfig:
    # Inputs are generated, so the per-step finiteness check is skipped in experiments.
    return MoEConfig(check_finite=False, **kw)


def _with(run: RunConfig, overrides: dict[str, object]) -> RunConfig:
    return apply_overrides(run, overrides)


def table3() -> Experiment:
    """Experiment I (Thm 4.8): 1-4-MoE on the circle in R^D; Table 3."""
    return Experiment(
        name="table3",
        title="Experiment I: 1-4-MoE on the unit circle in R^D (Table 3)",
        claim="The test error of a shallow MoE does not depend on the ambient dimension D "
              "(it is set by the intrinsic d = 1): ~3.4e-4 at every D.",
        base=RunConfig(
            experiment="table3",
            task=TaskSpec(kind="manifold", manifold="circle", D=16, n_charts=4),
            model=ModelSpec(layers=1, moe=_moe(num_experts=4, top_k=1, expert_hidden=10)),
            train=TrainConfig(steps=2000, test_size=10_000),
        ),
        axes=(Axis.of("D", "task.D", (16, 32, 64, 128)), _recipes(2000, 5000, 1e-2)),
    )


def table4() -> Experiment:
    """Experiment II (Thm 5.2/5.3): 2-3-MoE vs 1-6-MoE on Eq. (4), L = 2, E = 3; Table 4."""
    return Experiment(
        name="table4",
        title="Experiment II: 2-3-MoE vs 1-6-MoE on the 9-piece target on [0, 3]^2 (Table 4)",
        claim="A deep MoE (2 layers x 3 experts) keeps improving with expert width m while a "
              "shallow one with as many experts (1 x 6) plateaus: 6 experts cannot cover 9 pieces.",
        base=RunConfig(
            experiment="table4",
            task=TaskSpec(kind="piecewise", E=3, L=2, output="vector"),
            model=ModelSpec(layers=1, moe=_moe(num_experts=6, top_k=1, expert_hidden=16)),
            train=TrainConfig(steps=5000, test_size=10_000),
        ),
        axes=(
            Axis("model", (
                ("2-3-MoE", {"model.layers": 2, "model.moe.num_experts": 3, "model.width": 4}),
                ("1-6-MoE", {"model.layers": 1, "model.moe.num_experts": 6}),
            )),
            Axis.of("m", "model.moe.expert_hidden", (16, 32, 64, 128)),
            Axis.of("output", "task.output", ("vector", "sum", "product")),
            _recipes(5000, 5000, 3e-3),
        ),
    )


def dense_vs_moe() -> Experiment:
    """The paper's claim that a dense net needs about E times more activated parameters."""
    moe = [(f"moe-m{m}", {"model.kind": "moe", "model.moe.expert_hidden": m}) for m in (8, 16, 32)]
    dense = [(f"dense-h{h}", {"model.kind": "dense", "model.dense_hidden": h})
             for h in (8, 16, 32, 64, 128)]
    return Experiment(
        name="dense-vs-moe",
        title="Shallow MoE vs dense two-layer nets on manifold tasks: error vs activated parameters",
        claim="For comparable accuracy a dense network needs about E times more activated "
              "parameters than an MoE with E experts.",
        base=_with(RunConfig(
            experiment="dense-vs-moe",
            task=TaskSpec(kind="manifold", manifold="circle", D=16),
            model=ModelSpec(layers=1, moe=_moe(num_experts=4, expert_hidden=16)),
            train=TrainConfig(steps=3000),
        ), {**best_recipe(1e-2)}),
        axes=(
            Axis("task", (("circle d=1", {"task.manifold": "circle", "task.n_charts": 4}),
                          ("sphere d=2", {"task.manifold": "sphere", "task.d": 2,
                                          "task.n_charts": 6, "task.target": "ridge",
                                          "task.smoothness": 2}))),
            Axis.of("D", "task.D", (16, 64, 256)),
            Axis("model", tuple(moe + dense)),
        ),
        seeds=2,
    )


def depth() -> Experiment:
    """E^L in practice: deep vs shallow MoEs with the same number of experts on Eq. (4)."""
    variants = []
    for L in (2, 3, 4):
        variants.append((f"deep L={L}", {"task.L": L, "model.layers": L, "model.width": 2 * L,
                                         "model.moe.num_experts": 3}))
        variants.append((f"shallow L={L}", {"task.L": L, "model.layers": 1,
                                            "model.moe.num_experts": 3 * L}))
    return Experiment(
        name="depth",
        title="Depth gives E^L pieces: L-layer vs 1-layer MoEs with L*E experts on Eq. (4), E = 3",
        claim="An L-layer MoE with E experts per layer can separate all E^L pieces; a 1-layer MoE "
              "with L*E experts separates at most L*E.",
        base=_with(RunConfig(
            experiment="depth",
            task=TaskSpec(kind="piecewise", E=3, L=2, output="vector"),
            model=ModelSpec(layers=2, moe=_moe(num_experts=3, expert_hidden=32)),
            train=TrainConfig(steps=4000),
        ), {**best_recipe(3e-3)}),
        axes=(Axis("model", tuple(variants)),),
        seeds=2,
    )


def gating() -> Experiment:
    """Linear vs MLP routers on a manifold whose charts a linear router on raw x cannot separate."""
    return Experiment(
        name="gating",
        title="Linear vs nonlinear routers on the spiral (charts not linearly separable in R^D)",
        claim="A nonlinear router lets a depth-1 MoE match the depth-2 construction with linear "
              "routers (suggestion 1).",
        base=_with(RunConfig(
            experiment="gating",
            task=TaskSpec(kind="manifold", manifold="spiral", D=16),
            model=ModelSpec(layers=1, moe=_moe(num_experts=10, expert_hidden=16)),
            train=TrainConfig(steps=4000),
        ), {**best_recipe(1e-2), "model.moe.weighting": "switch"}),
        axes=(Axis("model", (
            ("1 layer, linear router", {"model.layers": 1}),
            ("1 layer, MLP router", {"model.layers": 1, "model.moe.router": "mlp",
                                     "model.moe.router_hidden": 64}),
            ("2 layers, linear routers", {"model.layers": 2, "model.width": 16}),
        )),),
        seeds=2,
    )


def lowdim_experts() -> Experiment:
    """Suggestion 3, untested in the paper: experts f_low o Enc with and without reconstruction."""
    return Experiment(
        name="lowdim-experts",
        title="Low-dimensional experts f_low o Enc vs plain experts (suggestion 3)",
        claim="Experts that first project to the intrinsic dimension (f_low o Enc) reach the same "
              "error with far fewer parameters when D is large.",
        base=_with(RunConfig(
            experiment="lowdim-experts",
            task=TaskSpec(kind="manifold", manifold="circle", D=16, n_charts=4,
                          embedding="isometry"),
            model=ModelSpec(layers=1, moe=_moe(num_experts=4, expert_hidden=16)),
            train=TrainConfig(steps=3000),
        ), {**best_recipe(1e-2)}),
        axes=(
            Axis.of("D", "task.D", (16, 64, 256)),
            Axis("experts", (
                ("plain", {}),
                ("f_low o Enc", {"model.moe.latent_dim": 2}),
                ("f_low o Enc + recon", {"model.moe.latent_dim": 2,
                                         "model.moe.latent_decoder": True,
                                         "train.aux_weights": {"reconstruction": 0.1}}),
            )),
        ),
        seeds=2,
    )


def intrinsic() -> Experiment:
    """Error vs intrinsic d at fixed D, and vs D at fixed d."""
    variants = [(f"d={d} D=32", {"task.manifold": "sphere" if d > 1 else "circle", "task.d": d,
                                 "task.D": 32}) for d in (1, 2, 3)]
    variants += [(f"d=1 D={D}", {"task.manifold": "circle", "task.d": 1, "task.D": D})
                 for D in (4, 16, 64, 256)]
    return Experiment(
        name="intrinsic",
        title="The rate is set by the intrinsic dimension d, not by D (Thm 4.8)",
        claim="At fixed D the error grows with d; at fixed d it does not change with D.",
        base=_with(RunConfig(
            experiment="intrinsic",
            task=TaskSpec(kind="manifold", manifold="circle", D=32, target="ridge", smoothness=2),
            model=ModelSpec(layers=1, moe=_moe(num_experts=8, expert_hidden=32)),
            train=TrainConfig(steps=3000),
        ), {**best_recipe(1e-2)}),
        axes=(Axis("task", tuple(variants)),),
        seeds=2,
    )


def constructions() -> Experiment:
    """The hand-built networks of the theorems (no training): sup error against m, with rates."""
    from moelab.experiments.config import ConstructionRun

    cases = (
        ("thm5.3", "Thm 5.3, Eq. (4), E=3, L=2", {"E": 3, "L": 2}),
        ("thm5.2", "Thm 5.2, circle x circle, E=4", {"manifold": "circle", "L": 2, "E": 4}),
        ("cor4.9", "Cor 4.9, circle in R^16", {"manifold": "circle", "D": 16}),
        ("cor4.9", "Cor 4.9, spiral in R^16", {"manifold": "spiral", "D": 16}),
        ("nonlinear-router", "MLP router, circle in R^16", {"manifold": "circle", "D": 16}),
    )
    variants = tuple((label, {"construction.name": name, "construction.args": args})
                     for name, label, args in cases)
    return Experiment(
        name="constructions",
        title="The theorems' constructions, built by hand: error against expert width m",
        claim="The constructions route every point correctly and their sup error stays below the "
              "theorem's bound, falling at least like m^-(kappa/d min 1/2).",
        base=ConstructionRun(experiment="constructions"),
        axes=(Axis("construction", variants), Axis.of("m", "construction.m", (4, 8, 16, 32, 64))),
        seeds=1,
    )


EXPERIMENTS: dict[str, Callable[[], Experiment]] = {
    "table3": table3,
    "table4": table4,
    "dense-vs-moe": dense_vs_moe,
    "depth": depth,
    "gating": gating,
    "lowdim-experts": lowdim_experts,
    "intrinsic": intrinsic,
    "constructions": constructions,
}


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``; a ValueError lists the known names."""
    try:
        return EXPERIMENTS[name]()
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}") from None
