"""Exact linear pieces of a piecewise-affine model along a segment.

Along x(t) = a + t (b - a), t in [0, 1], a ReLU network or a hard-routed MoE is affine on finitely many
intervals. Their number measures what depth and routing buy: a depth-L tent tower has 2^L pieces on
[0, 1] (Telgarsky), and an L-layer top-1 MoE with linear routers and affine experts has at most E^L
along any line, against L*E for the naive count (docs/paper.md Sec. 3, "E^L tasks rather than L*E").

Method. The representation is carried, in float64, as a partition of [0, 1] into intervals on each of
which it is affine in t, h(t) = p + t q. An affine layer maps (p, q) directly. A ReLU (or leaky ReLU)
splits an interval where a pre-activation p_j + t q_j crosses 0 and then masks by the sign at each
new interval's midpoint. A router's logits are affine on each interval (a linear scorer; an MLP
scorer first splits by its own ReLU pieces); the selected set can only change where two selection
scores cross, so every interval is cut at the pairwise crossings, the set is computed at each
sub-interval's midpoint, and neighbours from one interval with the same set are joined again.
Without a balancing bias the scores are ordered like the logits, and crossings are those of lines;
with moelab's aux-free bias b the router selects by softmax(l) + b (sigmoid(l) + b for
weighting="sigmoid"), and the crossings are roots of exponential sums, isolated exactly
(:mod:`moelab.analysis._expsum`). The set itself is taken with ``torch.topk`` on the float64 scores,
exactly as the router calls it, so exact ties (e.g. two identical router rows) are broken as the
model breaks them. torch.topk's tie order is *not* "lowest index first": which of two tied experts
it returns depends on the other scores (on CPU, scores (0.4, 0.1, 0.1, 0.4) give expert 3 and
(0.4, 0.2, 0.1, 0.4) expert 0), so the pick can flip where two *other* scores cross; those points are
among the pairwise crossings, so the flip is found. Experts then run on each interval as above, per
interval with its own expert's weights. Finally neighbouring intervals whose affine output maps agree
are merged, so the count is that of maximal linear pieces.

Shape legend: n intervals, W carried columns, E experts, S selection slots (the top_k of every MoE
layer so far).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from moelab.analysis._expsum import exp_sum_roots
from moelab.analysis._intervals import F64 as _F64
from moelab.analysis._intervals import Track
from moelab.layers.experts import Experts, LowDimExperts
from moelab.layers.mlp import MLP
from moelab.layers.moe import MoELayer
from moelab.layers.routers import Router
from moelab.layers.stack import DeepMoE

#: Slope of each piecewise-affine activation on the negative half-line (1: identity, nothing to split).
_SLOPES = {"relu": 0.0, "identity": 1.0}

Path = tuple[int, ...]


@dataclass(frozen=True)
class Piece:
    """One piece [start, end] of the segment.

    ``offset`` and ``slope`` (float64, (d_out,)) give the output there, y(t) = offset + t * slope;
    both are None when the model is not piecewise affine (``PieceCount.affine`` False). ``paths``
    lists, in order of t, the distinct expert paths used on the piece: a path holds, MoE layer by MoE
    layer, the selected experts (top_k ascending ids per layer; one id per top-1 layer). A merged
    piece may use several paths when different experts compute the same affine map there. Dense
    models have ``paths == ((),)``.
    """

    start: float
    end: float
    offset: Tensor | None
    slope: Tensor | None
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class PieceCount:
    """Result of :func:`count_pieces`.

    Attributes:
        num_pieces: maximal linear pieces of the output along the segment; when ``affine`` is False,
            maximal intervals on which every MoE layer's selected set is constant instead.
        breakpoints: float64 (num_pieces - 1,), the sorted interior boundaries t of those pieces.
        pieces: the pieces themselves, in order of t.
        num_routing_intervals: maximal intervals on which every MoE layer's selected set is constant
            (1 for dense models); above ``num_pieces`` only where different experts compute the
            same map along the segment (their pieces merge).
        affine: whether the model is piecewise affine along the segment (False only with
            ``routing_intervals_only=True`` and input-dependent combine weights).
    """

    num_pieces: int
    breakpoints: Tensor
    pieces: tuple[Piece, ...]
    num_routing_intervals: int
    affine: bool

    @property
    def distinct_paths(self) -> tuple[Path, ...]:
        """The expert paths used anywhere on the segment, in order of first use."""
        seen: dict[Path, None] = {}
        for piece in self.pieces:
            for path in piece.paths:
                seen.setdefault(path, None)
        return tuple(seen)

    @property
    def num_paths(self) -> int:
        return len(self.distinct_paths)


def _f64(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to(_F64).cpu()


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _slope(activation: str, where: str) -> float:
    if activation not in _SLOPES:
        raise ValueError(
            f"{where} uses activation={activation!r}, which is not piecewise affine; count_pieces "
            f"handles {sorted(_SLOPES)}"
        )
    return _SLOPES[activation]


def _ffn(tr: Track, x: slice, layers: Sequence[tuple[Tensor, Tensor | None]], activation: str,
         where: str, ids_col: int | None = None) -> slice:
    """A feed-forward stack: affine maps (W (I, O) or (E, I, O), b) with ``activation`` between."""
    slope = _slope(activation, where) if len(layers) > 1 else 1.0
    for k, (w, b) in enumerate(layers):
        x = tr.affine(x, w, b, where, ids_col)
        if k < len(layers) - 1 and slope != 1.0:
            tr.relu(x, slope, where)
    return x


def _linears(linears: Sequence[nn.Linear]) -> list[tuple[Tensor, Tensor | None]]:
    return [(_f64(lin.weight).t(), _f64(lin.bias)) for lin in linears]


def _experts(experts: nn.Module, tr: Track, x: slice, ids_col: int, where: str) -> slice:
    if isinstance(experts, LowDimExperts):
        z = _experts(experts.encoder, tr, x, ids_col, _join(where, "encoder"))
        return _experts(experts.f_low, tr, z, ids_col, _join(where, "f_low"))
    if type(experts) is not Experts:  # a subclass may compute something else
        raise TypeError(f"{where} is a {type(experts).__name__}; count_pieces traces Experts banks")
    if experts.gated:
        raise ValueError(f"{where} has gated experts (act(W1 x) * (W3 x)), which are not piecewise affine")
    biases = experts.biases
    layers = [(_f64(w), None if biases is None else _f64(biases[k]))
              for k, w in enumerate(experts.weights)]
    return _ffn(tr, x, layers, experts.activation, where, ids_col)


def _constant_weights(router: Router) -> bool:
    """Whether every selected expert gets combine weight 1 (then the layer is piecewise affine)."""
    return router.weighting == "unweighted" or (
        router.weighting in ("paper", "sigmoid") and router.top_k == 1
    )


def _check_router(router: Router, where: str) -> None:
    if router.routing == "expert_choice":
        raise ValueError(f"{where} uses expert-choice routing, which depends on the whole batch; "
                         "count_pieces needs token choice")
    if router.capacity_factor is not None:
        raise ValueError(f"{where} has capacity_factor={router.capacity_factor}: dropped tokens depend "
                         "on the whole batch; count_pieces needs capacity_factor=None")
    noisy = router.noise == "noisy_topk" or (router.noise == "jitter" and router.jitter_eps > 0)
    if router.training and noisy:
        raise ValueError(f"{where} adds routing noise={router.noise!r} in training mode; call model.eval()")
    config = router.config
    if (config.top_groups or config.groups) < config.groups:
        raise ValueError(f"{where} has group-limited top-k (groups={config.groups}, top_groups="
                         f"{config.top_groups}), which count_pieces does not trace")
    if config.scaling != 1.0:
        raise ValueError(f"{where} has scaling={config.scaling}, which count_pieces does not trace")


def _line_crossings(u_nE: Tensor, v_nE: Tensor) -> Tensor:
    """t where logit lines i < j cross on each interval: (n, E (E - 1) / 2), NaN where parallel."""
    i, j = torch.triu_indices(u_nE.shape[1], u_nE.shape[1], offset=1)
    du, dv = u_nE[:, j] - u_nE[:, i], v_nE[:, i] - v_nE[:, j]
    return torch.where(dv != 0, du / dv, torch.full_like(du, float("nan")))


def _biased_crossings(tr: Track, u_nE: Tensor, v_nE: Tensor, bias_E: Tensor, sigmoid: bool) -> Tensor:
    """t where two biased selection scores cross on each interval: (n, M), NaN-padded.

    softmax: Z (s_i - s_j) = e^{l_i} - e^{l_j} + (b_i - b_j) sum_k e^{l_k}.
    sigmoid: (1 + e^{-l_i})(1 + e^{-l_j})(s_i - s_j) = e^{-l_j} - e^{-l_i}
             + d (1 + e^{-l_i} + e^{-l_j} + e^{-l_i - l_j}), d = b_i - b_j.
    """
    u, v, bias = u_nE.numpy(), v_nE.numpy(), bias_E.numpy()
    n, E = u.shape
    found: list[list[float]] = []
    for r in range(n):
        lo, hi = float(tr.t[r]), float(tr.t[r + 1])
        roots: list[float] = []
        for i in range(E):
            for j in range(i + 1, E):
                d = bias[i] - bias[j]
                if sigmoid:
                    c = np.array([d, d - 1, d + 1, d])
                    a = np.array([0.0, -u[r, i], -u[r, j], -u[r, i] - u[r, j]])
                    lam = np.array([0.0, -v[r, i], -v[r, j], -v[r, i] - v[r, j]])
                else:
                    c = np.full(E, d)
                    c[i] += 1.0
                    c[j] -= 1.0
                    a, lam = u[r], v[r]
                roots.extend(exp_sum_roots(c, a, lam, lo, hi))
        found.append(roots)
    width = max(1, max(len(rs) for rs in found))
    cuts = torch.full((n, width), float("nan"), dtype=_F64)
    for r, rs in enumerate(found):
        cuts[r, : len(rs)] = torch.tensor(rs, dtype=_F64)
    return cuts


def _route(router: Router, tr: Track, x: slice, where: str) -> None:
    """Split where the selected set changes and append it (top_k ascending ids) to ``tr.sel``."""
    tr.check_affine(_join(where, "router"))
    scorer = router.scorer
    if isinstance(scorer, nn.Linear):
        logits = tr.affine(x, _f64(scorer.weight).t(), _f64(scorer.bias), _join(where, "router.scorer"))
    else:
        logits = _ffn(tr, x, _linears(scorer.linears), scorer.activation, _join(where, "router.scorer"))
    bias = _f64(router.expert_bias)
    uniform = bias is None or bool((bias == bias[0]).all())  # a common shift changes no order
    u, v = tr.p[:, logits], tr.q[:, logits]
    if uniform:
        cuts = _line_crossings(u, v)
    else:
        cuts = _biased_crossings(tr, u, v, bias, router.weighting in ("sigmoid", "sigmoid_raw"))
    parent = tr.split(cuts)
    # The router's own selection: topk over probs (+ bias), or sigmoid scores (+ bias).
    logits_nE = tr.at_mid(logits)
    sigmoid = router.weighting in ("sigmoid", "sigmoid_raw")
    scores = logits_nE.sigmoid() if sigmoid else logits_nE.softmax(-1)
    if bias is not None:
        scores = scores + bias
    ids_nK = scores.topk(router.top_k, dim=-1, sorted=True).indices.sort(-1).values
    tr.sel = torch.cat([tr.sel, ids_nK], 1)
    tr.merge((parent[1:] == parent[:-1]) & (ids_nK[1:] == ids_nK[:-1]).all(-1))


def _moe(layer: MoELayer, tr: Track, x: slice, where: str, routing_only: bool) -> slice:
    router = layer.router
    _check_router(router, _join(where, "router"))
    if layer.config.shared_gated or layer.config.shared_gate:
        raise ValueError(f"{_join(where, 'shared')} is a gated shared expert (shared_gated or "
                         "shared_gate), which is not piecewise affine")
    weights_vary = not _constant_weights(router)
    if weights_vary and not routing_only:
        raise ValueError(
            f"{_join(where, 'router')} has weighting={router.weighting!r} with top_k={router.top_k}: "
            "the combine weights vary with the input, so the layer is not piecewise affine (only "
            "weighting='paper' or 'sigmoid' with top_k=1, or 'unweighted', are); pass "
            "routing_intervals_only=True to count intervals of constant routing instead"
        )
    _route(router, tr, x, where)
    n, first = tr.p.shape[0], tr.sel.shape[1] - router.top_k
    if weights_vary:
        tr.opaque = tr.opaque or where or "the model"
        return tr.append(torch.zeros(n, layer.d_out, dtype=_F64), torch.zeros(n, layer.d_out, dtype=_F64))
    outs = [_experts(layer.experts, tr, x, first + k, _join(where, "experts"))
            for k in range(router.top_k)]
    if layer.shared is not None:
        outs.append(_ffn(tr, x, _linears(layer.shared.linears), layer.shared.activation,
                         _join(where, "shared")))
    return tr.append(sum(tr.p[:, o] for o in outs), sum(tr.q[:, o] for o in outs))


def _trace(module: nn.Module, tr: Track, x: slice, where: str, routing_only: bool) -> slice:
    """Push the columns ``x`` through ``module``; returns the output columns."""
    if isinstance(module, DeepMoE):
        for i, layer in enumerate(module.layers):
            h = _trace(layer, tr, x, _join(where, f"layers.{i}"), routing_only)
            if module.residual and h.stop - h.start == x.stop - x.start:
                h = tr.append(tr.p[:, x] + tr.p[:, h], tr.q[:, x] + tr.q[:, h])
            x = tr.keep(h)
        return x
    if isinstance(module, MoELayer):
        return _moe(module, tr, x, where, routing_only)
    if isinstance(module, MLP):  # DenseMLP, dense layers of DeepMoE
        return _ffn(tr, x, _linears(module.linears), module.activation, where or "model")
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            x = tr.keep(_trace(child, tr, x, _join(where, name), routing_only))
        return x
    if isinstance(module, nn.Linear):
        return tr.affine(x, _f64(module.weight).t(), _f64(module.bias), where or "model")
    if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
        out = tr.append(tr.p[:, x], tr.q[:, x])
        slope = 0.0 if isinstance(module, nn.ReLU) else float(module.negative_slope)
        tr.relu(out, slope, where or "model")
        return out
    if isinstance(module, nn.Identity):
        return x
    raise TypeError(
        f"count_pieces cannot trace {where or 'the model'} ({type(module).__name__}): it handles "
        "DeepMoE, MoELayer, MLP/DenseMLP and nn.Sequential of Linear, ReLU, LeakyReLU, Identity "
        "(other modules are not known to be piecewise affine)"
    )


def _endpoint(name: str, value: object) -> Tensor:
    """``value`` as a float64 (d_in,) vector. Python numbers go to float64 directly (through numpy),
    never through torch's default float32, which would move the segment before it is traced."""
    if isinstance(value, Tensor):
        if not value.is_floating_point() and value.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be a real vector, got dtype {value.dtype}")
        v = value.detach().to(_F64).cpu()
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a real vector, got {value!r}") from None
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a real vector, got dtype {array.dtype}")
        v = torch.as_tensor(array, dtype=_F64)
    if v.dim() == 2 and v.shape[0] == 1:
        v = v[0]
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a vector of shape (d_in,), got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite, got {v.tolist()}")
    return v


