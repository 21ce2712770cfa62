"""The named experiments, each written once: its grid (a base configuration and the axes over it)
and what its report checks and shows (:mod:`moelab.experiments.checks`,
:mod:`moelab.experiments.displays`), beside the paper's own numbers (:mod:`moelab.experiments.paper`).
``@register(name)`` is the one place an experiment's name is written; variants are overrides of a
base configuration, never copies. docs/extending.md shows how to add one.

Recipes (applied identically to every model an experiment compares):

* ``paper``: the paper's stated budget (Sec. 6): Adam, lr 1e-3 constant, batch 128, fresh samples,
  squared loss, default initialisation; 2000 steps (Experiment I) or 5000 (Experiment II).
* ``best``: moelab's recipe, :func:`best_recipe`; docs/experiments.md says how it was chosen.

Training methods (:data:`LEARNING_METHODS`, :mod:`moelab.training.recipes`), each on top of the best
recipe and applied identically to deep and shallow models; none reads the target's pieces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

from moelab.experiments.checks import Beats, Bounds, CostToMatch, Flat, NearReference, Slopes
from moelab.experiments.config import (
    ConstructionRun,
    ModelSpec,
    RunConfig,
    TaskSpec,
    apply_overrides,
)
from moelab.experiments.displays import Columns, Curves, Pictures, Related, VersusPaper
from moelab.experiments.paper import TABLE3, TABLE4
from moelab.experiments.spec import Axis, Experiment
from moelab.layers import ExpertConfig, MoEConfig
from moelab.training.loop import TrainConfig

PAPER_RECIPE: dict[str, object] = {"train.lr": 1e-3, "train.schedule": "constant"}
FLAT_TOLERANCE = 1.5  # max/min of the medians over D that still counts as flat in D
MATCH_FACTOR = 2.0  # "matches": median test MSE within this factor
THEOREM_EXPONENT = -0.5  # the theorems' worst-case exponent -(kappa/d min 1/2), smooth targets

EXPERIMENTS: dict[str, Callable[[], Experiment]] = {}


def register(name: str, **declared: tuple) -> Callable[[Callable[[], Experiment]],
                                                       Callable[[], Experiment]]:
    """Register the decorated function as the experiment ``name`` (stamped on it and on its runs).
    ``declared`` (``checks=``, ``tables=``, ``figures=``, ``notes=``) adds to what it declares."""
    if name in EXPERIMENTS:
        raise ValueError(f"experiment {name!r} is already registered")

    def add(build: Callable[[], Experiment]) -> Callable[[], Experiment]:
        @functools.wraps(build)
        def named() -> Experiment:
            exp = build()
            if exp.name not in ("", name):
                raise ValueError(f"experiment registered as {name!r} calls itself {exp.name!r}")
            more = {key: getattr(exp, key) + tuple(value) for key, value in declared.items()}
            return replace(exp, name=name, **more)

        EXPERIMENTS[name] = named
        return named

    return add


def unnamed(**parts) -> RunConfig:
    """A base run configuration (``task=``, ``model=``, ``train=``) whose experiment name the
    :class:`Experiment` stamps."""
    return RunConfig(experiment="", **parts)


def best_recipe(lr: float) -> dict[str, object]:
    """moelab's best recipe at peak learning rate ``lr`` (1e-2 on manifold tasks, 3e-3 on Eq. (4)
    targets): data-dependent initialisation (Voronoi routers from k-means, expert kinks on their own
    data), hard top-1 routing (the paper's weighting, so the router keeps its balanced initial
    partition), Adam with 100 warm-up steps and cosine decay."""
    return {"model.init": "data", "model.moe.router.weighting": "paper", "train.lr": lr,
            "train.schedule": "cosine", "train.warmup_steps": 100}


def _recipes(paper_steps: int, best_steps: int, best_lr: float) -> Axis:
    return Axis("recipe", (
        ("paper", {**PAPER_RECIPE, "train.steps": paper_steps}),
        ("best", {**best_recipe(best_lr), "train.steps": best_steps}),
    ))


def _moe(num_experts: int, hidden: int) -> MoEConfig:
    """The paper's layer shape (linear router, top-1, two-layer ReLU experts of width ``hidden``).
    Inputs are generated, so the per-step finiteness check is skipped in experiments."""
    return MoEConfig(num_experts=num_experts, experts=ExpertConfig(hidden=hidden), check_finite=False)


def _with(run: RunConfig, overrides: dict[str, object]) -> RunConfig:
    return apply_overrides(run, overrides)


def _one_layer_best(task: TaskSpec, experts: int, hidden: int, steps: int,
                    extra: dict[str, object] | None = None) -> RunConfig:
    """The base run of most studies beyond the paper: a depth-1 MoE of ``experts`` experts of
    width ``hidden`` on ``task``, trained ``steps`` steps by the best recipe at lr 1e-2, with the
    overrides ``extra`` on top."""
    run = unnamed(task=task, model=ModelSpec(layers=1, moe=_moe(experts, hidden)),
                  train=TrainConfig(steps=steps))
    return _with(run, {**best_recipe(1e-2), **(extra or {})})


@register("table3")
def table3() -> Experiment:
    """Experiment I (Thm 4.8): 1-4-MoE on the circle in R^D; Table 3."""
    best = {"recipe": "best"}
    return Experiment(
        title="Experiment I: 1-4-MoE on the unit circle in R^D (Table 3)",
        claim="The test error of a shallow MoE does not depend on the ambient dimension D "
              "(it is set by the intrinsic d = 1): ~3.4e-4 at every D.",
        base=unnamed(
            task=TaskSpec(kind="manifold", manifold="circle", D=16, n_charts=4),
            model=ModelSpec(layers=1, moe=_moe(4, 10)),
            train=TrainConfig(steps=2000, test_size=10_000),
        ),
        axes=(Axis.of("D", "task.D", (16, 32, 64, 128)), _recipes(2000, 5000, 1e-2)),
        checks=(
            NearReference("(a) best recipe", x="D", reference=TABLE3, factor=2.0, where=best),
            Flat("(b) flat in D", x="D", tolerance=FLAT_TOLERANCE, per=("recipe",),
                 reference=TABLE3),
        ),
        tables=(VersusPaper("Test MSE by ambient dimension D (median [min, max] over seeds; last "
                            "row: max/min of the medians over D)", x="D", paper={"": TABLE3},
                            series="recipe"),),
        figures=(
            Curves("mse-vs-D", "Test MSE vs ambient dimension D: median over seeds with "
                   "[min, max] bars, and the paper's Table 3", x="D", series="recipe",
                   xlabel="ambient dimension D", reference={"paper, Table 3": TABLE3}),
            Pictures("routing", "Routing on the circle (best recipe, seed 0): the expert "
                     "each angle is sent to", kind="circle", panels="D", where=best),
        ),
    )


@register("table4")
def table4() -> Experiment:
    """Experiment II (Thm 5.2/5.3): 2-3-MoE vs 1-6-MoE on Eq. (4), L = 2, E = 3; Table 4."""
    deep, shallow = ("2-3-MoE", {"model": "2-3-MoE"}), ("1-6-MoE", {"model": "1-6-MoE"})
    per = ("output", "recipe")
    vector_best = {"output": "vector", "recipe": "best"}
    return Experiment(
        title="Experiment II: 2-3-MoE vs 1-6-MoE on the 9-piece target on [0, 3]^2 (Table 4)",
        claim="A deep MoE (2 layers x 3 experts) keeps improving with expert width m while a "
              "shallow one with as many experts (1 x 6) plateaus: 6 experts cannot cover 9 pieces.",
        base=unnamed(
            task=TaskSpec(kind="piecewise", E=3, L=2, output="vector"),
            model=ModelSpec(layers=1, moe=_moe(6, 16)),
            train=TrainConfig(steps=5000, test_size=10_000),
        ),
        axes=(
            Axis("model", (
                ("2-3-MoE", {"model.layers": 2, "model.moe.num_experts": 3, "model.width": 4}),
                ("1-6-MoE", {"model.layers": 1, "model.moe.num_experts": 6}),
            )),
            Axis.of("m", "model.moe.experts.hidden", (16, 32, 64, 128)),
            Axis.of("output", "task.output", ("vector", "sum", "product")),
            _recipes(5000, 5000, 3e-3),
        ),
        checks=(
            Beats("2-3-MoE beats 1-6-MoE at the largest m", better=deep, worse=shallow, at="m",
                  per=per),
            Slopes("2-3-MoE keeps improving with m while 1-6-MoE plateaus", x="m",
                   series=(deep + ("<=", -0.5), shallow + (">", -0.5)), per=per, paper=TABLE4),
        ),
        tables=(
            VersusPaper("Test MSE (median [min, max] over seeds; last row: log-log slope in m "
                        "with 95% interval)", x="m", paper=TABLE4, series="model", per=per,
                        summary="slope"),
            Columns("Expert paths on test points (median [min, max] over seeds): regions present, "
                    "distinct paths used, pieces given a path of their own, distinct majority "
                    "paths, fraction of points on their piece's majority path",
                    metrics=("regions", "num_paths", "pieces_separated",
                             "distinct_majority_paths", "routing_purity"), where=vector_best),
            Related("constructions", Columns(
                "Contrast: the hand-built deep network of Thm 5.3 for the same target (E = 3, "
                "L = 2, vector output; no training), as measured by the `constructions` "
                "experiment", metrics=("test_mse", "test_sup", "num_paths / paths_possible",
                                       "active_parameters"),
                where={"construction.name": "thm5.3"}),
                missing="*Contrast: the hand-built Thm 5.3 network is not in this database; "
                        "`moelab run constructions --out DIR` measures it.*"),
        ),
        figures=(
            Curves("mse-vs-m", "Test MSE vs expert width m: median over seeds with "
                   "[min, max] bars; dashed: the paper's Table 4", x="m", series="model",
                   panels="recipe", per="output", xlabel="expert width m",
                   reference={f"{k}, paper": v for k, v in TABLE4.items()}),
            Pictures("routing", "Expert paths on [0, 3]^2 (vector output, best recipe, "
                     "seed 0, largest m); black lines: the 9 unit pieces, each labelled by its "
                     "majority path", kind="grid", panels="model", where=vector_best, last="m"),
        ),
        notes=("The paper does not say whether its target is the vector of Eq. (4) or a scalar; "
               "each output form below is set beside the same Table 4 column.",),
    )


def _active_parameters(cell) -> float:
    return cell.spread("active_parameters").median


@register("dense-vs-moe")
def dense_vs_moe() -> Experiment:
    """The paper's claim that a dense net needs about E times more activated parameters."""
    moe = [(f"moe-m{m}", {"model.kind": "moe", "model.moe.experts.hidden": m}) for m in (8, 16, 32)]
    dense = [(f"dense-h{h}", {"model.kind": "dense", "model.dense_hidden": h})
             for h in (8, 16, 32, 64, 128)]
    return Experiment(
        title="Shallow MoE vs dense two-layer nets on manifold tasks: error vs activated parameters",
        claim="For comparable accuracy a dense network needs about E times more activated "
              "parameters than an MoE with E experts.",
        base=_one_layer_best(TaskSpec(kind="manifold", manifold="circle", D=16), 4, 16, 3000),
        axes=(
            Axis("task", (("circle d=1", {"task.manifold": "circle", "task.n_charts": 4}),
                          ("sphere d=2", {"task.manifold": "sphere", "task.d": 2,
                                          "task.n_charts": 6, "task.target": "ridge",
                                          "task.smoothness": 2}))),
            Axis.of("D", "task.D", (16, 64, 256)),
            Axis("model", tuple(moe + dense)),
        ),
        seeds=2,
        checks=(CostToMatch("a dense net needs about E times the MoE's activated parameters "
                            "for the same error (held at >= E/2)", cheap={"model.kind": "moe"},
                            dear={"model.kind": "dense"}, expected="model.moe.num_experts",
                            per=("task", "D")),),
        tables=(Columns(metrics=("test_mse", "active_parameters", "parameters")),),
        figures=(Curves("", "Test MSE vs activated parameters, MoE vs dense (median "
                        "over seeds, [min, max] bars)", x=_active_parameters, series="model.kind",
                        panels="D", per="task", xlabel="activated parameters", xbase=10),),
    )


