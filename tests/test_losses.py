"""moelab.losses: hand-computed values, normalisations, gradients, Monte-Carlo, bad input."""

import math

import pytest
import torch

from moelab.losses import (
    cv_squared,
    importance_loss,
    load_balancing_loss,
    load_loss,
    noisy_topk_load,
    router_z_loss,
)

F64 = torch.float64

# Standard normal CDF values from a table: Phi(1), Phi(-1), Phi(-2), Phi(-3).
PHI_1 = 0.8413447460685429
PHI_M1 = 0.15865525393145707
PHI_M2 = 0.02275013194817921
PHI_M3 = 0.0013498980316301035

# 4 tokens, 3 experts. Column means: P = [1.4/4, 1.4/4, 1.2/4] = [0.35, 0.35, 0.30].
PROBS_4x3 = torch.tensor(
    [
        [0.5, 0.3, 0.2],
        [0.6, 0.2, 0.2],
        [0.1, 0.7, 0.2],
        [0.2, 0.2, 0.6],
    ],
    dtype=F64,
)


# ---------------------------------------------------------------- load_balancing_loss


def test_load_balancing_hand_value_top1():
    ids = torch.tensor([[0], [0], [1], [2]])
    # f = [2, 1, 1] / 4 = [0.5, 0.25, 0.25]
    # sum f*P = 0.5*0.35 + 0.25*0.35 + 0.25*0.30 = 0.3375;  * E=3 -> 1.0125
    loss = load_balancing_loss(PROBS_4x3, ids, 3)
    assert loss.item() == pytest.approx(1.0125, abs=1e-12)


def test_load_balancing_hand_value_top2():
    ids = torch.tensor([[0, 1], [0, 2], [1, 2], [2, 1]])
    # counts = [2, 3, 3] over T*K = 8 assignments -> f = [2/8, 3/8, 3/8]
    # sum f*P = (2*0.35 + 3*0.35 + 3*0.30) / 8 = 2.65 / 8 = 0.33125;  * 3 -> 0.99375
    loss = load_balancing_loss(PROBS_4x3, ids, 3)
    assert loss.item() == pytest.approx(0.99375, abs=1e-12)


def test_load_balancing_mask_excludes_assignments():
    ids = torch.tensor([[0, 1], [0, 2], [1, 2], [2, 1]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [False, True]])
    # the dropped assignment (token 3, slot 0) went to expert 2: counts = [2, 3, 2], still over 8
    # sum f*P = (2*0.35 + 3*0.35 + 2*0.30) / 8 = 2.35 / 8 = 0.29375;  * 3 -> 0.88125
    loss = load_balancing_loss(PROBS_4x3, ids, 3, dispatch_mask_TK=mask)
    assert loss.item() == pytest.approx(0.88125, abs=1e-12)


def test_load_balancing_all_true_mask_equals_no_mask():
    ids = torch.tensor([[0, 1], [0, 2], [1, 2], [2, 1]])
    mask = torch.ones(4, 2, dtype=torch.bool)
    with_mask = load_balancing_loss(PROBS_4x3, ids, 3, dispatch_mask_TK=mask)
    assert torch.equal(with_mask, load_balancing_loss(PROBS_4x3, ids, 3))


def test_load_balancing_balanced_top1_is_one():
    # each token sends probability 1 to a different expert: f = P = 1/4 for every expert
    probs = torch.eye(4, dtype=F64)
    ids = torch.arange(4).unsqueeze(1)
    assert load_balancing_loss(probs, ids, 4).item() == pytest.approx(1.0, abs=1e-12)


def test_load_balancing_balanced_top2_is_one():
    probs = torch.full((4, 4), 0.25, dtype=F64)
    ids = torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3]])  # every expert gets 2 of the 8 slots
    assert load_balancing_loss(probs, ids, 4).item() == pytest.approx(1.0, abs=1e-12)


def test_load_balancing_collapsed_is_num_experts():
    probs = torch.tensor([[1.0, 0.0, 0.0]] * 4, dtype=F64)
    ids = torch.zeros(4, 1, dtype=torch.long)
    assert load_balancing_loss(probs, ids, 3).item() == pytest.approx(3.0, abs=1e-12)


