"""Analysis of moelab models: linear pieces, expert paths and routing statistics, rate fits,
intrinsic dimension, parameter counts."""

from moelab.analysis.intrinsic import intrinsic_dimension
from moelab.analysis.params import ParameterCount, count_parameters
from moelab.analysis.pieces import Piece, PieceCount, count_pieces
from moelab.analysis.rates import RateFit, fit_rate
from moelab.analysis.routing import (
    ExpertMatching,
    ExpertPaths,
    expert_load,
    expert_paths,
    load_entropy,
    match_experts,
    routing_accuracy,
    routing_confusion,
    token_entropy,
)

__all__ = [
    "ExpertMatching",
    "ExpertPaths",
    "ParameterCount",
    "Piece",
    "PieceCount",
    "RateFit",
    "count_parameters",
    "count_pieces",
    "expert_load",
    "expert_paths",
    "fit_rate",
    "intrinsic_dimension",
    "load_entropy",
    "match_experts",
    "routing_accuracy",
    "routing_confusion",
    "token_entropy",
]
