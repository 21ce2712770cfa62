"""Analysis of moelab models: parameter counts, and (see submodules) pieces, paths and rates."""

from moelab.analysis.params import ParameterCount, count_parameters

__all__ = ["ParameterCount", "count_parameters"]