def test_load_balancing_is_hf_mixtral_over_k():
    # Hugging Face Mixtral: mean of the [T, K, E] one-hot over tokens, summed against P, times E.
    ids = torch.tensor([[0, 1], [0, 2], [1, 2], [2, 1]])
    tokens_per_expert_KE = torch.nn.functional.one_hot(ids, 3).to(F64).mean(dim=0)
    hf = 3 * (tokens_per_expert_KE * PROBS_4x3.mean(dim=0)).sum()
    assert load_balancing_loss(PROBS_4x3, ids, 3).item() == pytest.approx(hf.item() / 2, abs=1e-12)


def test_load_balancing_gradient_reaches_probs_only_through_p():
    probs = PROBS_4x3.clone().requires_grad_(True)
    ids = torch.tensor([[0], [0], [1], [2]])
    load_balancing_loss(probs, ids, 3).backward()
    # d/dprobs[t, i] of E * sum_i f_i * mean_t probs[t, i] = E * f_i / T, the same for every token
    expected_row = 3 * torch.tensor([0.5, 0.25, 0.25], dtype=F64) / 4
    torch.testing.assert_close(probs.grad, expected_row.expand(4, 3))


def test_load_balancing_gradient_through_softmax_is_finite_and_nonzero():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    probs = logits.softmax(dim=-1)
    ids = probs.topk(2, dim=-1).indices
    load_balancing_loss(probs, ids, 4).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


# ---------------------------------------------------------------- router_z_loss


def test_router_z_loss_hand_value():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=F64)
    # logsumexp: row 0 = log 2, row 1 = log(3 + 1) = 2 log 2
    # mean of squares = ((log 2)^2 + 4 (log 2)^2) / 2 = 2.5 (log 2)^2
    expected = 2.5 * math.log(2.0) ** 2
    assert router_z_loss(logits).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("E", [1, 2, 5])
def test_router_z_loss_of_zero_logits_is_log_e_squared(E):
    assert router_z_loss(torch.zeros(4, E, dtype=F64)).item() == pytest.approx(math.log(E) ** 2)


def test_router_z_loss_computes_low_precision_in_float32():
    logits = torch.tensor([[10.0, 9.0, 8.0], [1.0, 2.0, 3.0]])
    out = router_z_loss(logits.to(torch.bfloat16))
    assert out.dtype == torch.float32
    # the bf16 values above are exact, so only the arithmetic precision differs
    assert out.item() == pytest.approx(router_z_loss(logits.double()).item(), rel=1e-6)


# ---------------------------------------------------------------- cv_squared, importance_loss


def test_cv_squared_uses_population_variance():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=F64)
    # mean = 3; population variance = (4 + 1 + 0 + 9) / 4 = 3.5; 3.5 / 9 = 0.3888...
    # (the unbiased variance 14/3 would give 0.5185...)
    assert cv_squared(x, eps=0.0).item() == pytest.approx(3.5 / 9.0, abs=1e-12)


def test_cv_squared_of_constant_vector_is_zero():
    assert cv_squared(torch.full((5,), 2.5)).item() == 0.0


def test_cv_squared_of_length_one_is_zero():
    assert cv_squared(torch.tensor([7.0])).item() == 0.0


def test_cv_squared_of_zero_vector_is_zero():
    assert cv_squared(torch.zeros(3)).item() == 0.0


def test_importance_loss_hand_value():
    gates = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.0, 0.6], [0.7, 0.0]], dtype=F64)
    # Importance = column sums = [2.4, 0.6]; mean 1.5; population variance = 0.9^2 = 0.81
    # CV^2 = 0.81 / 1.5^2 = 0.36 (rel tolerance: cv_squared's eps=1e-10 sits in the denominator)
    assert importance_loss(gates).item() == pytest.approx(0.36, rel=1e-9)


def test_importance_loss_balanced_is_zero():
    gates = torch.tensor([[0.7, 0.0], [0.0, 0.7], [0.4, 0.0], [0.0, 0.4]])
    assert importance_loss(gates).item() == 0.0