#: The training methods the ``learnability`` experiments compare, as overrides of the best recipe.
#: ``restarts``: four candidates of the plain method, chosen on a held-out validation sample.
LEARNING_METHODS: tuple[tuple[str, dict[str, object]], ...] = (
    ("plain", {}),
    ("anneal", {"train.method.name": "anneal"}),
    ("em", {"train.method.name": "em"}),
    ("straight-through", {"train.method.name": "straight-through"}),
    ("restarts", {"train.method.restarts": 4}),
)
#: Table 4's target for a method that finds the composition: within 2x of the paper's 2.59e-6 at
#: m = 128, with at least 7 of the 9 pieces on a path of their own.
LEARNED_MSE, LEARNED_PIECES = 5.2e-6, 7


@register("learnability")
def learnability() -> Experiment:
    """Table 4 (vector target) under each training method of :data:`LEARNING_METHODS`."""
    deep, shallow = ("2-3-MoE", {"model": "2-3-MoE"}), ("1-6-MoE", {"model": "1-6-MoE"})
    at_128 = {"model": "2-3-MoE", "m": "128"}
    return Experiment(
        title="Does training find the composition? Table 4 (vector target) under each training "
              "method",
        claim="Some training method, using no knowledge of the pieces, lets the 2-3-MoE reach "
              f"Table 4's error at m = 128 (<= {LEARNED_MSE:g}, 2x the paper) with at least "
              f"{LEARNED_PIECES} of the 9 pieces on a path of their own.",
        base=_with(replace(table4().base, train=TrainConfig(steps=5000, test_size=10_000)),
                   {**best_recipe(3e-3)}),
        axes=(
            Axis("method", LEARNING_METHODS),
            Axis("model", (
                ("2-3-MoE", {"model.layers": 2, "model.moe.num_experts": 3, "model.width": 4}),
                ("1-6-MoE", {"model.layers": 1, "model.moe.num_experts": 6}),
            )),
            Axis.of("m", "model.moe.experts.hidden", (16, 32, 64, 128)),
        ),
        checks=(
            Bounds("the 2-3-MoE at m = 128 reaches Table 4's error with the pieces separated",
                   (("test_mse", "<=", LEARNED_MSE), ("pieces_separated", ">=", LEARNED_PIECES)),
                   per=("method",), where=at_128),
            Beats("2-3-MoE beats 1-6-MoE at the largest m", better=deep, worse=shallow, at="m",
                  per=("method",)),
        ),
        tables=(
            VersusPaper("Test MSE (median [min, max] over seeds; last row: log-log slope in m "
                        "with 95% interval)", x="m", paper=TABLE4, series="model",
                        per=("method",), summary="slope"),
            Columns("Expert paths on test points (median [min, max] over seeds): regions present, "
                    "distinct paths used, pieces given a path of their own, fraction of points on "
                    "their piece's majority path",
                    metrics=("test_mse", "num_paths", "pieces_separated", "routing_purity")),
        ),
        figures=(
            Curves("mse-vs-m", "Test MSE vs expert width m per training method: median over "
                   "seeds with [min, max] bars; dashed: the paper's Table 4", x="m",
                   series="method", panels="model", xlabel="expert width m",
                   reference={f"{k}, paper": v for k, v in TABLE4.items()}),
            Pictures("routing", "Expert paths on [0, 3]^2 (2-3-MoE, m = 128, seed 0) under each "
                     "method; black lines: the 9 unit pieces", kind="grid", panels="method",
                     where=at_128),
        ),
    )


