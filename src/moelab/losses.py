"""Auxiliary losses for mixture-of-experts routers, as pure functions of tensors.

Shape legend for the suffixes on tensor names:
    T  tokens (a flattened batch; every function needs T >= 1)
    E  experts
    K  routing slots per token (the k of top-k)

Every function here is stateless: it reads its arguments, returns a tensor, and leaves the
weighting (the alpha or w_* coefficient each paper tunes by hand) to the caller. Each docstring
states the value the loss takes under perfectly balanced routing, so that logged numbers can be
read without the code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moelab._validation import floating_tensor, integer, positive_float, positive_int, token_matrix

__all__ = [
    "cv_squared",
    "importance_loss",
    "load_balancing_loss",
    "load_loss",
    "noisy_topk_load",
    "router_z_loss",
]


def load_balancing_loss(
    probs_TE: Tensor,
    expert_ids_TK: Tensor,
    num_experts: int,
    *,
    dispatch_mask_TK: Tensor | None = None,
) -> Tensor:
    """Switch Transformer load-balancing loss ``E * sum_i f_i * P_i``.

    Fedus et al. 2021, "Switch Transformers", Eq. 4-6 (the same product appears as ``l_aux`` in
    GShard, Lepikhin et al. 2020, Algorithm 1, up to a constant factor).

    - ``f_i`` is the fraction of the T*K (token, slot) assignments routed to expert ``i``: the count
      of kept assignments with ``expert_ids_TK == i`` divided by ``T * K``.
    - ``P_i = mean_t probs_TE[t, i]``, the mean router probability (softmax over all E experts).

    Normalisation: dividing by ``T * K`` (not ``T``) makes ``f`` a distribution over experts for any
    K, so perfectly balanced routing (``f_i = P_i = 1/E``) gives exactly 1 whatever K is, and
    routing every token to one expert with probability 1 gives E. The value 1 is the balanced value,
    not a lower bound. Hugging Face's Mixtral ``load_balancing_loss_func`` averages the one-hot
    assignments over tokens only (per slot), so its ``f`` sums to K and its value is K times this
    one (K at balance); multiply by K to compare. (It also re-derives the top-k from the
    probabilities, where this function takes the ids the router actually used.)

    ``dispatch_mask_TK`` drops assignments from the count (e.g. those over an expert's capacity)
    while keeping ``T * K`` as the denominator, as GShard's ``c_e / S`` does; an all-True mask is
    the same as no mask. Switch's reference code computes ``f`` before capacity truncation, which is
    what calling without a mask gives.

    ``f`` is built from integer counts and carries no gradient; the gradient reaches the router
    through ``P`` only (Switch, Sec. 2.2).

    Args:
        probs_TE: [T, E] floating, full softmax router probabilities.
        expert_ids_TK: [T, K] integer, the expert chosen in each slot; every id in 0..E-1.
        num_experts: E, at least 1; must equal ``probs_TE.shape[1]``.
        dispatch_mask_TK: optional [T, K] bool, True where the assignment was kept.

    Returns:
        Scalar tensor in ``probs_TE.dtype``.
    """
    positive_int("num_experts", num_experts)
    token_matrix("probs_TE", probs_TE)
    T, E = probs_TE.shape
    if E != num_experts:
        raise ValueError(
            f"probs_TE must have num_experts={num_experts} columns; "
            f"got shape {tuple(probs_TE.shape)}"
        )
    if not isinstance(expert_ids_TK, Tensor):
        raise TypeError(f"expert_ids_TK must be a torch.Tensor, got {type(expert_ids_TK).__name__}")
    ids_dtype = expert_ids_TK.dtype
    if ids_dtype.is_floating_point or ids_dtype.is_complex or ids_dtype == torch.bool:
        raise TypeError(f"expert_ids_TK must have an integer dtype, got {expert_ids_TK.dtype}")
    if expert_ids_TK.ndim != 2 or expert_ids_TK.shape[1] < 1:
        raise ValueError(
            f"expert_ids_TK must be 2-D [T, K] with K >= 1, got shape {tuple(expert_ids_TK.shape)}"
        )
    if expert_ids_TK.shape[0] != T:
        raise ValueError(
            f"expert_ids_TK must have T={T} rows to match probs_TE, got shape "
            f"{tuple(expert_ids_TK.shape)}"
        )
    lo, hi = int(expert_ids_TK.min()), int(expert_ids_TK.max())
    if lo < 0 or hi >= num_experts:
        bad = lo if lo < 0 else hi
        raise ValueError(f"expert_ids_TK must lie in 0..{num_experts - 1}; found id {bad}")
    if dispatch_mask_TK is not None:
        if not isinstance(dispatch_mask_TK, Tensor) or dispatch_mask_TK.dtype != torch.bool:
            got = getattr(dispatch_mask_TK, "dtype", type(dispatch_mask_TK).__name__)
            raise TypeError(f"dispatch_mask_TK must be a bool tensor, got {got}")
        if dispatch_mask_TK.shape != expert_ids_TK.shape:
            raise ValueError(
                f"dispatch_mask_TK must have the shape of expert_ids_TK "
                f"{tuple(expert_ids_TK.shape)}, got {tuple(dispatch_mask_TK.shape)}"
            )

    K = expert_ids_TK.shape[1]
    onehot_TKE = torch.nn.functional.one_hot(expert_ids_TK.long(), num_experts)
    if dispatch_mask_TK is not None:
        onehot_TKE = onehot_TKE * dispatch_mask_TK.unsqueeze(-1)
    f_E = onehot_TKE.sum(dim=(0, 1)).to(probs_TE.dtype) / (T * K)
    P_E = probs_TE.mean(dim=0)
    return num_experts * (f_E * P_E).sum()


def router_z_loss(logits_TE: Tensor) -> Tensor:
    """ST-MoE router z-loss, ``mean_t (logsumexp_i logits_TE[t, i])^2``.

    Zoph et al. 2022, "ST-MoE", Eq. 5. It penalises large router logits, which round badly in low
    precision; unlike the balancing losses it is not shift-invariant, and that is the point.

    Normalisation: all-zero (uniform) logits give ``log(E)^2``; the minimum, 0, is reached when
    every token's logsumexp is 0.

    Computed in at least float32 (the paper keeps router arithmetic in float32), so a bfloat16 or
    float16 input returns a float32 scalar; float64 stays float64.

    Args:
        logits_TE: [T, E] floating router logits (before softmax).

    Returns:
        Scalar tensor.
    """
    token_matrix("logits_TE", logits_TE)
    logits_TE = logits_TE.to(torch.promote_types(logits_TE.dtype, torch.float32))
    return torch.logsumexp(logits_TE, dim=-1).square().mean()


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation, ``var(x) / (mean(x)^2 + eps)``.

    Used by Shazeer et al. 2017, "Outrageously Large Neural Networks", Eqs. 7 and 11.

    The variance is the population variance (divide by n), as in the paper's reference code
    (tensor2tensor ``expert_utils.cv_squared``). The widely copied PyTorch port uses
    ``Tensor.var()``, whose default is the unbiased sample variance (divide by n - 1); that gives
    n/(n-1) times this value. A vector of length 1 has zero population variance, so it gives 0
    with no special case.

    Normalisation: a constant vector (perfect balance) gives 0; ``eps`` keeps an all-zero vector
    at 0 and shifts other values by a relative ~eps/mean^2.

    Args:
        x: [n] floating, n >= 1 (one entry per expert, in the uses here).
        eps: non-negative constant added to the squared mean.

    Returns:
        Scalar tensor in ``x.dtype``.
    """
    floating_tensor("x", x)
    if x.ndim != 1 or x.shape[0] < 1:
        raise ValueError(
            f"x must be a 1-D tensor with at least one entry, got shape {tuple(x.shape)}"
        )
    positive_float("eps", eps, allow_zero=True)
    mean = x.mean()
    var = (x - mean).square().mean()
    return var / (mean.square() + eps)


def importance_loss(gates_TE: Tensor) -> Tensor:
    """Shazeer et al. 2017 importance loss, ``CV(Importance(X))^2`` (Eqs. 6-7).

    ``Importance(X)_i = sum_t gates_TE[t, i]``, where the gates are the sparse top-k gate values
    (zeros for experts a token did not select). The paper multiplies by a hand-tuned
    ``w_importance``; that weight is left to the caller.

    Normalisation: equal importance for every expert gives 0; a single expert gives 0.

    Args:
        gates_TE: [T, E] floating gate values after top-k.

    Returns:
        Scalar tensor in ``gates_TE.dtype``.
    """
    token_matrix("gates_TE", gates_TE)
    return cv_squared(gates_TE.sum(dim=0))


def noisy_topk_load(
    clean_logits_TE: Tensor,
    noisy_logits_TE: Tensor,
    noise_std_TE: Tensor,
    k: int,
) -> Tensor:
    """Smooth estimate of the number of tokens each expert receives under noisy top-k gating.

    Shazeer et al. 2017, Appendix A, Eqs. 8-10::

        P(x, i) = Phi((clean_i - kth_excluding(noisy, k, i)) / noise_std_i)
        Load_i  = sum_x P(x, i)

    where ``kth_excluding(v, k, i)`` is the k-th greatest component of ``v`` excluding component
    ``i``. ``P(x, i)`` is the probability that expert ``i`` is in the top k when its own noise is
    drawn afresh and the other experts' noisy logits are held fixed. With ``v_(j)`` the j-th
    largest noisy logit of a token, ``kth_excluding`` equals ``v_(k+1)`` when ``noisy_i > v_(k+1)``
    (``i`` is in the top k) and ``v_(k)`` otherwise, ties included, so ``k + 1 <= E`` values are
    needed: k must lie in 1..E-1. (With k = E every expert is always chosen and there is no
    threshold; report the true load instead.)

    Normalisation: averaged over the noise, ``P(x, i)`` is the probability that ``i`` is selected,
    so ``sum_i Load_i`` is ``T * k`` in expectation and balanced routing gives ``T * k / E`` each.

    Differentiable with respect to ``clean_logits_TE`` and ``noise_std_TE``. If ``noisy_logits_TE``
    carries a graph (``clean + noise * std``), the gradient also flows through the threshold, as in
    the reference code; pass it detached to keep only the explicit terms.

    Args:
        clean_logits_TE: [T, E] floating logits without noise.
        noisy_logits_TE: [T, E] floating logits with the noise that chose the experts.
        noise_std_TE: [T, E] floating, strictly positive noise standard deviations.
        k: experts per token, 1 <= k <= E - 1.

    Returns:
        [E] tensor ``Load``.
    """
    token_matrix("clean_logits_TE", clean_logits_TE)
    shape = clean_logits_TE.shape
    for name, x in (("noisy_logits_TE", noisy_logits_TE), ("noise_std_TE", noise_std_TE)):
        floating_tensor(name, x)
        if x.shape != shape:
            raise ValueError(
                f"{name} must have the shape of clean_logits_TE {tuple(shape)}; "
                f"got {tuple(x.shape)}"
            )
    E = shape[1]
    integer("k", k)
    if not 1 <= k <= E - 1:
        raise ValueError(
            f"k must lie in 1..E-1 = 1..{E - 1} (a threshold needs k + 1 <= E experts), got k={k}"
        )
    min_std = float(noise_std_TE.detach().min())
    if not min_std > 0:
        raise ValueError(f"noise_std_TE must be strictly positive; found {min_std}")

    top_TM = noisy_logits_TE.topk(k + 1, dim=-1).values  # M = k + 1, descending
    threshold_if_in_T1 = top_TM[:, k : k + 1]  # (k+1)-th largest
    threshold_if_out_T1 = top_TM[:, k - 1 : k]  # k-th largest
    is_in_TE = noisy_logits_TE > threshold_if_in_T1
    threshold_TE = torch.where(is_in_TE, threshold_if_in_T1, threshold_if_out_T1)
    prob_TE = torch.special.ndtr((clean_logits_TE - threshold_TE) / noise_std_TE)
    return prob_TE.sum(dim=0)


def load_loss(
    clean_logits_TE: Tensor,
    noisy_logits_TE: Tensor,
    noise_std_TE: Tensor,
    k: int,
) -> Tensor:
    """Shazeer et al. 2017 load loss, ``CV(Load(X))^2`` (Eq. 11, with Load from Eqs. 8-10).

    See :func:`noisy_topk_load` for the arguments and :func:`cv_squared` for the variance used. The
    paper's hand-tuned ``w_load`` is left to the caller.

    Normalisation: equal load on every expert gives 0.

    Returns:
        Scalar tensor.
    """
    return cv_squared(noisy_topk_load(clean_logits_TE, noisy_logits_TE, noise_std_TE, k))