def count_pieces(
    model: nn.Module,
    a: Tensor | Sequence[float],
    b: Tensor | Sequence[float],
    *,
    rtol: float = 1e-9,
    t_tol: float = 1e-10,
    routing_intervals_only: bool = False,
) -> PieceCount:
    """Count the linear pieces of ``model`` along x(t) = a + t (b - a), t in [0, 1], exactly.

    Breakpoints are computed layer by layer from the weights (see the module docstring), not by
    sampling. Supported: :class:`~moelab.layers.stack.DeepMoE` (residual streams, dense layers,
    per-layer configs), :class:`~moelab.layers.moe.MoELayer` (linear or MLP router, balancing bias,
    shared experts, low-dimensional experts), :class:`~moelab.layers.mlp.MLP` /
    :class:`~moelab.layers.mlp.DenseMLP`, and ``nn.Sequential`` of those and of ``nn.Linear``,
    ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.Identity``; activations "relu" or "identity".

    An MoE layer is piecewise affine when each selected expert's combine weight is constant: weighting
    "paper" or "sigmoid" with top_k = 1 (weight 1; the paper's hard routing, docs/paper.md Sec. 1) or
    "unweighted". Other weightings raise a ValueError unless ``routing_intervals_only=True``; then
    tracing stops being exact after the first such layer (its output is weighted by softmax
    probabilities), and the result counts the maximal intervals on which every MoE layer's selected
    set is constant (``affine=False``). That count is exact provided no ReLU or router reads the
    output of such a layer; otherwise a ValueError says which one does. Expert-choice routing,
    capacity limits and routing noise in training mode depend on more than x and raise a ValueError.

    Args:
        model: the model; weights of any dtype (converted to float64).
        a, b: endpoints, shape (d_in,) (or (1, d_in)): tensors, numpy arrays or sequences of
            numbers (Python floats are read in float64, as the tracing computes).
        rtol: neighbouring intervals are one piece when their affine maps agree to within ``rtol``
            times the output scale max|offset| + max|slope| (value jump at the boundary and slope
            difference both).
        t_tol: breakpoints closer than ``t_tol`` to another breakpoint are one; pieces shorter than
            this are not resolved.
        routing_intervals_only: see above.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, tol in (("rtol", rtol), ("t_tol", t_tol)):
        if not (isinstance(tol, (int, float)) and 0 <= tol < 0.5):
            raise ValueError(f"{name} must be a number in [0, 0.5), got {tol!r}")
    a64, b64 = _endpoint("a", a), _endpoint("b", b)
    if a64.shape != b64.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a64.shape)} and {tuple(b64.shape)}")
    tr = Track(a64, b64, float(t_tol))
    with torch.no_grad():
        tr.keep(_trace(model, tr, slice(0, a64.numel()), "", routing_intervals_only))

    same_sel = (tr.sel[1:] == tr.sel[:-1]).all(-1)
    num_routing = 1 + int((~same_sel).sum())
    affine = tr.opaque is None
    if affine:
        t_b = tr.t[1:-1, None]
        scale = float(tr.p.abs().max() + tr.q.abs().max()) if tr.p.numel() else 0.0
        jump = ((tr.p[1:] + t_b * tr.q[1:]) - (tr.p[:-1] + t_b * tr.q[:-1])).abs().amax(-1)
        kink = (tr.q[1:] - tr.q[:-1]).abs().amax(-1)
        same = (jump <= rtol * scale) & (kink <= rtol * scale)
    else:
        same = same_sel
    starts = torch.cat([torch.ones(1, dtype=torch.bool), ~same, torch.ones(1, dtype=torch.bool)])
    bounds = starts.nonzero().squeeze(1).tolist()  # interval index where each piece starts, then n
    pieces = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        paths: list[Path] = []
        for row in tr.sel[lo:hi].tolist():
            if not paths or paths[-1] != tuple(row):
                paths.append(tuple(row))
        pieces.append(Piece(
            start=float(tr.t[lo]), end=float(tr.t[hi]),
            offset=tr.p[lo].clone() if affine else None, slope=tr.q[lo].clone() if affine else None,
            paths=tuple(paths),
        ))
    breakpoints = torch.tensor([p.start for p in pieces[1:]], dtype=_F64)
    return PieceCount(len(pieces), breakpoints, tuple(pieces), num_routing, affine)