@register("learnability-depth")
def learnability_depth() -> Experiment:
    """The depth study (E = 2, 3; L = 2, 3) under each training method: pieces separated."""
    return _depth_study(
        title="Depth under each training method: how many of the E^L pieces training separates",
        claim="With some training method an L-layer MoE with E experts per layer separates all "
              "E^L pieces.",
        axes=(Axis("method", LEARNING_METHODS), Axis("model", _depth_variants((2, 3), (2, 3)))),
        checks=(_depth_separates_all(per=("method", "task.E", "task.L")),),
        tables=(_depth_columns("Pieces separated out of the E^L regions (median [min, max] over "
                               "seeds)", "pieces_separated / regions"),),
        figures=(_depth_pieces_curve("Pieces separated by the deep MoE per method, against E^L",
                                     series="method", panels="task.E", where=_depth_deep()),),
    )


def _deep(layers: int) -> bool:
    return layers > 1


def _depth_deep() -> dict[str, Callable[[int], bool]]:
    """The depth studies' selector of the deep MoEs (more than one layer)."""
    return {"model.layers": _deep}


def _depth_kind(cell) -> str:
    return "deep" if _deep(cell.config("model.layers")) else "shallow"


def _depth_base() -> RunConfig:
    """The depth studies' base run: Eq. (4) with vector output, the best recipe, 4000 steps."""
    return _with(unnamed(
        task=TaskSpec(kind="piecewise", E=3, L=2, output="vector"),
        model=ModelSpec(layers=2, moe=_moe(3, 32)),
        train=TrainConfig(steps=4000),
    ), {**best_recipe(3e-3)})


