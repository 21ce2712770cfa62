"""Batched training: each member of a stacked batch follows the same run trained alone."""

import pytest
import torch

from moelab.experiments.config import apply_overrides
from moelab.experiments.execute import _prepare, constant_inputs
from moelab.experiments.registry import table3, table4
from moelab.layers import DeepMoE, ExpertConfig, MoEConfig, RouterConfig
from moelab.training import MethodConfig, TrainConfig, batched, train
from moelab.training.batched import Member, StackedMoE, alone_reason, train_batched

STEPS = 150
#: Members agree with their solo runs to float32 rounding (~1e-7 relative here); a routing
#: decision flipped by rounding could move one member further, but not in these seeded cases.
PARAM_RTOL, MSE_RTOL = 1e-5, 1e-4


pytestmark = pytest.mark.filterwarnings("ignore::moelab.training.loop.RouterGradientWarning")


def _runs(experiment, where, seeds=1):
    overrides = {"train.steps": STEPS, "train.test_size": 256, "train.log_every": 50}
    return [r for r in experiment.runs(seeds=seeds, overrides=overrides)
            if all(r.labels[k] in v for k, v in where.items())]


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _members(runs, *, skip_zero_inputs=True):
    members = []
    for run in runs:
        built, model = _prepare(run)
        members.append(Member(model, built.task, run.train, run.seed,
                              stream=(repr(run.task), run.seed),
                              inputs=constant_inputs(built) if skip_zero_inputs else None))
    return members


def _check_against_solo(runs, **kw):
    members = _members(runs, **kw)
    results = train_batched(members)
    for run, member, result in zip(runs, members, results, strict=True):
        built, model = _prepare(run)
        solo = train(model, built.task, run.train, seed=run.seed, progress=False)
        a, b = _flat(model), _flat(member.model)
        assert (a - b).norm() <= PARAM_RTOL * a.norm(), run.labels
        assert result.final.mse == pytest.approx(solo.final.mse, rel=MSE_RTOL)
        assert result.final.sup_error == pytest.approx(solo.final.sup_error, rel=MSE_RTOL)
        assert [row["step"] for row in result.history] == [row["step"] for row in solo.history]
        for got, want in zip(result.history, solo.history, strict=True):
            assert got.keys() == want.keys() and got["lr"] == want["lr"]
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-7), key
    return members, results


@pytest.mark.parametrize("recipe", ["paper", "best"])
def test_table3_members_with_padded_D_match_their_solo_runs(recipe):
    # D = 16 and 32 in one batch: the D = 16 members are zero-padded (and the padding never
    # trains); the manifold's zero coordinates are left out of the stacked model.
    runs = _runs(table3(), {"D": ("16", "32"), "recipe": (recipe,)})
    assert len(runs) == 2
    _check_against_solo(runs)


def test_padding_every_input_coordinate_matches_too():
    runs = _runs(table3(), {"D": ("16", "32"), "recipe": ("paper",)})
    _check_against_solo(runs, skip_zero_inputs=False)


@pytest.mark.parametrize("model", ["2-3-MoE", "1-6-MoE"])
def test_table4_members_with_every_output_match_their_solo_runs(model):
    # vector (2 outputs) beside sum and product (1 output, padded and masked); both recipes'
    # learning rates and weightings differ per member in one batch
    runs = _runs(table4(), {"model": (model,), "m": ("16",), "recipe": ("best",)})
    runs += _runs(table4(), {"model": (model,), "m": ("16",), "recipe": ("paper",),
                             "output": ("sum",)})
    assert {r.task.output for r in runs} == {"vector", "sum", "product"}
    _check_against_solo(runs)


def test_a_batch_is_bit_reproducible():
    runs = _runs(table4(), {"model": ("2-3-MoE",), "m": ("16",), "recipe": ("paper",)}, seeds=2)
    first, again = _members(runs), _members(runs)
    a, b = train_batched(first), train_batched(again)
    for x, y, ra, rb in zip(first, again, a, b, strict=True):
        assert torch.equal(_flat(x.model), _flat(y.model))
        assert ra.history == rb.history and ra.evals == rb.evals


def test_unstack_returns_the_weights_it_stacked():
    models = [DeepMoE([3, 4, 2]), DeepMoE([5, 4, 1])]
    stacked = StackedMoE(models)
    copies = [DeepMoE([3, 4, 2]), DeepMoE([5, 4, 1])]
    for n, copy in enumerate(copies):
        stacked.unstack(n, copy)
        assert torch.equal(_flat(copy), _flat(models[n]))