# ---------------------------------------------------------------- noisy_topk_load, load_loss


def test_noisy_topk_load_hand_value_k1():
    clean = torch.tensor([[1.5, 1.0, 0.5], [0.0, 2.0, 1.0]], dtype=F64)
    noisy = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], dtype=F64)
    std = torch.tensor([[0.5, 1.0, 0.5], [1.0, 1.0, 1.0]], dtype=F64)
    # k = 1, so the threshold is the largest noisy logit among the other experts.
    # token 0: e0 vs max(1, 0) = 1 -> Phi((1.5 - 1) / 0.5) = Phi(1)
    #          e1 vs max(2, 0) = 2 -> Phi((1.0 - 2) / 1.0) = Phi(-1)
    #          e2 vs max(2, 1) = 2 -> Phi((0.5 - 2) / 0.5) = Phi(-3)
    # token 1: e0 vs max(3, 1) = 3 -> Phi((0 - 3) / 1) = Phi(-3)
    #          e1 vs max(0, 1) = 1 -> Phi((2 - 1) / 1) = Phi(1)
    #          e2 vs max(0, 3) = 3 -> Phi((1 - 3) / 1) = Phi(-2)
    expected = torch.tensor([PHI_1 + PHI_M3, PHI_M1 + PHI_1, PHI_M3 + PHI_M2], dtype=F64)
    torch.testing.assert_close(noisy_topk_load(clean, noisy, std, 1), expected)


def test_noisy_topk_load_hand_value_k2():
    clean = torch.tensor([[2.0, 1.0, 1.0]], dtype=F64)
    noisy = torch.tensor([[3.0, 2.0, 1.0]], dtype=F64)
    std = torch.tensor([[1.0, 1.0, 0.5]], dtype=F64)
    # k = 2: threshold = second largest of the other two noisy logits.
    # e0: others {2, 1} -> 1 -> Phi((2 - 1) / 1)   = Phi(1)
    # e1: others {3, 1} -> 1 -> Phi((1 - 1) / 1)   = Phi(0) = 0.5
    # e2: others {3, 2} -> 2 -> Phi((1 - 2) / 0.5) = Phi(-2)
    expected = torch.tensor([PHI_1, 0.5, PHI_M2], dtype=F64)
    torch.testing.assert_close(noisy_topk_load(clean, noisy, std, 2), expected)


def test_noisy_topk_load_with_tied_noisy_logits():
    clean = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    noisy = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    std = torch.ones(1, 3, dtype=F64)
    # k = 1: for e0 the others are {1, 0}, so the threshold is 1 (the tie), likewise for e1;
    # e2: others {1, 1} -> 1.  P = [Phi(0), Phi(0), Phi(-1)]
    expected = torch.tensor([0.5, 0.5, PHI_M1], dtype=F64)
    torch.testing.assert_close(noisy_topk_load(clean, noisy, std, 1), expected)


def test_load_loss_hand_values():
    std = torch.ones(2, 2, dtype=F64)
    # one token per expert, each 1 above the other: Load = [Phi(1) + Phi(-1)] * 2 = [1, 1] -> 0
    balanced = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    assert load_loss(balanced, balanced, std, 1).item() == pytest.approx(0.0, abs=1e-12)
    # both tokens prefer expert 0: Load = [2 Phi(1), 2 Phi(-1)], mean 1,
    # population variance = (2 Phi(1) - 1)^2, so CV^2 = (2 Phi(1) - 1)^2 = 0.46606...
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64)
    expected = (2 * PHI_1 - 1) ** 2
    assert load_loss(collapsed, collapsed, std, 1).item() == pytest.approx(expected, rel=1e-9)


def _noisy_router(T, E, seed):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(T, E, generator=g, dtype=F64)
    std = 0.5 + torch.rand(T, E, generator=g, dtype=F64)
    noisy = clean + std * torch.randn(T, E, generator=g, dtype=F64)
    return clean, noisy, std