def _depth_variants(experts: tuple[int, ...], layers: tuple[int, ...]) -> tuple:
    """For each E and L: an L-layer MoE with E experts per layer ("deep") and a 1-layer MoE with
    E*L experts ("shallow") on the E^L-piece target; labels name E only when it varies."""
    variants = []
    for E in experts:
        for L in layers:
            tag = f"E={E} L={L}" if len(experts) > 1 else f"L={L}"
            variants.append((f"deep {tag}", {"task.E": E, "task.L": L, "model.layers": L,
                                             "model.width": 2 * L, "model.moe.num_experts": E}))
            variants.append((f"shallow {tag}", {"task.E": E, "task.L": L, "model.layers": 1,
                                                "model.moe.num_experts": E * L}))
    return tuple(variants)


def _depth_study(**declared) -> Experiment:
    """A depth study: the shared base run, two seeds, and what ``declared`` adds."""
    return Experiment(base=_depth_base(), seeds=2, **declared)


def _depth_separates_all(*, per: tuple[str, ...]) -> Bounds:
    """The depth studies' claim: the deep MoE separates all E^L pieces."""
    return Bounds("the deep MoE separates all E^L pieces", (("pieces_separated", ">=", "regions"),),
                  per=per, where=_depth_deep())


def _depth_columns(caption: str, last: str) -> Columns:
    """A depth study's table: test MSE, regions, paths and pieces separated, then ``last``."""
    return Columns(caption, metrics=("test_mse", "regions", "num_paths", "pieces_separated", last))