def test_members_that_cannot_be_stacked_are_named():
    config = TrainConfig(steps=5)
    cases = {
        "a capacity limit": MoEConfig(router=RouterConfig(capacity_factor=1.0)),
        "a balance bias": MoEConfig(router=RouterConfig(balance_bias=True)),
        "router noise 'jitter'": MoEConfig(router=RouterConfig(noise="jitter")),
        "routing is not token-choice top-1": MoEConfig(num_experts=4,
                                                       router=RouterConfig(top_k=2)),
    }
    for why, cfg in cases.items():
        model = DeepMoE([3, 2], cfg)
        assert alone_reason(model, config) == why
        with pytest.raises(ValueError, match="cannot be batched"):
            train_batched([Member(model, lambda n, g: (torch.rand(n, 3, generator=g),
                                                       torch.rand(n, 2, generator=g)),
                                  config, 0)])
    aux = TrainConfig(steps=5, aux_weights={"load_balance": 0.01})
    assert alone_reason(DeepMoE([3, 2]), aux) == "auxiliary losses"
    streamed = TrainConfig(steps=5, jsonl_path="rows.jsonl")
    assert alone_reason(DeepMoE([3, 2]), streamed) == "streamed rows"
    method = TrainConfig(steps=5, method=MethodConfig(name="anneal"))
    assert alone_reason(DeepMoE([3, 2]), method) == "training method 'anneal'"
    assert alone_reason(DeepMoE([3, 2], residual=True), config) is not None


def test_members_must_share_the_step_count():
    def sampler(n, g):
        return torch.rand(n, 3, generator=g), torch.rand(n, 2, generator=g)

    members = [Member(DeepMoE([3, 2]), sampler, TrainConfig(steps=steps), 0) for steps in (5, 6)]
    with pytest.raises(ValueError, match="train.steps"):
        train_batched(members)


def test_per_member_gradient_clipping_and_learning_rates_match_solo_runs():
    runs = _runs(table3(), {"D": ("16",), "recipe": ("paper",)}, seeds=2)
    runs = [apply_overrides(r, {"train.grad_clip": clip, "train.lr": lr})
            for r, clip, lr in zip(runs, (0.05, None), (3e-3, 1e-3), strict=True)]
    _check_against_solo(runs)


def test_a_batch_needs_members():
    with pytest.raises(ValueError, match="at least one member"):
        train_batched([])


class _MapsNode(torch.autograd.Function):
    """The expert maps as an autograd node of their own, as StackedMoE had them before."""

    @staticmethod
    def forward(ctx, x, w1, w2, b2):
        y, a = batched._maps_forward(x, w1, w2, b2)
        ctx.save_for_backward(x, w1, w2, a)
        return y

    @staticmethod
    def backward(ctx, g_y):
        return batched._maps_backward(g_y, *ctx.saved_tensors, ctx.needs_input_grad[0])


def _forward_op_by_op(stacked, flat, x):
    """StackedMoE's forward pass written op by op, autograd doing the backward pass: the
    reference for its one-node _Stack (the same arithmetic, with the switch weight gathered)."""
    N, _, B = x.shape
    h = x
    for (wr, br, w1, w2, b2), switch in zip(stacked.parameter_views(flat), stacked.switch_masks,
                                            strict=True):
        with torch.set_grad_enabled(switch is not None):
            probs = torch.baddbmm(br[:, :, None], wr, h).softmax(1)
        ids = probs.detach().topk(1, dim=1, sorted=True).indices
        onehot = torch.zeros_like(probs).scatter_(1, ids, 1.0)
        w_NEB = onehot
        if switch is not None:
            picked = probs.gather(1, ids)
            weight = torch.where(switch, picked, torch.ones_like(picked))
            w_NEB = torch.zeros_like(probs).scatter(1, ids, weight)
        h1 = torch.cat([h, h.new_ones(N, 1, B)], 1)
        h_exp = (onehot[:, :, None, :] * h1[:, None]).view(N, -1, B)
        y_all = _MapsNode.apply(h_exp, w1, w2, b2)
        h = (y_all.view(N, wr.shape[1], -1, B) * w_NEB[:, :, None, :]).sum(1)
    return h


@pytest.mark.parametrize("model", ["2-3-MoE", "1-6-MoE"])
@pytest.mark.parametrize("x_grad", [False, True], ids=["data", "x-needs-grad"])
def test_the_stacked_backward_is_autograds_bit_for_bit(model, x_grad):
    runs = _runs(table4(), {"model": (model,), "m": ("16",), "output": ("vector", "sum"),
                            "recipe": ("paper", "best")})
    members = _members(runs)
    stacked = StackedMoE([m.model for m in members], [m.inputs for m in members])
    assert stacked.switch[:, 0].any() and not stacked.switch[:, 0].all()  # mixed weightings
    gen = torch.Generator().manual_seed(0)
    N, B = stacked.n, 128
    x = (3 * torch.rand(N, stacked.widths[0], B, generator=gen)).requires_grad_(x_grad)
    g_y = torch.randn(N, stacked.widths[-1], B, generator=gen)
    want = _forward_op_by_op(stacked, stacked.flat, x)
    got, routes = stacked.forward(x)
    assert torch.equal(got, want)
    assert not any(t.requires_grad for route in routes for t in route)
    inputs = [stacked.flat, x] if x_grad else [stacked.flat]
    for a, b in zip(torch.autograd.grad(got, inputs, g_y), torch.autograd.grad(want, inputs, g_y),
                    strict=True):
        assert torch.equal(a, b)


