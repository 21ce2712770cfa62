"""Measuring a trained model's routing against its task's ground truth, and, on a task with a fixed
data set, its held-out accuracy and the intrinsic dimension of what each expert receives."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from moelab.analysis import expert_paths
from moelab.analysis.intrinsic import intrinsic_dimension
from moelab.analysis.routing import path_codes
from moelab.experiments.build import BuiltTask
from moelab.layers import record_routing


@torch.no_grad()
def routing_summary(model: nn.Module, built: BuiltTask, *, seed: int, n: int = 8192
                    ) -> dict[str, Any]:
    """Routing statistics of a trained MoE model on fresh test points (on the held-out split of a
    task with a fixed data set).

    ``num_paths``: distinct expert paths (top-1 expert per MoE layer); ``pieces_separated``: how many
    ground-truth regions (charts or pieces) get a majority path no other region has;
    ``distinct_majority_paths``: how many different paths the regions' majority paths are;
    ``routing_purity``: the fraction of points whose path is their region's majority path;
    ``path_purity``: the fraction of points whose region is their path's majority region (1 when
    no path mixes regions);
    ``load``: per layer, the fraction of tokens per expert; ``picture``: the path of each picture
    point (circle angles or square cells) for the report.
    """
    model.eval()
    if built.test_set is not None:
        x = built.test_set[0]
    else:
        x, _ = built.task(n, torch.Generator().manual_seed(seed + 2_000_003))
    n = x.shape[0]
    with record_routing(model) as record:  # the routing of expert_paths' forward pass
        paths = expert_paths(model, x).paths
    load = [(r.tokens_per_expert.float() / r.tokens_per_expert.sum()).tolist()
            for r in record.routings]
    truth = built.task.region(x)
    # Distinct paths as distinct mixed-radix codes: the same order as unique rows, and a 1-D
    # unique (far cheaper than torch.unique(paths, dim=0)).
    path_ids, inverse = torch.unique(_codes(paths, model), return_inverse=True)
    joint = torch.zeros(built.task.n_regions, len(path_ids), dtype=torch.long)
    joint.index_put_((truth, inverse), torch.ones_like(truth), accumulate=True)
    present = joint.sum(1) > 0
    majority = joint.argmax(1)[present]
    unique_major, major_counts = torch.unique(majority, return_counts=True)
    separated = int((major_counts == 1).sum())
    purity = float(joint.max(1).values.sum() / n)
    path_purity = float(joint.max(0).values.sum() / n)
    summary: dict[str, Any] = {
        "num_paths": len(path_ids),
        "pieces_separated": separated,
        "distinct_majority_paths": len(unique_major),
        "regions": int(present.sum()),
        "routing_purity": purity,
        "path_purity": path_purity,
        "load": load,
    }
    if built.picture_kind != "none":
        summary["picture"] = {
            "kind": built.picture_kind,
            "coords": built.picture_coords.tolist(),
            "paths": _codes(expert_paths(model, built.picture_points).paths, model).tolist(),
        }
    return summary


def _codes(paths: Tensor, model: nn.Module) -> Tensor:
    """Each path (one expert per layer) as one integer, mixed radix over the layers' E."""
    return path_codes(paths, [layer.num_experts for layer in model.moe_layers])


#: Neighbours of the Levina-Bickel estimator for the inputs of each expert: the low end of the
#: range 10-20 they suggest, because an expert of a small data set receives few points.
DIMENSION_NEIGHBOURS = 10


@torch.no_grad()
def held_out_metrics(model: nn.Module, task: BuiltTask) -> dict[str, Any]:
    """Metrics of a task with a fixed data set and one-hot targets (``task.test_set`` and
    ``task.train_set`` given; otherwise {}).

    ``test_accuracy``: the fraction of held-out points whose largest output is their class;
    ``input_intrinsic_dim``: the Levina-Bickel estimate (k = :data:`DIMENSION_NEIGHBOURS`) of the
    training inputs' intrinsic dimension. For an MoE also, on the training inputs routed to each
    first-layer expert: ``expert_intrinsic_dims`` (None where an expert gets fewer than 2k
    points), ``expert_points``, and their point-weighted mean ``expert_intrinsic_dim``.
    """
    if task.test_set is None or task.train_set is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        x_test, y_test = task.test_set
        pred = model.run(x_test).y if hasattr(model, "run") else model(x_test)
        accuracy = float((pred.argmax(1) == y_test.argmax(1)).double().mean())
        x_train = task.train_set[0]
        k = DIMENSION_NEIGHBOURS
        out: dict[str, Any] = {"test_accuracy": accuracy,
                               "input_intrinsic_dim": intrinsic_dimension(x_train, "mle", k=k)}
        paths = expert_paths(model, x_train).paths
    finally:
        model.train(was_training)
    if paths.shape[1] == 0:
        return out
    first = paths[:, 0]
    counts = torch.bincount(first, minlength=model.moe_layers[0].num_experts).tolist()
    dims = [intrinsic_dimension(x_train[first == e], "mle", k=k) if c >= 2 * k else None
            for e, c in enumerate(counts)]
    weighted = [(d, c) for d, c in zip(dims, counts, strict=True) if d is not None]
    out.update(expert_intrinsic_dims=dims, expert_points=counts)
    if weighted:
        out["expert_intrinsic_dim"] = sum(d * c for d, c in weighted) / sum(c for _, c in weighted)
    return out