def _depth_pieces_curve(caption: str, **how) -> Curves:
    """A depth study's figure: pieces separated against L on linear axes."""
    return Curves("pieces", caption, x="task.L", metric="pieces_separated", xlabel="L",
                  ylabel="pieces separated", logx=False, logy=False, **how)


@register("depth")
def depth() -> Experiment:
    """E^L in practice: deep vs shallow MoEs with the same number of experts on Eq. (4)."""
    return _depth_study(
        title="Depth gives E^L pieces: L-layer vs 1-layer MoEs with L*E experts on Eq. (4), E = 3",
        claim="An L-layer MoE with E experts per layer can separate all E^L pieces; a 1-layer MoE "
              "with L*E experts separates at most L*E.",
        axes=(Axis("model", _depth_variants((3,), (2, 3, 4))),),
        checks=(
            Beats("the deep MoE separates more pieces than the shallow one",
                  better=("deep", _depth_deep()), worse=("shallow", {"model.layers": 1}),
                  within={"pieces_separated": 1.0}, per=("task.L",), higher=True),
            _depth_separates_all(per=("task.L",)),
        ),
        tables=(_depth_columns("Deep (L layers x E experts) vs shallow (1 layer x L*E experts) on "
                               "Eq. (4): test MSE and expert paths (median [min, max] over seeds)",
                               "distinct_majority_paths"),),
        figures=(_depth_pieces_curve("Pieces separated vs L: deep vs shallow MoE, with E^L and L*E "
                                     "(E = 3)", series=_depth_kind,
                                     reference={"E^L": {L: 3.0**L for L in (2, 3, 4)},
                                                "L*E": {L: 3.0 * L for L in (2, 3, 4)}}),),
    )