def test_the_stacked_gradients_match_finite_differences():
    config = [MoEConfig(num_experts=2, router=RouterConfig(weighting=w),
                        experts=ExpertConfig(hidden=3)) for w in ("switch", "paper")]
    stacked = StackedMoE([DeepMoE([2, 3, 2], config), DeepMoE([2, 3, 1], config[::-1])])
    assert stacked.switch_masks[0] is not None and stacked.switch_masks[1] is not None
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    flat = stacked.flat.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda f, x: batched._Stack.apply(x, f, stacked, None)[0],
                                    (flat, x))


def test_buffers_reused_from_step_to_step_give_the_same_bits():
    runs = _runs(table4(), {"model": ("2-3-MoE",), "m": ("16",), "output": ("vector",)})
    members = _members(runs)
    stacked = StackedMoE([m.model for m in members], [m.inputs for m in members])
    gen = torch.Generator().manual_seed(0)
    workspace = {}
    for _ in range(3):  # steps: each forward pass's backward pass runs before the next
        x = 3 * torch.rand(stacked.n, stacked.widths[0], 128, generator=gen)
        g_y = torch.randn(stacked.n, stacked.widths[-1], 128, generator=gen)
        fresh, _ = stacked.forward(x)
        (want,) = torch.autograd.grad(fresh, stacked.flat, g_y)
        reused, _ = stacked.forward(x, workspace)
        (got,) = torch.autograd.grad(reused, stacked.flat, g_y)
        assert torch.equal(reused, fresh) and torch.equal(got, want)
        with torch.no_grad():
            stacked.flat.sub_(1e-2 * got)
    assert workspace  # the hidden units were kept


@pytest.mark.slow
def test_the_compiled_loss_trains_as_the_eager_one(monkeypatch):
    import functools

    runs = _runs(table4(), {"model": ("2-3-MoE",), "m": ("16",), "recipe": ("paper", "best"),
                            "output": ("sum",)})
    runs = [apply_overrides(r, {"train.steps": 20, "train.log_every": 10}) for r in runs]
    eager = train_batched(_members(runs))
    monkeypatch.setenv("MOELAB_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled = train_batched(_members(runs))
    for a, b in zip(eager, compiled, strict=True):
        assert b.final.mse == pytest.approx(a.final.mse, rel=1e-5)
        assert [r["loss"] for r in b.history] == pytest.approx([r["loss"] for r in a.history],
                                                                rel=1e-5)


def test_a_failing_compile_falls_back_to_eager_and_says_so(monkeypatch):
    runs = _runs(table3(), {"D": ("16", "32"), "recipe": ("paper",)})
    runs = [apply_overrides(r, {"train.steps": 3, "train.log_every": 1}) for r in runs]
    eager = train_batched(_members(runs))

    def broken(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setenv("MOELAB_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .RuntimeError: no C.. "
                                            "compiler.; training eagerly"):
        fallback = train_batched(_members(runs))
    for a, b in zip(eager, fallback, strict=True):
        assert b.final.mse == a.final.mse and b.history == a.history


def test_given_test_sets_are_checked_like_the_loops():
    runs = _runs(table3(), {"D": ("16", "32"), "recipe": ("paper",)})
    runs = [apply_overrides(r, {"train.steps": 2}) for r in runs]
    x, y = torch.zeros(8, 16), torch.zeros(8, 1)
    with pytest.raises(ValueError, match=r"one test set per member: 2 members, 1 test set\(s\)"):
        train_batched(_members(runs), test_sets=[(x, y)])
    with pytest.raises(TypeError, match="test_set is"):
        train_batched(_members(runs), test_sets=[(x, y), x])
    with pytest.raises(ValueError, match="same number of rows"):
        train_batched(_members(runs), test_sets=[(x, y), (x, y[:3])])


@pytest.mark.parametrize("bad", ["x", "y"])
def test_data_of_the_wrong_width_is_refused_before_training(bad):
    def sampler(n, gen):
        x = torch.rand(n, 5 if bad == "x" else 3, generator=gen)
        return x, torch.zeros(n, 2 if bad == "y" else 1)

    config = TrainConfig(steps=3, test_size=32)
    members = [Member(DeepMoE([3, 4, 1]), sampler, config, seed) for seed in (0, 1)]
    want = "x of shape \\(32, 5\\)" if bad == "x" else "y of shape \\(32, 2\\)"
    with pytest.raises(ValueError, match=f"the sampler returned {want}, but member 0's model"):
        train_batched(members)
    # a target of shape (n,) matches an output width of 1, as in the loop
    flat = [Member(DeepMoE([3, 4, 1]), lambda n, g: (torch.rand(n, 3, generator=g),
                                                     torch.zeros(n)), config, 0)] * 2
    assert len(train_batched(flat)) == 2
