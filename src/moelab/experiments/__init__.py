"""Experiments: the demo and (see submodules) the paper's named experiments."""