@register("gating")
def gating() -> Experiment:
    """Linear vs MLP routers on a manifold whose charts a linear router on raw x cannot separate."""
    mlp = ("1 layer, MLP router", {"model": "1 layer, MLP router"})
    return Experiment(
        title="Linear vs nonlinear routers on the spiral (charts not linearly separable in R^D)",
        claim="A nonlinear router lets a depth-1 MoE match the depth-2 construction with linear "
              "routers (suggestion 1).",
        base=_one_layer_best(TaskSpec(kind="manifold", manifold="spiral", D=16), 10, 16, 4000,
                             {"model.moe.router.weighting": "switch"}),
        axes=(Axis("model", (
            ("1 layer, linear router", {"model.layers": 1}),
            ("1 layer, MLP router", {"model.layers": 1, "model.moe.router.scorer": "mlp",
                                     "model.moe.router.hidden": 64}),
            ("2 layers, linear routers", {"model.layers": 2, "model.width": 16}),
        )),),
        seeds=2,
        checks=(
            Beats(f"a nonlinear router lets a depth-1 MoE match the depth-2 linear-router MoE "
                  f"(within {MATCH_FACTOR:g}x)", better=mlp,
                  worse=("2 layers, linear routers", {"model": "2 layers, linear routers"}),
                  within={"test_mse": MATCH_FACTOR}),
            Beats("the MLP router beats the linear router at depth 1", better=mlp,
                  worse=("1 layer, linear router", {"model": "1 layer, linear router"})),
        ),
        tables=(Columns("Router comparison (median [min, max] over seeds)",
                        metrics=("test_mse", "routing_purity", "parameters")),),
    )


@register("lowdim-experts")
def lowdim_experts() -> Experiment:
    """Suggestion 3, untested in the paper: experts f_low o Enc with and without reconstruction."""
    plain = ("plain", {"experts": "plain"})
    return Experiment(
        title="Low-dimensional experts f_low o Enc vs plain experts (suggestion 3)",
        claim="Experts that first project to the intrinsic dimension (f_low o Enc) reach the same "
              "error with far fewer parameters when D is large.",
        base=_one_layer_best(TaskSpec(kind="manifold", manifold="circle", D=16, n_charts=4,
                                      embedding="isometry"), 4, 16, 3000),
        axes=(
            Axis.of("D", "task.D", (16, 64, 256)),
            Axis("experts", (
                ("plain", {}),
                ("f_low o Enc", {"model.moe.experts.latent_dim": 2}),
                ("f_low o Enc + recon", {"model.moe.experts.latent_dim": 2,
                                         "model.moe.experts.latent_decoder": True,
                                         "train.aux_weights": {"reconstruction": 0.1}}),
            )),
        ),
        seeds=2,
        checks=tuple(
            Beats(f"{k} experts reach the plain error (within {MATCH_FACTOR:g}x) with fewer "
                  "parameters at the largest D", better=(k, {"experts": k}), worse=plain, at="D",
                  within={"test_mse": MATCH_FACTOR, "parameters": 1.0})
            for k in ("f_low o Enc", "f_low o Enc + recon")),
        tables=(Columns("Test MSE (median [min, max] over seeds) and parameter counts",
                        metrics=("test_mse", "parameters", "active_parameters")),),
        figures=(Curves("", "Test MSE vs ambient dimension D for each kind of "
                        "expert (median over seeds, [min, max] bars)", x="D", series="experts",
                        xlabel="ambient dimension D"),),
    )