def test_noisy_topk_load_matches_monte_carlo_with_own_noise_redrawn():
    # P(x, i) (Eq. 8): redraw expert i's noise, keep the others' noisy logits, is i in the top k?
    T, E, k, N = 3, 4, 2, 20_000
    clean, noisy, std = _noisy_router(T, E, seed=1)
    g = torch.Generator().manual_seed(2)
    freq_TE = torch.empty(T, E, dtype=F64)
    for i in range(E):
        rows_NTE = noisy.expand(N, T, E).clone()
        z_NT = torch.randn(N, T, generator=g, dtype=F64)
        rows_NTE[:, :, i] = clean[:, i] + std[:, i] * z_NT
        chosen_NT = (rows_NTE.topk(k, dim=-1).indices == i).any(dim=-1)
        freq_TE[:, i] = chosen_NT.to(F64).mean(dim=0)
    prob_TE = torch.stack(
        [noisy_topk_load(clean[t : t + 1], noisy[t : t + 1], std[t : t + 1], k) for t in range(T)]
    )
    # binomial standard error <= 0.5 / sqrt(N) ~ 0.0035
    torch.testing.assert_close(prob_TE, freq_TE, atol=0.02, rtol=0)


def test_noisy_topk_load_averages_to_selection_probability_under_fresh_noise():
    # The threshold ignores expert i's own noise, so averaging P(x, i) over noisy draws gives the
    # probability that i is selected when all the noise is fresh.
    E, k, M = 4, 2, 20_000
    clean_1E = torch.tensor([[0.8, 0.3, 0.0, -0.5]], dtype=F64)
    std_1E = torch.tensor([[0.6, 1.0, 0.8, 1.2]], dtype=F64)
    g = torch.Generator().manual_seed(3)
    noisy_ME = clean_1E + std_1E * torch.randn(M, E, generator=g, dtype=F64)
    estimate_E = noisy_topk_load(clean_1E.expand(M, E), noisy_ME, std_1E.expand(M, E), k) / M
    fresh_ME = clean_1E + std_1E * torch.randn(M, E, generator=g, dtype=F64)
    selected_E = torch.zeros(M, E, dtype=F64).scatter_(1, fresh_ME.topk(k, dim=-1).indices, 1.0)
    torch.testing.assert_close(estimate_E, selected_E.mean(dim=0), atol=0.02, rtol=0)
    assert estimate_E.sum().item() == pytest.approx(k, abs=0.02)


def test_noisy_topk_load_gradcheck_in_clean_logits_and_std():
    clean, noisy, std = _noisy_router(3, 4, seed=4)
    clean.requires_grad_(True)
    std.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, s: noisy_topk_load(c, noisy, s, 2), (clean, std))


def test_load_loss_gradients_flow_to_clean_logits_and_noise_std():
    g = torch.Generator().manual_seed(5)
    clean = torch.randn(8, 4, generator=g, requires_grad=True)
    raw_std = torch.randn(8, 4, generator=g, requires_grad=True)
    std = torch.nn.functional.softplus(raw_std) + 1e-2
    noisy = clean + std * torch.randn(8, 4, generator=g)
    load_loss(clean, noisy, std, 2).backward()
    for grad in (clean.grad, raw_std.grad):
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


# ---------------------------------------------------------------- bad input