@register("intrinsic")
def intrinsic() -> Experiment:
    """Error vs intrinsic d at fixed D, and vs D at fixed d."""
    variants = [(f"d={d} D=32", {"task.manifold": "sphere" if d > 1 else "circle", "task.d": d,
                                 "task.D": 32}) for d in (1, 2, 3)]
    variants += [(f"d=1 D={D}", {"task.manifold": "circle", "task.d": 1, "task.D": D})
                 for D in (4, 16, 64, 256)]
    at_32, at_1 = {"task.D": 32}, {"task.d": 1}
    return Experiment(
        title="The rate is set by the intrinsic dimension d, not by D (Thm 4.8)",
        claim="At fixed D the error grows with d; at fixed d it does not change with D.",
        base=_one_layer_best(TaskSpec(kind="manifold", manifold="circle", D=32, target="ridge",
                                      smoothness=2), 8, 32, 3000),
        axes=(Axis("task", tuple(variants)),),
        seeds=2,
        checks=(
            Slopes("at D = 32 the error grows with the intrinsic d", x="task.d",
                   series=(("D=32", at_32, ">", 0.0),)),
            Flat("at d = 1 the error does not change with D", x="task.D",
                 tolerance=FLAT_TOLERANCE, where=at_1),
        ),
        figures=(
            Curves("d", "Test MSE vs intrinsic dimension d at D = 32 (median over "
                   "seeds, [min, max] bars)", x="task.d", where=at_32,
                   xlabel="intrinsic dimension d", logx=False),
            Curves("D", "Test MSE vs ambient dimension D at d = 1 (median over seeds, "
                   "[min, max] bars)", x="task.D", where=at_1, xlabel="ambient dimension D"),
        ),
    )


@register("constructions")
def constructions() -> Experiment:
    """The hand-built networks of the theorems (no training): sup error against m, with rates."""
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
        title="The theorems' constructions, built by hand: error against expert width m",
        claim="The constructions route every point correctly and their sup error stays below the "
              "theorem's bound, falling at least like m^-(kappa/d min 1/2).",
        base=ConstructionRun(experiment=""),
        # m runs up to 128 so that Table 4's contrast covers every width of the table.
        axes=(Axis("construction", variants),
              Axis.of("m", "construction.m", (4, 8, 16, 32, 64, 128))),
        seeds=1,
        checks=(
            Bounds("routes every point, uses every expert path and stays within the theorem's bound",
                   (("test_sup", "<=", "bound"), ("misrouted", "<=", 0),
                    ("num_paths", ">=", "paths_possible")), per=("construction",)),
            Slopes(f"sup error falls at least like m^{THEOREM_EXPONENT:+.1f}", x="m",
                   series=(("sup error", {}, "ci<=", THEOREM_EXPONENT),), per=("construction",),
                   metric="test_sup"),
        ),
        tables=(Columns("Constructions as built (no training): sup error against the theorem's bound "
                        "computed from the construction's ingredients, MSE, expert paths seen and "
                        "possible, misrouted fraction, parameters",
                        metrics=("test_sup", "bound", "test_mse", "num_paths / paths_possible",
                                 "misrouted", "parameters")),),
        figures=(Curves("rate", "Sup error of the hand-built constructions against the "
                        "expert width m", x="m", series="construction", metric="test_sup",
                        xlabel="expert width m", ylabel="sup error"),),
        notes=("Exact interpolation of smooth 1-D pieces falls like m^-2, faster than the theorems' "
               "worst-case exponent -(kappa/d min 1/2) = -1/2; both are shown.",),
    )


#: The real-data sets, their classes (= experts) and the ambient dimensions D, from the native width
#: (the number of features) up to 1024.
REAL_DATA = (("digits", 10, (64, 256, 1024)), ("wine", 3, (13, 256, 1024)),
             ("breast_cancer", 2, (30, 256, 1024)))
REAL_EXPERT_WIDTH = 32


def matched_dense_width(D: int, m: int, E: int, C: int) -> int:
    """The hidden width of a two-layer dense net R^D -> R^C whose parameters come closest to the
    activated ones of a top-1 MoE with E two-layer experts of width m and a linear router with
    bias: D h + h + h C + C = (D + 1) E + D m + m + m C + C, so h = m + E (D + 1) / (D + 1 + C),
    rounded."""
    return m + round(E * (D + 1) / (D + 1 + C))


def _real_data_tasks() -> tuple:
    """Each data set at each of its ambient dimensions D, with one expert per class and the dense
    net's hidden width matched to the MoE's activated parameters."""
    m = REAL_EXPERT_WIDTH
    return tuple((f"{name} D={D}", {"task.dataset": name, "task.D": D,
                                    "model.moe.num_experts": classes,
                                    "model.dense_hidden": matched_dense_width(D, m, classes,
                                                                              classes)})
                 for name, classes, dims in REAL_DATA for D in dims)


def _real_data_base() -> RunConfig:
    """The real-data study's base run: digits in R^64, the paper's recipe, 1000 steps."""
    m = REAL_EXPERT_WIDTH
    return _with(unnamed(
        task=TaskSpec(kind="real", dataset="digits", D=64, embedding="isometry"),
        model=ModelSpec(layers=1, moe=_moe(10, m), dense_hidden=matched_dense_width(64, m, 10, 10)),
        train=TrainConfig(steps=1000),
    ), PAPER_RECIPE)


@register("real-data")
def real_data() -> Experiment:
    """Thm 4.8 on real data: scikit-learn's digits, wine and breast_cancer embedded isometrically
    into R^D; a 1-layer MoE with one expert per class against a dense net of equal activated
    parameters (:func:`matched_dense_width`)."""
    moe, dense = ("MoE", {"model": "MoE"}), ("dense", {"model": "dense"})
    per = ("task.dataset",)
    return Experiment(
        title="Real data of low intrinsic dimension in R^D: MoE vs dense at equal activated "
              "parameters",
        claim="A shallow MoE's error is set by the intrinsic dimension of the data, not by the "
              "ambient D: on real data embedded isometrically into R^D its test error is flat in "
              "D, and at equal activated parameters it beats a dense net.",
        base=_real_data_base(),
        axes=(Axis("task", _real_data_tasks()),
              Axis("model", (("MoE", {"model.kind": "moe"}), ("dense", {"model.kind": "dense"})))),
        checks=(
            Flat("(a) the MoE's test MSE is flat in D", x="task.D", tolerance=FLAT_TOLERANCE,
                 per=per, where=moe[1]),
            Beats("(b) the MoE beats the dense net at equal activated parameters (largest D)",
                  better=moe, worse=dense, at="task.D", per=per),
            Beats("(c) the MoE is at least as accurate as the dense net (largest D)",
                  better=moe, worse=dense, at="task.D", per=per,
                  within={"test_accuracy": 1.0}, higher=True),
            Flat("(d) contrast: the dense net's test MSE is flat in D as well", x="task.D",
                 tolerance=FLAT_TOLERANCE, per=per, where=dense[1]),
            Flat("(e) each expert's inputs keep the same intrinsic dimension at every D",
                 x="task.D", tolerance=FLAT_TOLERANCE, per=per, where=moe[1],
                 metric="expert_intrinsic_dim"),
        ),
        tables=(Columns("Test error, accuracy and routing (median [min, max] over seeds): "
                        "routing purity = fraction of test points on their class's majority "
                        "expert, path purity = fraction whose class is their expert's majority "
                        "class; intrinsic dimension (Levina-Bickel, k = 10) of the training "
                        "inputs and of those each expert receives (point-weighted mean)",
                        metrics=("test_mse", "test_accuracy", "routing_purity", "path_purity",
                                 "input_intrinsic_dim", "expert_intrinsic_dim",
                                 "active_parameters")),),
        figures=(
            Curves("mse-vs-D", "Test MSE vs ambient dimension D, MoE vs dense at equal "
                   "activated parameters (median over seeds, [min, max] bars)", x="task.D",
                   series="model", panels="task.dataset", xlabel="ambient dimension D"),
            Curves("accuracy-vs-D", "Test accuracy vs ambient dimension D (median over seeds, "
                   "[min, max] bars)", x="task.D", series="model", panels="task.dataset",
                   metric="test_accuracy", ylabel="test accuracy", logy=False,
                   xlabel="ambient dimension D"),
            Curves("expert-dims", "Intrinsic dimension of the inputs each expert receives "
                   "(point-weighted mean over experts) vs D", x="task.D", series="task.dataset",
                   where=moe[1], metric="expert_intrinsic_dim", ylabel="intrinsic dimension",
                   logy=False, xlabel="ambient dimension D"),
        ),
        notes=("Data: scikit-learn's bundled copies of UCI data sets (nothing is downloaded); "
               "features standardised on the training split, a stratified 75/25 split fixed by "
               "task.split_seed, a random isometry into R^D fixed by task.task_seed; targets are "
               "one-hot classes under the squared loss, and the predicted class is the largest "
               "output. Seeds change the initialisation and the batches only.",),
    )


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``; a ValueError lists the known names."""
    try:
        return EXPERIMENTS[name]()
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}") from None