IDS_4x1 = torch.tensor([[0], [1], [2], [0]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(probs_TE=PROBS_4x3[0]), ValueError, "probs_TE must be 2-D"),
        (dict(probs_TE=PROBS_4x3.long()), TypeError, "probs_TE must have a float"),
        (dict(probs_TE=torch.ones(0, 3)), ValueError, "probs_TE needs at least one token"),
        (dict(num_experts=0), ValueError, "num_experts must be >= 1, got 0"),
        (dict(num_experts=3.0), TypeError, "num_experts must be an int"),
        (dict(num_experts=4), ValueError, "probs_TE must have num_experts=4 columns"),
        (dict(expert_ids_TK=torch.tensor([0, 1, 2, 0])), ValueError, "expert_ids_TK must be 2-D"),
        (dict(expert_ids_TK=IDS_4x1.double()), TypeError, "expert_ids_TK must have an integer"),
        (dict(expert_ids_TK=IDS_4x1[:3]), ValueError, "expert_ids_TK must have T=4 rows"),
        (dict(expert_ids_TK=IDS_4x1 + 1), ValueError, r"0\.\.2; found id 3"),
        (dict(expert_ids_TK=IDS_4x1 - 1), ValueError, r"0\.\.2; found id -1"),
        (dict(dispatch_mask_TK=torch.ones(4, 1)), TypeError, "dispatch_mask_TK must be a bool"),
        (
            dict(dispatch_mask_TK=torch.ones(4, 2, dtype=torch.bool)),
            ValueError,
            "dispatch_mask_TK must have the shape",
        ),
    ],
)
def test_load_balancing_rejects(kwargs, error, match):
    args = dict(probs_TE=PROBS_4x3, expert_ids_TK=IDS_4x1, num_experts=3) | kwargs
    with pytest.raises(error, match=match):
        load_balancing_loss(**args)


def test_router_z_loss_rejects_1d_logits():
    with pytest.raises(ValueError, match=r"logits_TE must be 2-D \[T, E\], got shape \(3,\)"):
        router_z_loss(torch.zeros(3))


def test_router_z_loss_rejects_integer_logits():
    with pytest.raises(TypeError, match="logits_TE must have a floating dtype, got torch.int64"):
        router_z_loss(torch.zeros(2, 3, dtype=torch.long))


def test_cv_squared_rejects_2d_input():
    with pytest.raises(ValueError, match=r"x must be a 1-D tensor .*got shape \(2, 2\)"):
        cv_squared(torch.ones(2, 2))


def test_cv_squared_rejects_empty_input():
    with pytest.raises(ValueError, match=r"at least one entry, got shape \(0,\)"):
        cv_squared(torch.ones(0))


def test_cv_squared_rejects_negative_eps():
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -1.0"):
        cv_squared(torch.ones(3), eps=-1.0)


def test_importance_loss_rejects_1d_gates():
    with pytest.raises(ValueError, match="gates_TE must be 2-D"):
        importance_loss(torch.ones(4))


CLEAN_2x3, NOISY_2x3, STD_2x3 = torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((CLEAN_2x3, NOISY_2x3, STD_2x3, 0), ValueError, r"k must lie in 1\.\.E-1 = 1\.\.2.*k=0"),
        ((CLEAN_2x3, NOISY_2x3, STD_2x3, 3), ValueError, r"k must lie in 1\.\.E-1 = 1\.\.2.*k=3"),
        ((CLEAN_2x3, NOISY_2x3, STD_2x3, 1.0), TypeError, "k must be an int, got 1.0"),
        ((CLEAN_2x3, NOISY_2x3, STD_2x3, True), TypeError, "k must be an int, got True"),
        ((CLEAN_2x3[0], NOISY_2x3, STD_2x3, 1), ValueError, "clean_logits_TE must be 2-D"),
        ((CLEAN_2x3, NOISY_2x3[:1], STD_2x3, 1), ValueError, r"noisy_logits_TE must .*\(1, 3\)"),
        ((CLEAN_2x3, NOISY_2x3, STD_2x3[:, :2], 1), ValueError, r"noise_std_TE must .*\(2, 2\)"),
        ((CLEAN_2x3.long(), NOISY_2x3, STD_2x3, 1), TypeError, "clean_logits_TE must have a float"),
        ((CLEAN_2x3, NOISY_2x3.long(), STD_2x3, 1), TypeError, "noisy_logits_TE must have a float"),
        ((CLEAN_2x3, NOISY_2x3, STD_2x3 - 1, 1), ValueError, "strictly positive; found 0.0"),
    ],
)
def test_noisy_topk_load_rejects(args, error, match):
    with pytest.raises(error, match=match):
        noisy_topk_load(*args)


def test_load_loss_rejects_k_equal_to_num_experts():
    with pytest.raises(ValueError, match="k must lie in 1..E-1"):
        load_loss(CLEAN_2x3, NOISY_2x3, STD_2x3, 3)
